package client

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a connection, a
// dial or a server the test forgot is how a long-running plugin slowly runs out of
// file descriptors. The fault matrix also checks each case on its own, to name it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
