//go:build unix

package vaultproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFileSHA256(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("FileSHA256 = %s, want %s", got, want)
	}
	if _, err := FileSHA256(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("FileSHA256 of a missing file: %v, want ErrNotExist", err)
	}
}

func TestCheckVersion(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"v0.1.0", "v1.2.3-rc.1", "v0.1.0-e2e-race", "v10.20.30-a.b-c"} {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%q): %v", v, err)
		}
	}
	for _, v := range []string{
		"", "0.1.0", "v1.2", "v1.2.3-", "v1.2.3+build", "v1.2.3\n", " v1.2.3",
		// Split by go build at the space, this would add a linker flag.
		"v0.1.0 -X main.injected=1",
		"v0.1.0-$(touch /tmp/x)",
	} {
		if err := CheckVersion(v); err == nil {
			t.Errorf("CheckVersion(%q) accepted it", v)
		}
	}
}

func TestBuildPluginRefusesABadVersion(t *testing.T) {
	t.Parallel()
	// Refused before go build runs: the package does not even exist.
	_, err := BuildPlugin(context.Background(), Build{Package: "./nowhere", Name: "p", Version: "v0.1.0 -X main.injected=1", PluginDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "semantic version") {
		t.Fatalf("BuildPlugin with a bad version: %v, want a version error", err)
	}
}

func TestChildEnv(t *testing.T) {
	t.Setenv("VAULT_ADDR", "http://elsewhere:8200")
	t.Setenv("VAULT_NAMESPACE", "other")
	t.Setenv("HOME", "/home/someone")
	t.Setenv("VAULTED", "kept")
	env := ChildEnv("/tmp/h", "VAULT_ADDR=http://127.0.0.1:1")
	var homes []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "HOME=") {
			homes = append(homes, kv)
		}
		if strings.HasPrefix(kv, "VAULT_") && kv != "VAULT_ADDR=http://127.0.0.1:1" {
			t.Errorf("ChildEnv kept %s", kv)
		}
	}
	if !slices.Equal(homes, []string{"HOME=/tmp/h"}) {
		t.Errorf("HOME entries %v, want only HOME=/tmp/h", homes)
	}
	if !slices.Contains(env, "VAULTED=kept") || env[len(env)-1] != "VAULT_ADDR=http://127.0.0.1:1" {
		t.Errorf("ChildEnv lost an unrelated variable or the extra one: %v", env)
	}
}

// alive tells whether pid runs; a zombie that no one has reaped yet counts as gone.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true // no /proc here: the signal check is all there is
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

