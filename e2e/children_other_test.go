//go:build !linux

package e2e

import "errors"

// childProcesses needs /proc; the tests that use it skip elsewhere.
func childProcesses(parent int, base string) ([]int, error) {
	return nil, errors.ErrUnsupported
}
