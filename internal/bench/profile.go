package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// profile loads the engine with each token read in turn while it takes a CPU profile
// and then an allocation profile of the engine's process, from the pprof listener of
// the internal/benchprof build, into -profile-dir.
func (b *bench) profile(ctx context.Context) error {
	if b.o.pprofAddr == "" {
		return fmt.Errorf("-profile-dir needs -pprof, the engine's pprof listener")
	}
	if err := os.MkdirAll(b.o.profileDir, 0o750); err != nil {
		return err
	}
	if err := b.grantSplit(ctx); err != nil {
		return err
	}
	for _, run := range []struct {
		key string
		c   int
	}{{"uncached", 1}, {"reuse", b.o.conc}, {"leasefree", b.o.conc}} {
		var s scenario
		for _, sc := range scenarios {
			if sc.key == run.key {
				s = sc
			}
		}
		seconds := int(b.o.duration / time.Second)
		done := make(chan error, 1)
		go func() {
			_, err := b.load(ctx, s, run.c, b.o.duration+2*time.Second)
			done <- err
		}()
		time.Sleep(time.Second)
		name := fmt.Sprintf("%s-c%d", run.key, run.c)
		if err := b.fetch(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), filepath.Join(b.o.profileDir, name+".cpu.pprof")); err != nil {
			return err
		}
		if err := <-done; err != nil {
			return err
		}
		if err := b.fetch(ctx, "/debug/pprof/allocs", filepath.Join(b.o.profileDir, name+".allocs.pprof")); err != nil {
			return err
		}
		if s.leased {
			if err := b.revokeForce(ctx, s.path); err != nil {
				return err
			}
		}
		fmt.Fprintln(os.Stderr, "profiled", name)
	}
	return nil
}

func (b *bench) fetch(ctx context.Context, path, dest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.o.pprofAddr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
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
	find := func(key string) scenario {
		for _, s := range scenarios {
			if s.key == key {
				return s
			}
		}
		panic(key)
	}
	direct, err := b.measure(ctx, find("direct"), 1)
	if err != nil {
		return err
	}
	viaClient, err := b.measure(ctx, find("client"), 1)
	if err != nil {
		return err
	}
	jwt, err := b.measure(ctx, find("jwt"), 1)
	if err != nil {
		return err
	}
	before, err := b.grantStats(ctx)
	if err != nil {
		return err
	}
	uncached, err := b.measure(ctx, find("uncached"), 1)
	if err != nil {
		return err
	}
	after, err := b.grantStats(ctx)
	if err != nil {
		return err
	}
	n := after.Count - before.Count
	if n <= 0 {
		return fmt.Errorf("the engine recorded no grants")
	}
	inside := (after.SumMS - before.SumMS) / float64(n)
	fmt.Fprintf(os.Stderr, "c=1 mean: direct tenant call %.3f ms, through the client package %.3f ms; trivial JWT-sized lease %.3f ms; "+
		"uncached read %.3f ms, of which the grant as the engine times it %.3f ms (%d grants, warm-up included) and the rest %.3f ms\n",
		ms(direct.mean), ms(viaClient.mean), ms(jwt.mean), ms(uncached.mean), inside, n, ms(uncached.mean)-inside)
	return nil
}

type grantStats struct {
	Count int     `json:"count"`
	SumMS float64 `json:"sum_ms"`
}

func (b *bench) grantStats(ctx context.Context) (grantStats, error) {
	var st grantStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.o.pprofAddr+"/debug/grants", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