func waitFile(t *testing.T, path string) []byte {
	t.Helper()
	for range 100 {
		if data, err := os.ReadFile(path); err == nil && bytes.HasSuffix(data, []byte("\n")) { //nolint:gosec // the test's own file
			return data
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s was not written", path)
	return nil
}

// TestStopReachesTheGroup: a child that leaves a process of its own behind (as Vault
// may leave a plugin) is stopped with everything it started.
func TestStopReachesTheGroup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	p, err := Start("sh", "/bin/sh", dir, os.Environ(), filepath.Join(dir, "log"),
		"-c", `sleep 300 & echo $! >`+pidFile+`; wait`)
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := strconv.Atoi(strings.TrimSpace(string(waitFile(t, pidFile))))
	if err != nil {
		t.Fatal(err)
	}
	var logs []string
	p.Stop(5*time.Second, func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	if !p.Exited() {
		t.Fatal("the process has not exited after Stop")
	}
	for i := 0; alive(grandchild); i++ {
		if i == 100 {
			t.Fatalf("the process it started (pid %d) outlived Stop", grandchild)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "killed processes left in its group") {
		t.Errorf("Stop reported %q, want one note of the leftover it killed", logs)
	}
	// A second Stop is harmless. (What it reports depends on whether anyone has reaped
	// the grandchild yet: a zombie still counts as a member of the group.)
	p.Stop(time.Second, nil)
}

func TestStopKillsAfterGrace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	p, err := Start("stubborn", "/bin/sh", dir, os.Environ(), filepath.Join(dir, "log"),
		"-c", `trap '' TERM; echo >`+ready+`; while :; do sleep 1; done`)
	if err != nil {
		t.Fatal(err)
	}
	waitFile(t, ready)
	var logs []string
	p.Stop(200*time.Millisecond, func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	if !p.Exited() || len(logs) == 0 || !strings.Contains(logs[0], "did not exit") {
		t.Errorf("exited %t, notes %q; want it killed after the grace", p.Exited(), logs)
	}
}

func TestProcessExitStatusAndLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	p, err := Start("sh", "/bin/sh", dir, []string{"GREETING=hello"}, logPath, "-c", `echo "$GREETING"; echo oops >&2; exit 3`)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	var ee *exec.ExitError
	if !errors.As(p.Err(), &ee) || ee.ExitCode() != 3 {
		t.Errorf("Err = %v, want exit status 3", p.Err())
	}
	data, err := os.ReadFile(logPath) //nolint:gosec // the test's own file
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "hello\noops\n" {
		t.Errorf("log %q, want stdout and stderr with only the given environment", data)
	}
	if _, err := Start("missing", filepath.Join(dir, "nothing"), dir, nil, logPath); err == nil {
		t.Error("Start of a missing binary succeeded")
	}
}

func TestFreePortPair(t *testing.T) {
	t.Parallel()
	port, err := FreePortPair(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Outside the kernel's ephemeral range, where no outgoing connection takes a port,
	// wherever the range leaves room (it does on every usual setting).
	if raw, err := os.ReadFile(ephemeralRange); err == nil {
		var first, last int
		_, err := fmt.Sscan(string(raw), &first, &last)
		room := err == nil && (first-1-10000 >= 1000 || 65535-(last+1) >= 1000)
		if room && port+1 >= first && port <= last {
			t.Errorf("FreePortPair = %d, in or next to the ephemeral range %s", port, strings.TrimSpace(string(raw)))
		}
	}
	// Free a moment ago, so free now unless another process took one in between (the
	// parallel unit suites bind ports too): a pair taken twice more is a failure.
	var lc net.ListenConfig
	bindBoth := func(port int) error {
		for _, p := range []int{port, port + 1} {
			l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				return fmt.Errorf("port %d of the pair %d is not free: %w", p, port, err)
			}
			_ = l.Close()
		}
		return nil
	}
	err = bindBoth(port)
	for try := 0; err != nil && try < 2; try++ {
		t.Log(err)
		if port, err = FreePortPair(context.Background()); err == nil {
			err = bindBoth(port)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestChildren(t *testing.T) {
	t.Parallel()
	if _, err := Children(1, "x"); errors.Is(err, errors.ErrUnsupported) {
		t.Skip("no /proc here")
	}
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	p, err := Start("sh", "/bin/sh", dir, os.Environ(), filepath.Join(dir, "log"),
		"-c", `sleep 300 & sleep 300 & echo >`+ready+`; wait`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5*time.Second, nil) })
	waitFile(t, ready)
	var pids []int
	for range 100 {
		if pids, err = Children(p.Pid(), "sleep"); err != nil || len(pids) == 2 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || len(pids) != 2 {
		t.Fatalf("Children = %v, %v; want the two sleeps", pids, err)
	}
	if rss, err := PeakRSS(pids[0]); err != nil || rss <= 0 {
		t.Errorf("PeakRSS = %d, %v; want a size", rss, err)
	}
	if rss, err := RSS(pids[0]); err != nil || rss.Total <= 0 || rss.Anon <= 0 || rss.File <= 0 || rss.Anon+rss.File > rss.Total {
		t.Errorf("RSS = %+v, %v; want sizes, the parts within the whole", rss, err)
	}
	if other, _ := Children(p.Pid(), "sh"); len(other) != 0 {
		t.Errorf("Children matched other commands: %v", other)
	}
}

// TestCPUTime: this process's CPU time grows by what a busy loop spends.
func TestCPUTime(t *testing.T) {
	t.Parallel()
	before, err := CPUTime(os.Getpid())
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip("no /proc here")
	}
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		for i := range 1_000_000 {
			sum += i
		}
		now, err := CPUTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now < before {
			t.Fatalf("CPU time went back from %s to %s", before, now)
		}
		if now-before >= 50*time.Millisecond {
			return
		}
	}
	t.Fatalf("20s of a busy loop did not add 50ms of CPU time (sum %d)", sum)
}

// fakeVault writes an executable that stands in for vault: it prints line and exits 1.
func fakeVault(t *testing.T, line string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vault")
	script := "#!/bin/sh\necho '" + line + "'\nexit 1\n"
	if err := os.WriteFile(path, []byte(script), 0o700); err != nil { //nolint:gosec // an executable, by design
		t.Fatal(err)
	}
	return path
}

// TestRaftConfig: the configuration keeps Raft storage in an emptied directory, with
// the API and cluster addresses of the port pair.
func TestRaftConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	raftDir := filepath.Join(dir, "raft")
	if err := os.MkdirAll(filepath.Join(raftDir, "raft"), 0o700); err != nil {
		t.Fatal(err)
	}
	file, err := writeRaftConfig(dir, raftDir, 8200)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file) //nolint:gosec // the test's own file
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`storage "raft"`, `path    = "` + raftDir + `"`, `"http://127.0.0.1:8200"`, `"https://127.0.0.1:8201"`, "disable_mlock = true"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the configuration lacks %s:\n%s", want, data)
		}
	}
	if left, err := os.ReadDir(raftDir); err != nil || len(left) != 0 {
		t.Errorf("the Raft directory holds %v (%v), want it empty", left, err)
	}
}

func TestStartDevRetriesALostPortOnly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line     string
		attempts int
	}{
		{"Error initializing listener: listen tcp 127.0.0.1:1: bind: address already in use", devAttempts},
		{"Error parsing flags", 1},
	} {
		dir := t.TempDir()
		_, err := StartDev(context.Background(), DevConfig{Bin: fakeVault(t, tc.line), Dir: dir, PluginDir: dir})
		if err == nil || !strings.Contains(err.Error(), "exited early") {
			t.Errorf("%s: StartDev = %v, want an early exit", tc.line, err)
		}
		data, _ := os.ReadFile(filepath.Join(dir, "vault.log")) //nolint:gosec // the test's own file
		if got := strings.Count(string(data), tc.line); got != tc.attempts {
			t.Errorf("%s: %d attempts, want %d", tc.line, got, tc.attempts)
		}
	}
}
