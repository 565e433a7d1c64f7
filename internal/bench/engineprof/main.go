// Command engineprof is the engine as cmd/vault-plugin-secrets-cyberark serves it, plus a
// net/http/pprof listener on $BENCH_PPROF_ADDR (loopback only), so that the benchmark
// (internal/bench -profile-dir) can profile the engine inside a real Vault under load.
// The listener is unauthenticated: this build is for benchmarks on a developer's
// machine and is never shipped. The engine's own timings are read from the mount's
// metrics path, as a scraper would read them.
package main

import (
	"net"
	"net/http"
	_ "net/http/pprof" //nolint:gosec // G108: exposing the profiles is this build's purpose; loopback only
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	cyberark "github.com/idsec-labs/vault-plugin-secrets-cyberark"
)

func main() {
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: os.Stderr, JSONFormat: true})
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		logger.Error("invalid plugin flags", "error", err)
		os.Exit(1)
	}
	if addr := os.Getenv("BENCH_PPROF_ADDR"); addr != "" {
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			logger.Error("BENCH_PPROF_ADDR must be a loopback host:port", "addr", addr)
			os.Exit(1)
		}
		srv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second}
		go func() { logger.Info("pprof listener stopped", "error", srv.ListenAndServe()) }()
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: cyberark.Factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
		Logger:             logger,
	})
	if err != nil {
		logger.Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}
