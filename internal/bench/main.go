// Command bench is make bench's benchmark (scripts/bench.sh runs it): the engine inside
// a real Vault, against Vault's own floors. It builds the engine, the trivial plugin
// (internal/bench/trivial) and the tenant emulator; starts the emulator on HTTPS in a
// process of its own and a Vault dev server on loopback (internal/vaultproc); registers
// and mounts both plugins by SHA-256 and version, configures the engine, and then
// measures, round after round, every read the performance figures compare: KV-v2, the
// trivial plugin without a lease and with leases of two sizes, a direct call to the
// tenant, and the engine's uncached (without and with track_tokens), reused and
// lease-free token reads, each at 1 and at -c concurrent readers for a fixed time after
// a warm-up. Across a simulated WAN (internal/wan: a proxy that delays each direction
// by half of -wan-rtt) to the emulator and to a second one that offers HTTP/1.1 alone,
// it measures the engine's uncached read and the direct call, at 1 and -wan-c readers,
// with the TLS handshakes each grant cost, in rounds of their own after the others.
// Around every measured run it reads the CPU time of the engine, Vault, the emulators
// and itself. It also counts the grants that -readers concurrent readers of a reuse
// role cost from an empty cache, reads the plugins' peak RSS, and, on a second Vault
// whose storage is Raft,
// measures Vault's storage and memory before and after -storage-reads reads of a
// reused role, leased and lease-free. It prints (and writes as markdown) the medians
// and the ratios of issue 11's and issue 21's targets. Everything it starts is stopped,
// and its temporary directory removed, when it ends.
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
	// wanRTT is the round trip of the simulated WAN; wanC the readers of its
	// throughput runs.
	wanRTT time.Duration
	wanC   int
	// storageReads is the reads of each role in the storage figure.
	storageReads int
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
	flag.DurationVar(&o.wanRTT, "wan-rtt", 40*time.Millisecond, "round `trip` of the simulated WAN to the tenant")
	flag.IntVar(&o.wanC, "wan-c", 64, "concurrent readers of the throughput runs across the WAN")
	flag.IntVar(&o.storageReads, "storage-reads", 20000, "`reads` of each reused role for Vault's storage and memory figure")
	flag.Parse()
	vaultproc.Main("bench", o.check, func(ctx context.Context) error { return run(ctx, o) })
}

func (o options) check() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	case o.vaultBin == "":
		return errors.New("-vault is required")
	case o.duration <= 0 || o.warmup < 0 || o.rounds < 1 || o.conc < 1 || o.readers < 1 || o.wanC < 1 || o.storageReads < 1:
		return errors.New("-duration, -rounds, -c, -wan-c, -readers and -storage-reads must be positive, -warmup not negative")
	case o.wanRTT < 0:
		return errors.New("-wan-rtt must not be negative")
	}
	if o.only == "" {
		return nil
	}
	for k := range strings.SplitSeq(o.only, ",") {
		if _, ok := scenarioByKey(k); !ok {
			return fmt.Errorf("-only: no scenario %q", k)
		}
	}
	return nil
}

// wanted tells whether s runs: every scenario unless -only names some.
func (o options) wanted(s scenario) bool {
	return o.only == "" || slices.Contains(strings.Split(o.only, ","), s.key)
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
	b.loadStart = loadAverage()
	measure := func(round int, concs []int, list []scenario) error {
		for _, c := range concs {
			for _, s := range list {
				if !o.wanted(s) || (s.manyOnly && c != concs[len(concs)-1]) {
					continue
				}
				if err := b.run(ctx, round, s, c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for round := 1; round <= o.rounds; round++ {
		if err := measure(round, []int{1, o.conc}, scenarios); err != nil {
			return err
		}
		g, err := b.crowd(ctx)
		if err != nil {
			return fmt.Errorf("round %d, %d readers: %w", round, o.readers, err)
		}
		b.grants = append(b.grants, g)
		fmt.Fprintf(os.Stderr, "round %d  %d concurrent readers from an empty cache: %d grant(s)\n", round, o.readers, g)
	}
	// The runs across the WAN come after the others, interleaved round by round among
	// themselves: the memory the engine grows for 64 grants in flight stays resident,
	// and would raise the peak RSS that issue 11's figure reads.
	b.engineRSS, b.trivialRSS = b.peakRSS()
	for round := 1; round <= o.rounds; round++ {
		if err := measure(round, []int{1, o.wanC}, wanScenarios); err != nil {
			return err
		}
	}
	if o.only != "" {
		return nil
	}
	// Read before the storage figure's Vault runs.
	b.engineWANRSS, _ = b.peakRSS()
	if err := b.storage(ctx); err != nil {
		return fmt.Errorf("storage figure: %w", err)
	}
	b.loadEnd = loadAverage()
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

// run measures s at c readers once and keeps the result.
func (b *bench) run(ctx context.Context, round int, s scenario, c int) error {
	r, err := b.measure(ctx, s, c)
	if err != nil {
		return fmt.Errorf("round %d, %s at c=%d: %w", round, s.key, c, err)
	}
	if b.results[s.key] == nil {
		b.results[s.key] = map[int][]result{}
	}
	b.results[s.key][c] = append(b.results[s.key][c], r)
	hs := ""
	if r.handshakes >= 0 {
		hs = fmt.Sprintf(", %d TLS handshakes", r.handshakes)
	}
	fmt.Fprintf(os.Stderr, "round %d  c=%-3d %-11s p50 %7.3f ms  p99 %7.3f ms  %8.0f req/s  (%d reads, %d errors%s)\n",
		round, c, s.key, ms(r.p50), ms(r.p99), r.rps, r.n, r.errors, hs)
	return nil
}

// loadAverage is the machine's load average over the last minute, as /proc/loadavg
// gives it, or "unknown".
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	if f := strings.Fields(string(data)); len(f) > 0 {
		return f[0]
	}
	return "unknown"
}
