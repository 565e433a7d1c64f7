//go:build unix

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// TestLoadUnderRace runs the plugin built with the race detector in a real Vault and
// reads 10,000 tokens from 64 goroutines, a mix of the config's token, two roles on two
// applications and a reuse role, while the config is rewritten (its scopes toggled,
// each write verified with a grant, as by default), the roles are rewritten (their
// scopes toggled), and one root rotation runs halfway through. Then:
//   - no read failed: none is expected, rotation and rewrites included;
//   - the race detector reported nothing (its reports go to the plugin's stderr, which
//     Vault copies to its log);
//   - no lease outlives its token, and each ends the documented safety margin before it;
//   - every token is one the tenant issued, by the application its path names, with
//     the scopes its role (or the config) held during the read: a read that starts
//     after a write has finished sees what the write set.
func TestLoadUnderRace(t *testing.T) {
	t.Parallel()
	const (
		reads   = 10000
		readers = 64
		// Tokens live 10 minutes, longer than the test, so no lease ends during it.
		expiresIn = 600
		// Pauses between rewrites: a few dozen of each while the reads run.
		configEvery = 200 * time.Millisecond
		roleEvery   = 50 * time.Millisecond
		loadTimeout = 10 * time.Minute
	)
	e := newEnv(t, expiresIn, withPluginVersion(versionRace))
	e.configure()
	if m := e.vault.mountInfo(t, mountPath); m.RunningVersion != versionRace {
		t.Fatalf("the mount runs %s, want the race build %s", m.RunningVersion, versionRace)
	}

	// What each path reads, and the scope sets its writer toggles between.
	type target struct {
		path, app string
		role      string // "" for the config's token
		data      map[string]any
		scopes    [2]string
		hist      *scopeHistory
	}
	targets := []*target{
		{path: "token", app: appID, scopes: [2]string{"read write", "read"}},
		{path: "token/alpha", app: appID, role: "alpha", data: map[string]any{}, scopes: [2]string{"read", "read write"}},
		{path: "token/beta", app: otherAppID, role: "beta", data: map[string]any{"app_id": otherAppID}, scopes: [2]string{"write", "read write"}},
		{path: "token/shared", app: appID, role: "shared", data: map[string]any{"token_reuse": true}, scopes: [2]string{"write", "read"}},
	}
	// The load has a time limit of its own, longer than other tests': the race build is
	// slow, and the test reports how long the reads took rather than fail on time alone.
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	writeTarget := func(tg *target, scopes string) error {
		if tg.role == "" {
			_, err := e.client.Logical().WriteWithContext(ctx, mountPath+"/config", map[string]any{"scopes": strings.Fields(scopes)})
			return err
		}
		data := map[string]any{"scopes": strings.Fields(scopes)}
		for k, v := range tg.data {
			data[k] = v
		}
		_, err := e.client.Logical().WriteWithContext(ctx, mountPath+"/roles/"+tg.role, data)
		return err
	}
	for _, tg := range targets {
		tg.hist = &scopeHistory{}
		i := tg.hist.begin(tg.scopes[0])
		if err := writeTarget(tg, tg.scopes[0]); err != nil {
			t.Fatalf("writing %s: %v", tg.path, err)
		}
		tg.hist.finish(i)
	}

	// A client for the load, with a connection per reader.
	c := newClient(t, e.vault.addr, e.vault.token, func(cfg *api.Config) {
		if tr, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
			tr.MaxIdleConnsPerHost = readers
		}
	})

	var (
		next      atomic.Int64
		done      = make(chan struct{})
		records   = make([]readRecord, reads)
		writeErrs []string
		writesMu  sync.Mutex
		writes    = map[string]int{}
		rotated   = make(chan time.Duration, 1)
	)
	writeFailed := func(what string, err error) {
		writesMu.Lock()
		defer writesMu.Unlock()
		writeErrs = append(writeErrs, fmt.Sprintf("%s: %s", what, shortErr(err)))
	}
	rewrite := func(tg *target, n int) {
		scopes := tg.scopes[n%2]
		i := tg.hist.begin(scopes)
		if err := writeTarget(tg, scopes); err != nil {
			writeFailed("rewriting "+tg.path, err)
			return
		}
		tg.hist.finish(i)
		writesMu.Lock()
		writes[tg.path]++
		writesMu.Unlock()
	}
	var wg sync.WaitGroup
	// The config's writer and the roles' writer.
	wg.Add(2)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case <-time.After(configEvery):
			}
			rewrite(targets[0], n)
		}
	}()
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case <-time.After(roleEvery):
			}
			tg := targets[1+n%3]
			rewrite(tg, n/3+1)
		}
	}()

	start := time.Now()
	var readersWG sync.WaitGroup
	for range readers {
		readersWG.Add(1)
		go func() {
			defer readersWG.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= reads {
					return
				}
				if i == reads/2 {
					// Halfway: one rotation of the client secret, beside the reads.
					wg.Add(1)
					go func() {
						defer wg.Done()
						rs := time.Now()
						if _, err := e.rotateRoot(ctx); err != nil {
							writeFailed("config/rotate-root", err)
						}
						rotated <- time.Since(rs)
					}()
				}
				tg := targets[i%len(targets)]
				r := &records[i]
				r.target = i % len(targets)
				r.start = time.Now()
				s, err := c.Logical().ReadWithContext(ctx, mountPath+"/"+tg.path)
				r.end = time.Now()
				switch {
				case err != nil:
					r.err = shortErr(err)
				case s == nil || s.Data["access_token"] == nil:
					r.err = "no access_token in the response"
				default:
					r.token, _ = s.Data["access_token"].(string)
					r.lease = s.LeaseDuration
					r.expiresAt, _ = time.Parse(time.RFC3339, stringField(s.Data, "expires_at"))
				}
			}
		}()
	}
	readersWG.Wait()
	took := time.Since(start)
	close(done)
	wg.Wait()
	var rotation time.Duration
	select {
	case rotation = <-rotated:
	default:
		t.Error("the rotation did not run")
	}

	// Errors: none is expected.
	byMsg := map[string]int{}
	for _, r := range records {
		if r.err != "" {
			byMsg[targets[r.target].path+": "+r.err]++
		}
	}
	failed := 0
	for msg, n := range byMsg {
		failed += n
		t.Errorf("%d reads failed with %s", n, msg)
	}
	for _, msg := range writeErrs {
		t.Errorf("a write failed: %s", msg)
	}
	rotations := len(passwordChanges(e.tenant.emu.Requests()))
	t.Logf("%d reads from %d goroutines in %s: %.0f reads/s; %d failed; rewrites: %v; %d rotation (%s); %d grants at the tenant",
		reads, readers, took.Round(time.Millisecond), float64(reads)/took.Seconds(), failed, writes, rotations,
		rotation.Round(time.Millisecond), e.tenant.emu.Stats().Grants)
	if rotations != 1 {
		t.Errorf("the tenant received %d password changes, want 1", rotations)
	}

	// Every token: issued by the tenant, for the path's application, with the scopes
	// of its time, and a lease that ends before it does.
	issued := map[string]bool{}
	for _, tok := range e.tenant.emu.Issued() {
		issued[tok] = true
	}
	bad := map[string]int{}
	note := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if bad[msg]++; bad[msg] == 1 && len(bad) <= 20 {
			t.Error(msg)
		}
	}
	minSlack := time.Duration(1<<63 - 1)
	for _, r := range records {
		if r.err != "" {
			continue
		}
		tg := targets[r.target]
		if !issued[r.token] {
			note("%s returned an access token that the tenant did not issue", tg.path)
			continue
		}
		claims := parseClaims(t, r.token)
		if want := e.tenant.url + "/" + tg.app + "/"; claims.Iss != want {
			note("%s returned a token of issuer %s, want %s", tg.path, claims.Iss, want)
		}
		got := normScopes(claims.Scope)
		if allowed := tg.hist.allowed(r.start, r.end); !allowed[got] {
			note("%s returned a token with scopes %q; a read from %s to %s may see only %v",
				tg.path, got, r.start.Format("15:04:05.000"), r.end.Format("15:04:05.000"), keysOf(allowed))
		}
		// The lease ends before the token: against the expires_at the read returned,
		// from when its answer arrived, and against the token's own exp, from when the
		// read started (no grant for it can have been sent earlier).
		lease := time.Duration(r.lease) * time.Second
		if slack := r.expiresAt.Sub(r.end) - lease; slack < 0 {
			note("%s: a lease of %s outlives the token, which expires_at says ends %s after the answer", tg.path, lease, r.expiresAt.Sub(r.end))
		} else {
			minSlack = min(minSlack, slack)
		}
		if exp := time.Unix(claims.Exp, 0); r.start.Add(lease).After(exp) {
			note("%s: a lease of %s outlives the token's exp, %s after the read started", tg.path, lease, exp.Sub(r.start))
		}
		// And it ends at least the safety margin before: a tenth of the token's
		// lifetime, 1s to 60s (docs/leases.md). The JWT's exp is
		// cut to whole seconds, hence the second of tolerance.
		margin := min(max(time.Duration(claims.Exp-claims.Iat)*time.Second/10, time.Second), time.Minute)
		if exp := time.Unix(claims.Exp, 0); r.start.Add(lease + margin - time.Second).After(exp) {
			note("%s: a lease of %s leaves less than the %s margin before the token's exp, %s after the read started",
				tg.path, lease, margin, exp.Sub(r.start))
		}
	}
	for msg, n := range bad {
		if n > 1 {
			t.Errorf("%d times: %s", n, msg)
		}
	}
	t.Logf("the shortest time between a lease's end and its token's expiry: %s", minSlack.Round(time.Millisecond))
	st := e.tenant.emu.Stats()
	t.Logf("the tenant answered %d token requests (%d grants) and %d revocations on %d connections; %d TLS handshakes abandoned",
		st.TokenRequests, st.Grants, st.RevokeRequests, e.tenant.conns.Load(), e.tenant.abandoned.Load())

	// The race detector's reports, in Vault's log. Each is printed in full: the log's
	// dump on failure keeps only its end, which the report is long gone from by then.
	// A report holds stacks and addresses, never request data.
	logText := e.vault.logText(t)
	if n := strings.Count(logText, "WARNING: DATA RACE"); n != 0 {
		for _, report := range strings.Split(logText, "WARNING: DATA RACE")[1:] {
			report, _, _ = strings.Cut(report, "==================")
			t.Logf("a data race in the plugin:%s", report)
		}
		t.Errorf("the race-detector build of the plugin reported %d data races (printed above)", n)
	} else {
		t.Log("the race-detector build of the plugin reported no data race")
	}
}

