package vaultproc

import "syscall"

// procAttr puts a child in its own process group, so that stopping it also reaches the
// plugin processes it starts, and has the kernel kill it if its parent dies first (a
// test's timeout panic, a kill), so that no Vault outlives the run that started it.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
