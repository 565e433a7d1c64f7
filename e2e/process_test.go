//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// process is a child (Vault server or Agent) whose output goes to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // set before done is closed
}

// startProcess runs bin with args in dir, with env as its whole environment and its
// stdout and stderr appended to logPath. The caller must arrange for stop to be called.
func startProcess(name, bin, dir string, env []string, logPath string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) //nolint:gosec // a log file in the test's temporary directory
	if err != nil {
		return nil, err
	}
	// The child holds its own descriptor; ours is not needed once it has started.
	defer logFile.Close()
	// A context that never ends: the process outlives this call, and stop ends it with
	// SIGTERM first, where a cancelled context would kill it outright.
	cmd := exec.CommandContext(context.Background(), bin, args...) //nolint:gosec // bin is the Vault binary from VAULT_BIN, args are the test's own
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to shut down (Vault stops its plugins on SIGTERM), kills it if
// it has not exited within grace, and then kills whatever is left in its process group,
// such as a plugin that outlived it.
func (p *process) stop(t testing.TB, grace time.Duration) {
	t.Helper()
	pid := p.cmd.Process.Pid
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			t.Logf("%s did not exit %s after SIGTERM; killing it", p.name, grace)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.done
		}
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err == nil {
		t.Logf("%s: killed processes left in its group after it exited", p.name)
	} else if !errors.Is(err, syscall.ESRCH) {
		t.Logf("%s: killing its process group: %v", p.name, err)
	}
}

// childEnv is this process's environment without any VAULT_ variable, which would
// otherwise redirect a child Vault or Agent (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE...),
// plus extra.
func childEnv(home string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	// A private HOME keeps any token helper file away from the user's.
	env = append(env, "HOME="+home)
	return append(env, extra...)
}

// freePortPair returns a loopback port p such that p and p+1 were free a moment ago:
// a dev server listens on p and its cluster listener on p+1. Another process may still
// take them before Vault binds; startVault retries when that happens. After the load
// tests, many thousands of client connections sit in TIME_WAIT on loopback ports of
// the ephemeral range, where :0 picks p, and each of those blocks a listener on its
// port: many p+1 are then taken, and finding a pair can take many tries.
func freePortPair(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	for range 500 {
		l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l2, err := lc.Listen(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = l2.Close()
		return port, nil
	}
	return 0, errors.New("no pair of adjacent free loopback ports found")
}
