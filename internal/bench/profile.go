package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// profile loads the engine with each token read in turn while it takes a CPU profile
// and then an allocation profile of the engine's process, from the pprof listener of
// the internal/bench/engineprof build, into -profile-dir. For each load it prints the
// CPU time per read of the engine's process and of Vault's, from /proc, in
// microseconds: an uncached read with and without track_tokens side by side shows
// what the record costs each (the engine encodes and sends it, Vault encrypts and
// stores it).
func (b *bench) profile(ctx context.Context) error {
	if err := os.MkdirAll(b.o.profileDir, 0o750); err != nil {
		return err
	}
	if err := b.grantSplit(ctx); err != nil {
		return err
	}
	for _, run := range []struct {
		key string
		c   int
	}{{"uncached", 1}, {"tracked", 1}, {"reuse", b.o.conc}, {"leasefree", b.o.conc}} {
		s := mustScenario(run.key)
		seconds := int(b.o.duration / time.Second)
		engineBefore, engineErr := b.engineCPU()
		vaultBefore, vaultErr := vaultproc.CPUTime(b.bed.vault.Proc.Pid())
		type loaded struct {
			r   result
			err error
		}
		done := make(chan loaded, 1)
		go func() {
			r, err := b.load(ctx, s, run.c, b.o.duration+2*time.Second)
			done <- loaded{r, err}
		}()
		time.Sleep(time.Second)
		name := fmt.Sprintf("%s-c%d", run.key, run.c)
		if err := b.pprof(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), filepath.Join(b.o.profileDir, name+".cpu.pprof")); err != nil {
			return err
		}
		l := <-done
		if l.err != nil {
			return l.err
		}
		r := l.r
		perRead := func(before time.Duration, errBefore error, after time.Duration, errAfter error) string {
			if errBefore != nil || errAfter != nil {
				return "unknown"
			}
			return fmt.Sprintf("%.0f µs", us((after-before)/time.Duration(r.n)))
		}
		engineAfter, engineErrAfter := b.engineCPU()
		vaultAfter, vaultErrAfter := vaultproc.CPUTime(b.bed.vault.Proc.Pid())
		engine := perRead(engineBefore, engineErr, engineAfter, engineErrAfter)
		vault := perRead(vaultBefore, vaultErr, vaultAfter, vaultErrAfter)
		if err := b.pprof(ctx, "/debug/pprof/allocs", filepath.Join(b.o.profileDir, name+".allocs.pprof")); err != nil {
			return err
		}
		if s.leased {
			if err := b.revokeForce(ctx, s.path); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "profiled %s: %d reads; CPU per read: engine %s (the CPU profile's own cost included), Vault %s\n", name, r.n, engine, vault)
	}
	return nil
}

// pprof saves the engine's profile at path into dest.
func (b *bench) pprof(ctx context.Context, path, dest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.bed.pprofAddr+path, nil)
	if err != nil {
		return err
	}
	// A CPU profile takes the seconds it asks for; the Vault client's timeout is longer.
	resp, err := b.vaultHC.Do(req)
	if err != nil {
		return fmt.Errorf("pprof: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof %s: HTTP %d", path, resp.StatusCode)
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600) //nolint:gosec // dest is under the -profile-dir the operator named
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// grantSplit runs the direct tenant call and then uncached reads at c=1, and reads the
// engine's own grant-duration metric around the second: it splits an uncached read's
// time into the grant as the engine sees it and everything else.
func (b *bench) grantSplit(ctx context.Context) error {
	direct, err := b.measure(ctx, mustScenario("direct"), 1)
	if err != nil {
		return err
	}
	viaClient, err := b.measure(ctx, mustScenario("client"), 1)
	if err != nil {
		return err
	}
	jwt, err := b.measure(ctx, mustScenario("jwt"), 1)
	if err != nil {
		return err
	}
	before, err := b.grantTimes(ctx)
	if err != nil {
		return err
	}
	uncached, err := b.measure(ctx, mustScenario("uncached"), 1)
	if err != nil {
		return err
	}
	after, err := b.grantTimes(ctx)
	if err != nil {
		return err
	}
	n := after.count - before.count
	if n == 0 {
		return fmt.Errorf("the engine recorded no grants")
	}
	inside := (after.sumMS - before.sumMS) / float64(n)
	fmt.Fprintf(os.Stderr, "c=1 mean: direct tenant call %.3f ms, through the client package %.3f ms; trivial JWT-sized lease %.3f ms; "+
		"uncached read %.3f ms, of which the grant as the engine times it %.3f ms (%d grants, warm-up included) and the rest %.3f ms\n",
		ms(direct.mean), ms(viaClient.mean), ms(jwt.mean), ms(uncached.mean), inside, n, ms(uncached.mean)-inside)
	return nil
}

// grantTimes is the engine's grant-duration summary, all outcomes together.
type grantTimes struct {
	count uint64
	sumMS float64 // go-metrics times in milliseconds
}

// grantTimes reads the mount's metrics path, as a Prometheus scraper would.
func (b *bench) grantTimes(ctx context.Context) (grantTimes, error) {
	var g grantTimes
	families, err := b.engineMetrics(ctx)
	if err != nil {
		return g, err
	}
	f := families["cyberark_grant_duration"]
	if f == nil {
		return g, nil // no grant yet
	}
	for _, m := range f.GetMetric() {
		g.count += m.GetSummary().GetSampleCount()
		g.sumMS += m.GetSummary().GetSampleSum()
	}
	return g, nil
}
