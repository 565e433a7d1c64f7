package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// median of the rounds' results, each figure on its own.
func (b *bench) median(key string, c int) result {
	rs := b.results[key][c]
	p50s := make([]time.Duration, len(rs))
	p99s := make([]time.Duration, len(rs))
	rps := make([]float64, len(rs))
	for i, r := range rs {
		p50s[i], p99s[i], rps[i] = r.p50, r.p99, r.rps
	}
	return result{p50: medianOf(p50s), p99: medianOf(p99s), rps: medianOf(rps)}
}

func medianOf[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (b *bench) report() string {
	var w strings.Builder
	cpu := cpuModel()
	fmt.Fprintf(&w, "## make bench: %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&w, "Machine: %d cores (%s), %s; one Vault dev server, the emulators and this load generator on loopback. "+
		"Load average (1 min) %s at the start of the runs, %s at the end. "+
		"Each run: %s warm-up, %s measured; figures are medians of %d rounds.\n\n",
		runtime.NumCPU(), cpu, runtime.Version(), b.loadStart, b.loadEnd, b.o.warmup, b.o.duration, b.o.rounds)
	fmt.Fprintf(&w, "| read | c=1 p50 ms | c=1 req/s | c=%d p50 ms | c=%d p99 ms | c=%d req/s |\n|---|---:|---:|---:|---:|---:|\n", b.o.conc, b.o.conc, b.o.conc)
	for _, s := range scenarios {
		one, many := b.median(s.key, 1), b.median(s.key, b.o.conc)
		fmt.Fprintf(&w, "| %s | %.3f | %.0f | %.3f | %.3f | %.0f |\n", s.label, ms(one.p50), one.rps, ms(many.p50), ms(many.p99), many.rps)
	}
	b.trackingCost(&w)
	engine, trivial := b.engineRSS, b.trivialRSS
	fmt.Fprintf(&w, "\nGrants for %d concurrent readers of a reuse role from an empty cache, per round: %s.  \n", b.o.readers, joinInts(b.grants))
	fmt.Fprintf(&w, "Peak RSS (VmHWM) after these runs: engine %s, trivial plugin %s; the engine's after the runs across the WAN too "+
		"(below, %d readers), %s.\n\n", mib(engine), mib(trivial), b.o.wanC, mib(b.engineWANRSS))

	one := func(k string) float64 { return ms(b.median(k, 1).p50) }
	many := func(k string) float64 { return b.median(k, b.o.conc).rps }
	extra := one("uncached") - one("direct")
	fmt.Fprintf(&w, "| target (issue 11) | measured | goal | met |\n|---|---:|---|---|\n")
	target := func(name string, v float64, format, goal string, ok bool) {
		fmt.Fprintf(&w, "| %s | "+format+" | %s | %s |\n", name, v, goal, yesNo(ok))
	}
	r1 := extra / one("jwt")
	target("(uncached p50 − direct tenant p50) / trivial JWT-lease p50, c=1", r1, "%.2f", "≤ 1.10", r1 <= 1.10)
	fmt.Fprintf(&w, "| uncached p50 − (trivial JWT-lease p50 + direct tenant p50), c=1 | %.3f ms | — | — |\n", one("uncached")-one("jwt")-one("direct"))
	r2 := many("leasefree") / many("plain")
	target(fmt.Sprintf("lease-free reuse req/s / trivial no-lease req/s, c=%d", b.o.conc), r2, "%.2f", "≥ 0.95", r2 >= 0.95)
	r3 := many("reuse") / many("jwt")
	target(fmt.Sprintf("leased reuse req/s / trivial JWT-lease req/s, c=%d", b.o.conc), r3, "%.2f", "≥ 1.00", r3 >= 1.0)
	maxGrants := slices.Max(append([]int64{0}, b.grants...))
	target(fmt.Sprintf("most grants for %d concurrent readers in a round", b.o.readers), float64(maxGrants), "%.0f", "= 1", maxGrants == 1 && slices.Min(b.grants) == 1)
	diff := float64(engine-trivial) / (1 << 20)
	target("engine peak RSS − trivial plugin's, MiB", diff, "%.1f", "≤ 4", engine > 0 && trivial > 0 && diff <= 4)
	fmt.Fprintf(&w, "\nOther ratios: KV-v2 / trivial no-lease req/s %.2f; trivial small-lease / no-lease req/s %.2f; JWT-lease / no-lease req/s %.2f; lease-free / leased reuse req/s %.2f.\n",
		many("kv")/many("plain"), many("small")/many("plain"), many("jwt")/many("plain"), many("leasefree")/many("reuse"))
	b.wanReport(&w)
	b.cpuReport(&w)
	b.storageReport(&w)
	b.targets21(&w)
	return w.String()
}

// trackingCost compares the uncached read with track_tokens to the one without: the
// same grant through a second client of the same service user, plus the record.
func (b *bench) trackingCost(w *strings.Builder) {
	fmt.Fprintf(w, "\n| track_tokens on an uncached read | c=1 | c=%d |\n|---|---:|---:|\n", b.o.conc)
	var diff, p50s, rps [2]float64
	for i, c := range []int{1, b.o.conc} {
		on, off := b.median("tracked", c), b.median("uncached", c)
		diff[i] = ms(on.p50) - ms(off.p50)
		p50s[i] = ms(on.p50) / ms(off.p50)
		rps[i] = on.rps / off.rps
	}
	fmt.Fprintf(w, "| p50 tracked − untracked, ms | %+.3f | %+.3f |\n", diff[0], diff[1])
	fmt.Fprintf(w, "| p50 tracked / untracked | %.2f | %.2f |\n", p50s[0], p50s[1])
	fmt.Fprintf(w, "| req/s tracked / untracked | %.2f | %.2f |\n", rps[0], rps[1])
	fmt.Fprintf(w, "\nThe tracked reads left %d token records in the engine's storage (one per read, warm-ups included; "+
		"each is kept until its token expires).\n", b.reads["tracked"])
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func joinInts(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

func mib(n int64) string {
	if n <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// peakRSS is the peak resident set (VmHWM, bytes) of the engine's and the trivial
// plugin's processes, which Vault started as its children; 0 where it cannot tell.
func (b *bench) peakRSS() (engine, trivial int64) {
	peak := func(file string) int64 {
		var most int64
		pids, _ := vaultproc.Children(b.bed.vault.Proc.Pid(), file)
		for _, pid := range pids {
			if n, err := vaultproc.PeakRSS(pid); err == nil {
				most = max(most, n)
			}
		}
		return most
	}
	return peak(b.bed.engine.Command), peak(b.bed.trivial.Command)
}