// readRecord is one read of the load, as its reader saw it.
type readRecord struct {
	target     int
	start, end time.Time
	err        string
	token      string
	lease      int
	expiresAt  time.Time
}

// scopeHistory is the sequence of writes of one path's scopes, by one writer, with the
// time each began and, if it succeeded, the time it finished, both as the writer saw
// them.
type scopeHistory struct {
	mu sync.Mutex
	v  []scopeVersion
}

type scopeVersion struct {
	scopes     string
	start, end time.Time
}

func (h *scopeHistory) begin(scopes string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.v = append(h.v, scopeVersion{scopes: normScopes(scopes), start: time.Now()})
	return len(h.v) - 1
}

func (h *scopeHistory) finish(i int) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.v[i].end = now
}

// allowed are the scope sets a read from start to end may see: what the last write
// finished before the read started set, and what any later write that began before
// the read ended set. Nothing older: a read that starts after a write has finished
// must see that write.
func (h *scopeHistory) allowed(start, end time.Time) map[string]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	base := 0
	for i, v := range h.v {
		if !v.end.IsZero() && !v.end.After(start) {
			base = i
		}
	}
	out := map[string]bool{h.v[base].scopes: true}
	for _, v := range h.v[base+1:] {
		if v.start.Before(end) {
			out[v.scopes] = true
		}
	}
	return out
}

// normScopes is a scope list, space- or comma-separated, sorted and space-joined.
func normScopes(s string) string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' })
	sort.Strings(f)
	return strings.Join(slices.Compact(f), " ")
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
