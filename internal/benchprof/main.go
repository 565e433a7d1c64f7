// Command benchprof is the engine as cmd/vault-plugin-secrets-cyberark serves it, plus a
// net/http/pprof listener on $BENCH_PPROF_ADDR (loopback only), so that scripts/bench.sh
// (BENCH_PROFILE=dir) can profile the engine inside a real Vault under load, and reads
// the engine's grant-duration metric at /debug/grants: how long grants take as the
// engine sees them, against what a reader of Vault sees. The
// listener is unauthenticated: this build is for benchmarks on a developer's machine
// and is never shipped.
package main

import (
	"encoding/json"
	"net"
	"net/http"
	_ "net/http/pprof" //nolint:gosec // G108: exposing the profiles is this build's purpose; loopback only
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-metrics"
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
	// The engine reports to go-metrics' global sink when no test set one.
	sink := metrics.NewInmemSink(10*time.Second, 10*time.Minute)
	conf := metrics.DefaultConfig("bench")
	conf.EnableHostname, conf.EnableRuntimeMetrics = false, false
	if _, err := metrics.NewGlobal(conf, sink); err != nil {
		logger.Error("metrics", "error", err)
		os.Exit(1)
	}
	http.HandleFunc("/debug/grants", func(w http.ResponseWriter, _ *http.Request) {
		var out struct {
			Count int     `json:"count"`
			SumMS float64 `json:"sum_ms"`
		}
		for _, iv := range sink.Data() {
			iv.RLock()
			for k, s := range iv.Samples {
				if strings.HasPrefix(k, "bench.cyberark.grant.duration") && s.AggregateSample != nil {
					out.Count += s.Count
					out.SumMS += s.Sum
				}
			}
			iv.RUnlock()
		}
		_ = json.NewEncoder(w).Encode(out)
	})
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
