//go:build !linux

package vaultproc

import (
	"errors"
	"time"
)

// Children needs /proc; callers skip what needs it elsewhere.
func Children(parent int, base string) ([]int, error) {
	return nil, errors.ErrUnsupported
}

// PeakRSS needs /proc.
func PeakRSS(pid int) (int64, error) {
	return 0, errors.ErrUnsupported
}

// RSS needs /proc.
func RSS(pid int) (Resident, error) {
	return Resident{}, errors.ErrUnsupported
}

// CPUTime needs /proc.
func CPUTime(pid int) (time.Duration, error) {
	return 0, errors.ErrUnsupported
}
