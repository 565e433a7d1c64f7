package e2e

import "syscall"

// procAttr puts a child in its own process group, so that stopping it also reaches the
// plugin processes it starts, and has the kernel kill it if the test binary dies first
// (a timeout panic, a kill), so that no Vault outlives its test run.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
