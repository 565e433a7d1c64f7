//go:build unix

package vaultproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Resident is a process's resident set, in bytes: all of it (VmRSS), and its
// anonymous (heap, stacks) and file-backed (the binary, mapped files) parts.
type Resident struct {
	Total, Anon, File int64
}

// Process is a child (a Vault server or Agent, an emulator) in a process group of its
// own, its stdout and stderr appended to a log file.
type Process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited and been reaped
	err     error         // set before done is closed
}

// Start runs bin with args in dir, with env as its whole environment and its output
// appended to logPath. The caller must call Stop.
func Start(name, bin, dir string, env []string, logPath string, args ...string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) //nolint:gosec // a log file in the caller's working directory
	if err != nil {
		return nil, err
	}
	// The child holds its own descriptor; ours is not needed once it has started.
	defer logFile.Close()
	// A context that never ends: the process outlives this call, and Stop ends it with
	// SIGTERM first, where a cancelled context would kill it outright.
	cmd := exec.CommandContext(context.Background(), bin, args...) //nolint:gosec // the caller's own binary and arguments
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's ID, which is also its process group's.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file its output goes to.
func (p *Process) LogPath() string { return p.logPath }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited tells whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended (nil for status 0); meaningful once it has exited.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Stop asks the process to shut down (Vault stops its plugins on SIGTERM), kills its
// group if it has not exited within grace, and then kills whatever is left in its
// group, such as a plugin that outlived it. logf, if not nil, hears of each kill.
func (p *Process) Stop(grace time.Duration, logf func(format string, args ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	pid := p.Pid()
	if !p.Exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			logf("%s did not exit %s after SIGTERM; killing it", p.name, grace)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.done
		}
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err == nil {
		logf("%s: killed processes left in its group after it exited", p.name)
	} else if !errors.Is(err, syscall.ESRCH) {
		logf("%s: killing its process group: %v", p.name, err)
	}
}

// ChildEnv is this process's environment without any VAULT_ variable, which would
// otherwise redirect a child Vault or Agent (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE...),
// with HOME set to home, plus extra.
func ChildEnv(home string, extra ...string) []string {
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
