//go:build !linux

package vaultproc

import "errors"

// Children needs /proc; callers skip what needs it elsewhere.
func Children(parent int, base string) ([]int, error) {
	return nil, errors.ErrUnsupported
}

// PeakRSS needs /proc.
func PeakRSS(pid int) (int64, error) {
	return 0, errors.ErrUnsupported
}
