//go:build unix && !linux

package vaultproc

import "syscall"

// procAttr puts a child in its own process group, so that stopping it also reaches the
// plugin processes it starts.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
