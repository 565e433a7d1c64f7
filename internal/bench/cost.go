package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// What a run costs beyond its time: the CPU of each process on the read's path, and the
// TLS handshakes with the tenant.

// cpuNow is the CPU time used so far by the engine, Vault, the emulators and this
// process. ok is false if one of them could not be read.
func (b *bench) cpuNow() cpuUse {
	u := cpuUse{ok: true}
	var err error
	if u.engine, err = b.engineCPU(); err != nil {
		u.ok = false
	}
	if u.vault, err = vaultproc.CPUTime(b.bed.vault.Proc.Pid()); err != nil {
		u.ok = false
	}
	for _, t := range b.bed.tenants {
		d, err := vaultproc.CPUTime(t.proc.Pid())
		if err != nil {
			u.ok = false
		}
		u.tenant += d
	}
	// This process's own time, to the microsecond.
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		u.ok = false
	}
	u.bench = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return u
}

// since is the CPU time used between before and u.
func (u cpuUse) since(before cpuUse) cpuUse {
	return cpuUse{
		engine: u.engine - before.engine, vault: u.vault - before.vault,
		tenant: u.tenant - before.tenant, bench: u.bench - before.bench,
		ok: u.ok && before.ok,
	}
}

// engineCPU is the CPU time the engine's process has used so far (/proc; ticks of
// 10 ms).
func (b *bench) engineCPU() (time.Duration, error) {
	if b.enginePid != 0 {
		if d, err := vaultproc.CPUTime(b.enginePid); err == nil {
			return d, nil
		}
	}
	pids, err := vaultproc.Children(b.bed.vault.Proc.Pid(), b.bed.engine.Command)
	if err != nil {
		return 0, err
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("found %d engine processes, want 1", len(pids))
	}
	b.enginePid = pids[0]
	return vaultproc.CPUTime(pids[0])
}

// handshakes is a count of TLS handshakes with a tenant at one moment.
type handshakes struct {
	counted    bool
	total      int64
	byProtocol map[string]int64 // the engine's, by its metric's protocol label
}

// handshakesNow counts the handshakes that s's reads make: for the engine's reads
// across the WAN, its cyberark_tls_handshake counter (every client of the mount; no
// other read runs meanwhile); for the direct call, the connections opened through the
// WAN proxy, each one TLS handshake. Other reads are not counted.
func (b *bench) handshakesNow(ctx context.Context, s scenario) (handshakes, error) {
	switch {
	case s.wan == "":
		return handshakes{}, nil
	case s.path == "":
		return handshakes{counted: true, total: b.bed.wan[s.wan].proxy.Connections()}, nil
	}
	by, err := b.handshakeCounts(ctx)
	if err != nil {
		return handshakes{}, err
	}
	h := handshakes{counted: true, byProtocol: by}
	for _, n := range by {
		h.total += n
	}
	return h, nil
}

// handshakeCounts is the engine's cyberark_tls_handshake counter by protocol.
func (b *bench) handshakeCounts(ctx context.Context) (map[string]int64, error) {
	families, err := b.engineMetrics(ctx)
	if err != nil {
		return nil, err
	}
	by := map[string]int64{}
	for _, m := range families["cyberark_tls_handshake"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "protocol" {
				by[l.GetValue()] += int64(m.GetCounter().GetValue())
			}
		}
	}
	return by, nil
}

// noteHandshakes records, for key, the protocols whose handshakes grew from before to
// after.
func (b *bench) noteHandshakes(key string, before, after map[string]int64) {
	for p, n := range after {
		if n > before[p] {
			b.noteProtocol(key, p)
		}
	}
}

func (b *bench) noteProtocol(key, proto string) {
	b.protocolsMu.Lock()
	defer b.protocolsMu.Unlock()
	if b.protocols[key] == nil {
		b.protocols[key] = map[string]bool{}
	}
	b.protocols[key][proto] = true
}

// protocolsOf is the protocols seen for key, or "—".
func (b *bench) protocolsOf(key string) string {
	b.protocolsMu.Lock()
	defer b.protocolsMu.Unlock()
	var ps []string
	for p := range b.protocols[key] {
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return "—"
	}
	slices.Sort(ps)
	return strings.Join(ps, ", ")
}

// engineMetrics reads the mount's metrics path, as a Prometheus scraper would.
func (b *bench) engineMetrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	status, body, err := b.vaultGet(ctx, strings.TrimSuffix(b.bed.vault.Addr, "/")+"/v1/cyberark/metrics")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("cyberark/metrics: HTTP %d: %.200s", status, body)
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("cyberark/metrics: %w", err)
	}
	return families, nil
}
