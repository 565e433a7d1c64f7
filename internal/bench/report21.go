package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// The report's issue 21 part: the reads across the simulated WAN, the CPU each read
// costs every process on its path, and Vault's storage and memory after reused reads.

// offersLabel is what a WAN link's tenant offers, for the tables.
func offersLabel(wan string) string {
	if wan == "h1" {
		return "HTTP/1.1 only"
	}
	return "HTTP/2 and HTTP/1.1"
}

// perGrant is the TLS handshakes per read of key at c over every round, -1 if none
// were counted.
func (b *bench) perGrant(key string, c int) float64 {
	var hs int64
	var n int
	for _, r := range b.results[key][c] {
		if r.handshakes < 0 {
			return -1
		}
		hs += r.handshakes
		n += r.n
	}
	if n == 0 {
		return -1
	}
	return float64(hs) / float64(n)
}

func (b *bench) wanReport(w *strings.Builder) {
	c := b.o.wanC
	fmt.Fprintf(w, "\n### Across a simulated WAN (round trip %s)\n\n", b.o.wanRTT)
	fmt.Fprintf(w, "A TCP proxy in the load generator delays each direction by %s between the engine and each emulator, and between "+
		"the load generator's direct call and each. The engine's clients `wan-h2` and `wan-h1` (no revocation at the tenant, "+
		"max_failed_logins=100 so that %d grants may be at the tenant at once) reach the emulator that offers HTTP/2 and the one that "+
		"offers HTTP/1.1 alone; `wan-h2-gate` is `wan-h2` with the default max_failed_logins=3, which lets 3 grants be at the tenant "+
		"at once. The direct call is the load generator's kept-alive client (idle pool %d, HTTP/2 attempted as cleanhttp does). "+
		"Handshakes per grant: in the measured windows only (after each warm-up), all rounds together; the engine's from its "+
		"`cyberark_tls_handshake` counter, the direct call's from the proxy's connection count.\n\n",
		b.o.wanRTT/2, c, c+8)
	fmt.Fprintf(w, "| read | tenant offers | c=1 p50 ms | c=1 req/s | c=1 handshakes/grant | c=%d p50 ms | c=%d p99 ms | c=%d req/s | c=%d handshakes/grant | protocol |\n", c, c, c, c)
	fmt.Fprintf(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, s := range wanScenarios {
		one, many := b.median(s.key, 1), b.median(s.key, c)
		atOne := fmt.Sprintf("%.3f | %.0f | %s", ms(one.p50), one.rps, ratio4(b.perGrant(s.key, 1)))
		if len(b.results[s.key][1]) == 0 {
			atOne = "— | — | —" // not run: the same read as above at c=1
		}
		fmt.Fprintf(w, "| %s | %s | %s | %.3f | %.3f | %.0f | %s | %s |\n", s.label, offersLabel(s.wan),
			atOne, ms(many.p50), ms(many.p99), many.rps, ratio4(b.perGrant(s.key, c)), b.protocolsOf(s.key))
	}
}

func ratio4(x float64) string {
	if x < 0 {
		return "—"
	}
	return fmt.Sprintf("%.4f", x)
}

// cpuPerRead is the median over rounds of each process's CPU per read of key at c;
// ok is false if a round could not read one.
func (b *bench) cpuPerRead(key string, c int) (engine, vault, tenant, load time.Duration, ok bool) {
	rs := b.results[key][c]
	var es, vs, ts, ls []time.Duration
	for _, r := range rs {
		if !r.cpu.ok || r.n == 0 {
			return 0, 0, 0, 0, false
		}
		n := time.Duration(r.n)
		es, vs = append(es, r.cpu.engine/n), append(vs, r.cpu.vault/n)
		ts, ls = append(ts, r.cpu.tenant/n), append(ls, r.cpu.bench/n)
	}
	return medianOf(es), medianOf(vs), medianOf(ts), medianOf(ls), len(rs) > 0
}

func (b *bench) cpuReport(w *strings.Builder) {
	n := runtime.NumCPU()
	fmt.Fprintf(w, "\n### CPU per read, µs\n\n")
	fmt.Fprintf(w, "From /proc around each measured window, divided by the reads in it; medians of rounds. The engine, Vault and "+
		"the emulators count in 10 ms ticks (too coarse for the few reads of a run at c=1 across the WAN, which are left out); the "+
		"load generator, which also runs the WAN proxies, to the microsecond. A ceiling is what %d cores could serve if this CPU "+
		"were all that bounded the read: %d × 10⁶ µs / the sum; the second counts the engine and Vault alone, as on a Vault "+
		"host whose tenant and clients are elsewhere.\n\n", n, n)
	fmt.Fprintf(w, "| read | c | engine | Vault | emulators | load generator | sum | ceiling, req/s | engine + Vault ceiling, req/s | measured req/s |\n"+
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	ceiling := func(d time.Duration) float64 { return float64(n) * float64(time.Second) / float64(max(d, 1)) }
	row := func(label string, key string, c int) {
		engineRead := mustScenario(key).path != ""
		e, v, t, l, ok := b.cpuPerRead(key, c)
		if !ok {
			fmt.Fprintf(w, "| %s | %d | unknown | | | | | | | %.0f |\n", label, c, b.median(key, c).rps)
			return
		}
		sum := e + v + t + l
		side := "—"
		if engineRead {
			side = fmt.Sprintf("%.0f", ceiling(e+v))
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %.0f |\n",
			label, c, us(e), us(v), us(t), us(l), us(sum), ceiling(sum), side, b.median(key, c).rps)
	}
	for _, key := range []string{"direct", "uncached", "reuse", "leasefree"} {
		s := mustScenario(key)
		for _, c := range []int{1, b.o.conc} {
			row(s.label, key, c)
		}
	}
	for _, s := range wanScenarios {
		row(fmt.Sprintf("across the WAN: %s, tenant offers %s", s.label, offersLabel(s.wan)), s.key, b.o.wanC)
	}
}

func (b *bench) storageReport(w *strings.Builder) {
	fmt.Fprintf(w, "\n### Vault's storage and memory after %d reads of a reused role\n\n", b.o.storageReads)
	fmt.Fprintf(w, "A second Vault dev server, its storage in Raft (the first one's is in memory), with the engine on it and the same tenant; "+
		"%d readers; the lease-free role first, then the leased one. Logical: the state in a Raft snapshot, every key and its encrypted "+
		"value. The Raft directory holds BoltDB files that grow in preallocated steps (their size) and Raft's log until a snapshot "+
		"compacts it; allocated is their disk blocks. Vault's resident set splits into anonymous memory (heap, stacks) and "+
		"file-backed pages (its binary, and the BoltDB files it maps); its live heap is its heap in use just after a garbage "+
		"collection it is made to run (sys/pprof/heap?gc=1).\n\n", b.o.conc)
	fmt.Fprintf(w, "| role | time s | leases before → after | logical bytes | per read | Raft directory bytes | allocated bytes | Vault RSS MiB | anonymous | file-backed | live heap MiB |\n"+
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range b.storageRuns {
		name := "token_reuse, lease_free"
		if r.leased {
			name = "token_reuse, leased"
		}
		logical := r.after.fsmBytes - r.before.fsmBytes
		fmt.Fprintf(w, "| %s | %.1f | %d → %d | %+d | %+.1f | %+d | %+d | %+.1f | %+.1f | %+.1f | %+.1f |\n", name, r.elapsed.Seconds(), r.before.leases, r.after.leases,
			logical, float64(logical)/float64(r.reads), r.after.dirBytes-r.before.dirBytes, r.after.dirAlloc-r.before.dirAlloc,
			mibOf(r.after.rss.Total-r.before.rss.Total), mibOf(r.after.rss.Anon-r.before.rss.Anon), mibOf(r.after.rss.File-r.before.rss.File),
			mibOf(r.after.heap-r.before.heap))
	}
}

// storageGrowth is the leased and the lease-free run's growth of one figure.
func (b *bench) storageGrowth(f func(vaultState) int64) (leased, free int64, ok bool) {
	var got int
	for _, r := range b.storageRuns {
		if r.leased {
			leased = f(r.after) - f(r.before)
		} else {
			free = f(r.after) - f(r.before)
		}
		got++
	}
	return leased, free, got == 2
}

func (b *bench) targets21(w *strings.Builder) {
	c := b.o.wanC
	fmt.Fprintf(w, "\n| target (issue 21) | measured | goal | met |\n|---|---:|---|---|\n")
	for _, wan := range []string{"h2", "h1"} {
		hs := b.perGrant("wan"+wan, c)
		fmt.Fprintf(w, "| TLS handshakes per grant, engine across the WAN, c=%d, steady state, tenant offers %s | %s | ≤ 0.01 | %s |\n",
			c, offersLabel(wan), ratio4(hs), yesNo(hs >= 0 && hs <= 0.01))
	}
	for _, wan := range []string{"h2", "h1"} {
		d := ms(b.median("wan"+wan, 1).p50) - ms(b.median("wandirect"+wan, 1).p50)
		fmt.Fprintf(w, "| uncached p50 − direct call p50 across the WAN, c=1, tenant offers %s | %+.3f ms | ≤ +2 ms | %s |\n", offersLabel(wan), d, yesNo(d <= 2))
	}
	for _, key := range []string{"wanh2", "wanh1", "wanh2gate"} {
		s := mustScenario(key)
		r := b.median(key, c).rps / b.median("wandirect"+s.wan, c).rps
		budget := "max_failed_logins=100"
		if s.maxFailedLogins == 0 {
			budget = "max_failed_logins=3 (default)"
		}
		fmt.Fprintf(w, "| uncached req/s (%s) / direct call req/s across the WAN, c=%d, tenant offers %s | %.2f | ≥ 0.90 | %s |\n",
			budget, c, offersLabel(s.wan), r, yesNo(r >= 0.9))
	}
	if e, _, _, _, ok := b.cpuPerRead("uncached", 1); ok {
		re, _, _, _, _ := b.cpuPerRead("reuse", 1)
		lf, _, _, _, _ := b.cpuPerRead("leasefree", 1)
		fmt.Fprintf(w, "| engine CPU per read, c=1 (/proc): uncached; reused, leased; reused, lease-free | %.0f µs; %.0f µs; %.0f µs | report | — |\n", us(e), us(re), us(lf))
	}
	for _, f := range []struct {
		name string
		get  func(vaultState) int64
	}{
		{"logical", func(s vaultState) int64 { return s.fsmBytes }},
		{"Raft directory, allocated", func(s vaultState) int64 { return s.dirAlloc }},
	} {
		leased, free, ok := b.storageGrowth(f.get)
		if !ok {
			continue
		}
		r := float64(free) / float64(max(leased, 1))
		fmt.Fprintf(w, "| Vault storage growth over %d reused reads, lease-free / leased (%s: %+d / %+d bytes) | %.4f | ≤ 0.01 | %s |\n",
			b.o.storageReads, f.name, free, leased, r, yesNo(leased > 0 && r <= 0.01))
	}
	leased, free, ok := b.storageGrowth(func(s vaultState) int64 { return s.rss.Total })
	leasedHeap, freeHeap, _ := b.storageGrowth(func(s vaultState) int64 { return s.heap })
	if ok {
		fmt.Fprintf(w, "| Vault memory growth over %d reused reads, RSS (live heap): leased; lease-free | %+.1f MiB (%+.1f); %+.1f MiB (%+.1f) | report | — |\n",
			b.o.storageReads, mibOf(leased), mibOf(leasedHeap), mibOf(free), mibOf(freeHeap))
	}
}
