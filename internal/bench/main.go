// Command bench is make bench's benchmark (scripts/bench.sh runs it): the engine inside
// a real Vault, against Vault's own floors. It builds the engine, the trivial plugin
// (internal/bench/trivial) and the tenant emulator; starts the emulator on HTTPS in a
// process of its own and a Vault dev server on loopback (internal/vaultproc); registers
// and mounts both plugins by SHA-256 and version, configures the engine, and then
// measures, round after round, every read the performance figures compare: KV-v2, the
// trivial plugin without a lease and with leases of two sizes, a direct call to the
// tenant, and the engine's uncached (without and with track_tokens), reused and
// lease-free token reads, each at 1 and at -c concurrent readers for a fixed time after
// a warm-up. It also counts the grants
// that -readers concurrent readers of a reuse role cost from an empty cache, reads the
// plugins' peak RSS, and prints (and writes as markdown) the medians and the ratios of
// issue 11's targets. Everything it starts is stopped, and its temporary directory
// removed, when it ends.
//
// With -profile-dir it runs the engine's pprof build (internal/bench/engineprof)
// instead, and writes CPU and allocation profiles of the engine under load, with no
// table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

type options struct {
	vaultBin   string
	moduleRoot string
	duration   time.Duration
	warmup     time.Duration
	rounds     int
	conc       int
	readers    int
	out        string
	profileDir string
	only       string
}

func main() {
	var o options
	flag.StringVar(&o.vaultBin, "vault", "", "the Vault `binary` to run")
	flag.StringVar(&o.moduleRoot, "module-root", ".", "the repository's root `directory`, where the plugins are built")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "measured `time` of each run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured `time` before each run")
	flag.IntVar(&o.rounds, "rounds", 3, "`rounds` of every run; figures are medians over rounds")
	flag.IntVar(&o.conc, "c", 16, "concurrent readers of the throughput runs")
	flag.IntVar(&o.readers, "readers", 200, "concurrent readers of the grant count")
	flag.StringVar(&o.out, "out", "bench/results.md", "markdown `file` to write the table to (empty: none)")
	flag.StringVar(&o.profileDir, "profile-dir", "", "profile the engine under load into this `directory` instead of measuring")
	flag.StringVar(&o.only, "only", "", "comma-separated scenario `keys` to run (development; the report needs all)")
	flag.Parse()
	vaultproc.Main("bench", o.check, func(ctx context.Context) error { return run(ctx, o) })
}

func (o options) check() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	case o.vaultBin == "":
		return errors.New("-vault is required")
	case o.duration <= 0 || o.warmup < 0 || o.rounds < 1 || o.conc < 1 || o.readers < 1:
		return errors.New("-duration, -rounds, -c and -readers must be positive, -warmup not negative")
	}
	if o.only == "" {
		return nil
	}
	for k := range strings.SplitSeq(o.only, ",") {
		if !slices.ContainsFunc(scenarios, func(s scenario) bool { return s.key == k }) {
			return fmt.Errorf("-only: no scenario %q", k)
		}
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...)
}

func run(ctx context.Context, o options) (err error) {
	bd, err := startBed(ctx, o)
	if err != nil {
		return err
	}
	// The logs' last lines help after a failure, not after a Ctrl-C.
	defer func() { bd.stop(err != nil && ctx.Err() == nil) }()
	b := &bench{o: o, bed: bd, results: map[string]map[int][]result{}, reads: map[string]int{}}
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if o.profileDir != "" {
		return b.profile(ctx)
	}
	concs := []int{1, o.conc}
	for round := 1; round <= o.rounds; round++ {
		for _, c := range concs {
			for _, s := range scenarios {
				if o.only != "" && !slices.Contains(strings.Split(o.only, ","), s.key) {
					continue
				}
				r, err := b.measure(ctx, s, c)
				if err != nil {
					return fmt.Errorf("round %d, %s at c=%d: %w", round, s.key, c, err)
				}
				if b.results[s.key] == nil {
					b.results[s.key] = map[int][]result{}
				}
				b.results[s.key][c] = append(b.results[s.key][c], r)
				fmt.Fprintf(os.Stderr, "round %d  c=%-3d %-10s p50 %7.3f ms  p99 %7.3f ms  %8.0f req/s  (%d reads, %d errors)\n",
					round, c, s.key, ms(r.p50), ms(r.p99), r.rps, r.n, r.errors)
			}
		}
		g, err := b.crowd(ctx)
		if err != nil {
			return fmt.Errorf("round %d, %d readers: %w", round, o.readers, err)
		}
		b.grants = append(b.grants, g)
		fmt.Fprintf(os.Stderr, "round %d  %d concurrent readers from an empty cache: %d grant(s)\n", round, o.readers, g)
	}
	if o.only != "" {
		return nil
	}
	report := b.report()
	fmt.Print(report)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o750); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(report), 0o600); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "wrote", o.out)
	}
	return nil
}
