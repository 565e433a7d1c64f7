package vaultproc

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Main runs a command of ours that starts Vault: check's error is a usage error (exit
// 2), run's a failure (exit 1), each printed after prog. Signals stay caught until run
// returns, so that a second Ctrl-C cannot cut its cleanup short and leave a Vault
// behind.
func Main(prog string, check func() error, run func(context.Context) error) {
	if err := check(); err != nil {
		fmt.Fprintln(os.Stderr, prog+":", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, prog+":", err)
		os.Exit(1)
	}
}
