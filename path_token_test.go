package cyberark

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

func TestTokenReadIsALeaseFromExpiresIn(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	before := time.Now()
	resp := e.mustRequest(t, logical.ReadOperation, "token", nil)

	issued := e.emu.Issued()
	if tok := resp.Data["access_token"]; tok != issued[len(issued)-1] {
		t.Fatal("access_token is not the token the tenant issued last")
	}
	if resp.Data["token_type"] != "Bearer" || resp.Data["expires_in"] != int64(3600) || resp.Data["scope"] != "read write admin" {
		t.Errorf("data: type=%v expires_in=%v scope=%v", resp.Data["token_type"], resp.Data["expires_in"], resp.Data["scope"])
	}
	exp, err := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
	if err != nil || !strings.HasSuffix(resp.Data["expires_at"].(string), "Z") {
		t.Fatalf("expires_at %v is not RFC 3339 UTC", resp.Data["expires_at"])
	}
	if d := exp.Sub(before); d < 3599*time.Second || d > 3601*time.Second {
		t.Errorf("expires_at is %s after the read, want 1h", d)
	}
	s := resp.Secret
	if s == nil || s.Renewable {
		t.Fatalf("secret = %+v, want a non-renewable lease", s)
	}
	// 3600s token: margin 60s, and the lease is rounded to whole seconds.
	if s.TTL < 3538*time.Second || s.TTL > 3540*time.Second || s.TTL%time.Second != 0 {
		t.Errorf("lease TTL = %s, want 3540s less the time the read took", s.TTL)
	}
	if s.InternalData["secret_type"] != secretAccessTokenType || s.InternalData["access_token"] != resp.Data["access_token"] {
		t.Error("lease internal data lacks what revocation needs")
	}
}

func TestLeaseTTLRule(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	tok := func(secs int64, age time.Duration) *client.Token {
		issued := now.Add(-age)
		return &client.Token{ExpiresIn: secs, IssuedAt: issued, Expiry: issued.Add(time.Duration(secs) * time.Second)}
	}
	cases := []struct {
		name    string
		tok     *client.Token
		role    *roleEntry
		want    time.Duration
		warning bool
		err     bool
	}{
		{"5h token: 60s margin", tok(18000, 0), nil, 17940 * time.Second, false, false},
		{"5 min token: 30s margin", tok(300, 0), nil, 270 * time.Second, false, false},
		{"6s token: 1s margin", tok(6, 0), nil, 5 * time.Second, false, false},
		{"elapsed time counts", tok(300, 1500*time.Millisecond), nil, 268 * time.Second, false, false},
		{"cut to whole seconds", tok(300, 400*time.Millisecond), nil, 269 * time.Second, false, false},
		{"2s token: floor of 1s", tok(2, 0), nil, time.Second, false, false},
		{"1s token: 1s lease", tok(1, 0), nil, time.Second, false, false},
		{"expired on arrival", tok(1, 1500*time.Millisecond), nil, 0, false, true},
		{"role ttl caps", tok(3600, 0), &roleEntry{TTL: 10 * time.Minute}, 10 * time.Minute, true, false},
		{"role ttl above token life does not extend", tok(3600, 0), &roleEntry{TTL: 5 * time.Hour}, 3540 * time.Second, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, warning, err := leaseTTL(tc.tok, now, tc.role)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if got != tc.want {
				t.Errorf("ttl = %s, want %s", got, tc.want)
			}
			if (warning != "") != tc.warning {
				t.Errorf("warning = %q, want one: %v", warning, tc.warning)
			}
			remaining := tc.tok.Expiry.Sub(now)
			if !tc.err && got > remaining {
				t.Errorf("lease %s outlives the token (%s left)", got, remaining)
			}
			if margin := leaseMargin(time.Duration(tc.tok.ExpiresIn) * time.Second); !tc.err && got > time.Second && got > remaining-margin {
				t.Errorf("lease %s eats into the %s margin (%s left)", got, margin, remaining)
			}
		})
	}
}

func TestTokenRoleTTLCapWarns(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/short", map[string]any{"scopes": "read", "ttl": "5m"})
	resp := e.mustRequest(t, logical.ReadOperation, "token/short", nil)
	if resp.Secret.TTL != 5*time.Minute {
		t.Errorf("TTL = %s, want the role's 5m", resp.Secret.TTL)
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "capped at 5m0s by the role's ttl") {
		t.Errorf("warnings = %q", resp.Warnings)
	}
}

func TestTokenRoleRequestOnTheWire(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/rw", map[string]any{"scopes": "read,write", "allowed_scopes": "read,write,admin"})
	e.mustRequest(t, logical.CreateOperation, "roles/other", map[string]any{"app_id": "OtherApp", "scopes": "other"})
	e.emu.Reset()

	e.mustRequest(t, logical.ReadOperation, "token/rw", nil)
	e.mustRequest(t, logical.ReadOperation, "token/rw", map[string]any{"scope": "admin read"})
	e.mustRequest(t, logical.ReadOperation, "token/other", nil)

	// Besides the grants: one fetch of OtherApp's signing keys (VaultApp's were fetched
	// at the config write), to check its token.
	var reqs []emulator.Request
	keyFetches := 0
	for _, r := range e.emu.Requests() {
		if r.Method == http.MethodGet && strings.HasPrefix(r.Path, "/oauth2/keys/") {
			keyFetches++
			continue
		}
		reqs = append(reqs, r)
	}
	if len(reqs) != 3 || keyFetches != 1 {
		t.Fatalf("%d grant requests and %d key fetches, want 3 and 1", len(reqs), keyFetches)
	}
	wantBodies := []string{"grant_type=client_credentials&scope=read+write", "grant_type=client_credentials&scope=admin+read", "grant_type=client_credentials&scope=other"}
	wantPaths := []string{"/oauth2/token/VaultApp", "/oauth2/token/VaultApp", "/oauth2/token/OtherApp"}
	for i, r := range reqs {
		if r.Method != http.MethodPost || r.Path != wantPaths[i] || string(r.Body) != wantBodies[i] {
			t.Errorf("request %d: %s %s %q, want POST %s %q", i, r.Method, r.Path, r.Body, wantPaths[i], wantBodies[i])
		}
		if !strings.HasPrefix(r.Header.Get("User-Agent"), "vault-plugin-secrets-cyberark/") {
			t.Errorf("request %d: User-Agent %q", i, r.Header.Get("User-Agent"))
		}
	}
}

func TestTokenScopeOutsideAllowedIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read"})
	e.emu.Reset()

	for _, path := range []string{"token", "token/r"} {
		resp, err := e.request(t, logical.ReadOperation, path, map[string]any{"scope": "read,admin"})
		assertBadRequest(t, resp, err, `"admin"`)
	}
	resp, err := e.request(t, logical.ReadOperation, "token/r", map[string]any{"bogus": "x"})
	assertBadRequest(t, resp, err, "bogus")
	resp, err = e.request(t, logical.ReadOperation, "token/missing", nil)
	assertBadRequest(t, resp, err, `"missing" does not exist`)
	if n := e.emu.Stats().TokenRequests; n != 0 {
		t.Errorf("refused reads reached the tenant %d times", n)
	}
}

func TestTokenNotConfigured(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	resp, err := e.request(t, logical.ReadOperation, "token", nil)
	assertBadRequest(t, resp, err, "write cyberark/config first")
}

func TestTokenTenantFailures(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		fault  emulator.Fault
		status int
		want   string
	}{
		// A refusal is the caller's 400, so Vault clients, which retry every 5xx, do
		// not repeat a failed login that could lock the service user.
		{"oauth error", emulator.Fault{Status: 400, Body: `{"error":"access_denied","error_description":"user not allowed access to app"}`}, 400, "access_denied: user not allowed access to app"},
		{"oauth error as 401", emulator.Fault{Status: 401, Body: `{"error":"invalid_client","error_description":"wrong clientid"}`}, 400, "invalid_client: wrong clientid"},
		{"redirect", emulator.Fault{Status: 302, Location: "https://elsewhere.example/login"}, 400, "redirect"},
		{"timeout status", emulator.Fault{Status: 408}, 502, "HTTP 408"},
		{"server error", emulator.Fault{Status: 500}, 502, "HTTP 500"},
		{"rate limited", emulator.Fault{Status: 429, RetryAfter: "7"}, 429, "Retry-After 7s"},
		{"proxy page", emulator.Fault{Status: 502}, 502, "HTTP 502"},
		{"malformed json", emulator.Fault{MalformedJSON: true}, 502, "not a JSON token response"},
		{"oversize", emulator.Fault{OversizeBytes: 2 << 20}, 502, "exceeds the 1048576 byte limit"},
		{"dropped connection", emulator.Fault{DropConnection: true}, 502, "contacting tenant"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.configure(t)
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			tc.fault.Endpoint = "token"
			e.emu.AddFaults(tc.fault)
			_, err := e.request(t, logical.ReadOperation, "token", nil)
			var coded logical.HTTPCodedError
			if !errors.As(err, &coded) || coded.Code() != tc.status {
				t.Fatalf("err = %v, want a %d coded error", err, tc.status)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestTokenSlowTenantHitsRequestTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["request_timeout"] = 1
	data["max_retries"] = 0
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Delay: 10 * time.Second})

	start := time.Now()
	_, err := e.request(t, logical.ReadOperation, "token", nil)
	elapsed := time.Since(start)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "request timeout") {
		t.Fatalf("err = %v, want the client timeout", err)
	}
	if elapsed >= 10*time.Second {
		t.Errorf("read took %s: the 1s request_timeout did not apply", elapsed)
	}
}

func TestTokenReuseConcurrentReadsShareOneGrant(t *testing.T) {
	t.Parallel()
	for _, reuse := range []bool{true, false} {
		t.Run(fmt.Sprintf("token_reuse=%v", reuse), func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.configure(t)
			e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "token_reuse": reuse})
			e.emu.Reset()
			// A slow tenant makes the reads overlap the first grant.
			e.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Delay: 300 * time.Millisecond})

			const readers = 200
			tokens := make([]string, readers)
			var wg sync.WaitGroup
			errs := make(chan error, readers)
			for i := range readers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := e.request(t, logical.ReadOperation, "token/r", nil)
					if err != nil {
						errs <- fmt.Errorf("read %d: %w", i, err)
						return
					}
					if resp.IsError() {
						errs <- fmt.Errorf("read %d: %w", i, resp.Error())
						return
					}
					tokens[i] = resp.Data["access_token"].(string)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			distinct := map[string]bool{}
			for _, tok := range tokens {
				distinct[tok] = true
			}
			grants := e.emu.Stats().Grants
			t.Logf("%d concurrent reads, token_reuse=%v: %d grants, %d distinct tokens", readers, reuse, grants, len(distinct))
			want := int64(readers)
			if reuse {
				want = 1
			}
			if grants != want || int64(len(distinct)) != want {
				t.Errorf("grants = %d, distinct tokens = %d; want %d of each", grants, len(distinct), want)
			}
		})
	}
}

func TestTokenReuseThresholdAndLease(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	clock := newFakeClock(e)
	sink := withInmemMetrics(t, e)
	e.configure(t)
	// 3600s tokens: threshold = max(5m, 0.25 x 1h) = 15m.
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "token_reuse": true, "reuse_min_fraction": 0.25})
	e.emu.Reset()

	first := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if in := first.Secret.InternalData; in["reused"] != true || in["revoke"] != false || in["access_token"] != nil {
		t.Errorf("a reused token's lease must be marked reused and not revoked, and not hold the token: reused=%v revoke=%v token kept=%v",
			in["reused"], in["revoke"], in["access_token"] != nil)
	}
	clock.Advance(40 * time.Minute)
	second := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if second.Data["access_token"] != first.Data["access_token"] {
		t.Fatal("with 20m left (above the 15m threshold) the cached token was not reused")
	}
	// 20m left, less the 60s margin; expires_in says what is left, not the original 1h.
	if second.Secret.TTL != 19*time.Minute {
		t.Errorf("lease on the reused token = %s, want 19m", second.Secret.TTL)
	}
	if second.Data["expires_in"] != int64(1200) || first.Data["expires_in"] != int64(3600) {
		t.Errorf("expires_in: first read %v, reused after 40m %v; want 3600 and 1200", first.Data["expires_in"], second.Data["expires_in"])
	}
	clock.Advance(6 * time.Minute) // 14m left: below the threshold
	third := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if third.Data["access_token"] == first.Data["access_token"] {
		t.Fatal("a token below the reuse threshold was handed out")
	}
	if g := e.emu.Stats().Grants; g != 2 {
		t.Errorf("grants = %d, want 2", g)
	}
	if hits, misses := counter(sink, "test.cyberark.reuse;client=default;result=hit"), counter(sink, "test.cyberark.reuse;client=default;result=miss"); hits != 1 || misses != 2 {
		t.Errorf("reuse metrics: hits=%d misses=%d, want 1 and 2", hits, misses)
	}
	if n := counter(sink, "test.cyberark.grant;client=default;outcome=success"); n != 3 {
		t.Errorf("grant success metric = %d, want 3 (the config's verification and two reads)", n)
	}
}

func TestTokenReuseEmptiedByWrites(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "token_reuse": true})
	e.mustRequest(t, logical.CreateOperation, "roles/other", map[string]any{"scopes": "write"})
	read := func() string {
		return e.mustRequest(t, logical.ReadOperation, "token/r", nil).Data["access_token"].(string)
	}
	a := read()
	if read() != a {
		t.Fatal("second read did not reuse the token")
	}
	e.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"ttl": "1h"})
	b := read()
	if b == a {
		t.Error("a role write did not empty the token cache")
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"request_timeout": "20s"})
	c := read()
	if c == b {
		t.Error("a config write did not empty the token cache")
	}
	e.b.Invalidate(t.Context(), "config")
	if read() == c {
		t.Error("Invalidate(config) did not empty the token cache")
	}
	e.b.Invalidate(t.Context(), "roles/other")
	d := read()
	e.b.Invalidate(t.Context(), "roles/other")
	if read() == d {
		t.Error("Invalidate(roles/...) did not empty the token cache")
	}
}

func TestTokenMetricsByOutcome(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	sink := withInmemMetrics(t, e)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Status: 429})
	_, _ = e.request(t, logical.ReadOperation, "token", nil)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Status: 400, Body: `{"error":"invalid_client"}`})
	_, _ = e.request(t, logical.ReadOperation, "token", nil)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Status: 503})
	_, _ = e.request(t, logical.ReadOperation, "token", nil)
	for name, want := range map[string]int{
		"test.cyberark.grant;client=default;outcome=success":      3, // two config writes' verifications, and one read
		"test.cyberark.grant;client=default;outcome=rate_limited": 1,
		"test.cyberark.grant;client=default;outcome=refused":      1,
		"test.cyberark.grant;client=default;outcome=tenant_error": 1,
	} {
		if got := counter(sink, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	var timed int
	for _, iv := range sink.Data() {
		iv.RLock()
		for k, s := range iv.Samples {
			if strings.HasPrefix(k, "test.cyberark.grant.duration;") {
				timed += s.Count
			}
		}
		iv.RUnlock()
	}
	if timed != 6 {
		t.Errorf("grant duration samples = %d, want one per grant, 6", timed)
	}
}

// BenchmarkTokenRead measures a token read through the backend (no Vault, no gRPC): a
// fresh grant from the emulated tenant over TLS on loopback, and a reused token served
// from memory with a lease and without one. Run with
// `go test -run '^$' -bench TokenRead .`; `make bench` measures reads through Vault.
//
// The token checks (verify_tokens) show as the difference between token_reuse=false
// and its verify_tokens=off twin; token_checks/op counts the checks a read made, which
// is 1 for an uncached read and about 0 for a reused one (checked once, at its grant).
func BenchmarkTokenRead(b *testing.B) {
	for _, mode := range []struct {
		name   string
		role   map[string]any
		config map[string]any
	}{
		{"token_reuse=false", map[string]any{"token_reuse": false}, nil},
		{"token_reuse=false,verify_tokens=off", map[string]any{"token_reuse": false}, map[string]any{"verify_tokens": "off"}},
		{"token_reuse=true", map[string]any{"token_reuse": true}, nil},
		{"token_reuse=true,lease_free=true", map[string]any{"token_reuse": true, "lease_free": true}, nil},
	} {
		b.Run(mode.name, func(b *testing.B) {
			e := newTestEnv(b)
			e.configure(b)
			if mode.config != nil {
				e.mustRequest(b, logical.UpdateOperation, "config", mode.config)
			}
			sink := withInmemMetrics(b, e)
			role := map[string]any{"scopes": "read"}
			for k, v := range mode.role {
				role[k] = v
			}
			e.mustRequest(b, logical.CreateOperation, "roles/r", role)
			e.mustRequest(b, logical.ReadOperation, "token/r", nil)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := e.request(b, logical.ReadOperation, "token/r", nil)
					if err != nil || resp.IsError() {
						b.Fatal(err, resp.Error())
					}
				}
			})
			b.StopTimer()
			checks := counter(sink, "test.cyberark.token_check;result=verified")
			b.ReportMetric(float64(checks)/float64(b.N), "token_checks/op")
		})
	}
}

func TestTokenReuseNeverHandsOutAnAlmostExpiredToken(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	clock := newFakeClock(e)
	e.configure(t)
	// Thresholds of zero still leave the margin plus a second (61s for 1h tokens).
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{
		"scopes": "read", "token_reuse": true, "reuse_min_remaining": 0, "reuse_min_fraction": 0,
	})
	first := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	clock.Advance(time.Hour - 62*time.Second)
	if again := e.mustRequest(t, logical.ReadOperation, "token/r", nil); again.Data["access_token"] != first.Data["access_token"] || again.Secret.TTL != 2*time.Second {
		t.Errorf("with 62s left the token should still serve, with a 2s lease (got %s)", again.Secret.TTL)
	}
	clock.Advance(2 * time.Second)
	if fresh := e.mustRequest(t, logical.ReadOperation, "token/r", nil); fresh.Data["access_token"] == first.Data["access_token"] {
		t.Error("with 60s left (inside the margin) the token was handed out again")
	}
}

func TestTokenRoleScopesFallBackToConfig(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read"
	e.mustRequest(t, logical.CreateOperation, "config", e.configData())
	// narrow is consistent while the config asks for no scopes...
	e.mustRequest(t, logical.CreateOperation, "roles/narrow", map[string]any{"allowed_scopes": "write"})
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"scopes": data["scopes"]})
	e.mustRequest(t, logical.CreateOperation, "roles/wide", map[string]any{"allowed_scopes": "read,write"})
	// ...and a role written now with the same settings is refused, as reads of it are.
	resp, err := e.request(t, logical.CreateOperation, "roles/narrow2", map[string]any{"allowed_scopes": "write"})
	assertBadRequest(t, resp, err, "allowed_scopes")
	if warnings := e.mustRequest(t, logical.ReadOperation, "roles/narrow", nil).Warnings; len(warnings) == 0 || !strings.Contains(warnings[0], "refused") {
		t.Errorf("the read of a role whose token reads are refused does not warn: %v", warnings)
	}
	e.emu.Reset()

	// A role with only allowed_scopes asks for the config's scopes, never for none (which
	// the tenant would answer with everything the client may have).
	if got := e.mustRequest(t, logical.ReadOperation, "token/wide", nil).Data["scope"]; got != "read" {
		t.Errorf("token/wide scope = %v, want the config's read", got)
	}
	if body := string(e.emu.Requests()[0].Body); body != "grant_type=client_credentials&scope=read" {
		t.Errorf("token/wide sent %q", body)
	}
	if got := e.mustRequest(t, logical.ReadOperation, "token/wide", map[string]any{"scope": "write"}).Data["scope"]; got != "write" {
		t.Errorf("token/wide scope=write gave %v", got)
	}
	resp, err = e.request(t, logical.ReadOperation, "token/narrow", nil)
	assertBadRequest(t, resp, err, "allowed_scopes")
}

func TestTokenRoleAppIDWithTokenURLIsABadRequest(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/other", map[string]any{"app_id": "OtherApp"})
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{
		"token_url": e.url + "/oauth2/token/" + testAppID, "client_secret": testClientSecret,
	})
	resp, err := e.request(t, logical.ReadOperation, "token/other", nil)
	assertBadRequest(t, resp, err, "app_id")
	// The role read says so, and a role written now with its own app_id is refused.
	if w := e.mustRequest(t, logical.ReadOperation, "roles/other", nil).Warnings; len(w) != 1 || !strings.HasPrefix(w[0], "app_id:") {
		t.Errorf("role read warnings = %v, want one about app_id", w)
	}
	resp, err = e.request(t, logical.CreateOperation, "roles/other2", map[string]any{"app_id": "OtherApp"})
	assertBadRequest(t, resp, err, "app_id")
}

// TestLeaseFreeReuse follows a lease-free role through one token's reuse window with
// the moves Vault Agent makes: each read names a ttl, and a read ttl+1 seconds later
// must get a newer token, while every read before that shares the first.
func TestLeaseFreeReuse(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	clock := newFakeClock(e)
	e.configure(t)
	// 3600s tokens: floor = max(5m, 0.25 x 1h, 60s margin + 1s) = 15m, so a token is
	// handed out for 45m.
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{
		"scopes": "read", "token_reuse": true, "reuse_min_fraction": 0.25, "lease_free": true,
	})
	e.emu.Reset()

	first := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if first.Secret != nil {
		t.Fatalf("a lease-free role answered with a lease (ttl %s)", first.Secret.TTL)
	}
	wantData := map[string]any{"ttl": int64(2700), "rotation_period": int64(2700), "expires_in": int64(3600), "token_type": "Bearer", "scope": "read"}
	for k, want := range wantData {
		if got := first.Data[k]; got != want {
			t.Errorf("first read: %s = %#v, want %#v", k, got, want)
		}
	}
	clock.Advance(30 * time.Minute)
	mid := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if mid.Data["access_token"] != first.Data["access_token"] {
		t.Fatal("30m into a 45m reuse window the token was not reused")
	}
	if mid.Data["ttl"] != int64(900) || mid.Data["expires_in"] != int64(1800) {
		t.Errorf("after 30m: ttl %v, expires_in %v; want 900 and 1800", mid.Data["ttl"], mid.Data["expires_in"])
	}
	// Where Agent comes back after the read above: ttl + 1 second.
	clock.Advance(901 * time.Second)
	next := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if next.Data["access_token"] == first.Data["access_token"] {
		t.Fatal("a read ttl+1s after the last one got the old token again")
	}
	if next.Data["ttl"] != int64(2700) {
		t.Errorf("the new token's ttl = %v, want 2700", next.Data["ttl"])
	}
	if g := e.emu.Stats().Grants; g != 2 {
		t.Errorf("grants = %d, want 2 (one per token)", g)
	}
}

// TestLeaseFreeTTLEdges: the ttl at the last second of reuse, the role's ttl bound, and
// thresholds that let no token be reused (a warning, and a ttl that still ends the
// reader's use before the lease margin).
func TestLeaseFreeTTLEdges(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		role     map[string]any
		advance  time.Duration
		ttl      int64
		period   int64
		warnings int
	}{
		// Default floor for 1h tokens: max(5m, 6m, 61s) = 6m.
		{"fresh", map[string]any{}, 0, 3240, 3240, 0},
		{"last second of reuse", map[string]any{}, 3240 * time.Second, 0, 3240, 0},
		{"role ttl bounds it", map[string]any{"ttl": "10m"}, 0, 600, 3240, 0},
		// Thresholds above the lifetime: a grant per read, reread a second before the
		// 60s margin.
		{"never reusable", map[string]any{"reuse_min_remaining": "2h"}, 0, 3539, 3540, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			clock := newFakeClock(e)
			e.configure(t)
			role := map[string]any{"scopes": "read", "token_reuse": true, "lease_free": true}
			for k, v := range tc.role {
				role[k] = v
			}
			e.mustRequest(t, logical.CreateOperation, "roles/r", role)
			first := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
			resp := first
			if tc.advance > 0 {
				clock.Advance(tc.advance)
				resp = e.mustRequest(t, logical.ReadOperation, "token/r", nil)
				if resp.Data["access_token"] != first.Data["access_token"] {
					t.Fatal("the token was not reused within its window")
				}
			}
			if resp.Secret != nil || resp.Data["ttl"] != tc.ttl || resp.Data["rotation_period"] != tc.period || len(resp.Warnings) != tc.warnings {
				t.Errorf("lease=%v ttl=%v rotation_period=%v warnings=%q; want no lease, %d, %d and %d warning(s)",
					resp.Secret != nil, resp.Data["ttl"], resp.Data["rotation_period"], resp.Warnings, tc.ttl, tc.period, tc.warnings)
			}
		})
	}
}

// TestLeaseFreeOnlyForReuseRoles: token (no role) and roles without lease_free keep
// their leases.
func TestLeaseFreeOnlyForReuseRoles(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/leased", map[string]any{"scopes": "read", "token_reuse": true})
	for _, path := range []string{"token", "token/leased"} {
		resp := e.mustRequest(t, logical.ReadOperation, path, nil)
		if resp.Secret == nil || resp.Secret.TTL <= 0 {
			t.Errorf("%s answered without a lease", path)
		}
		if _, ok := resp.Data["rotation_period"]; ok {
			t.Errorf("%s carries rotation_period, which would make Agent ignore its lease", path)
		}
	}
}

// TestLeaseInternalDataHoldsOnlyWhatItsEndNeeds: Vault stores a lease's internal data
// with every lease, so a lease that never revokes (a reused token) carries only what
// its renewal refusal and revocation check read, and a revoking lease what revocation
// at the tenant needs.
func TestLeaseInternalDataHoldsOnlyWhatItsEndNeeds(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"scopes": "read", "token_reuse": true})
	e.mustRequest(t, logical.CreateOperation, "roles/own", map[string]any{"scopes": "read"})
	cases := map[string][]string{
		"token/shared": {"reused", "revoke", "role", "secret_type"},
		"token/own":    {"access_token", "app_id", "client_id", "expires_at", "reused", "revoke", "revoke_endpoint", "role", "secret_type"},
	}
	for path, want := range cases {
		resp := e.mustRequest(t, logical.ReadOperation, path, nil)
		got := make([]string, 0, len(resp.Secret.InternalData))
		for k := range resp.Secret.InternalData {
			got = append(got, k)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: lease internal data has %v, want %v", path, got, want)
		}
		// The lease's end works with what it holds.
		if _, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.RevokeOperation, Secret: resp.Secret, Data: resp.Data, Storage: e.storage, MountPoint: "cyberark/",
		}); err != nil {
			t.Errorf("%s: revoking the lease: %v", path, err)
		}
	}
}

// TestLeaseFreeJustPastTheFloor: a token the cache handed out a moment before it
// crossed the reuse floor is answered with ttl 0 (read again now), not as a token that
// can never be reused, which would keep readers on it until the lease margin.
func TestLeaseFreeJustPastTheFloor(t *testing.T) {
	t.Parallel()
	now := time.Now()
	role := &roleEntry{TokenReuse: true, LeaseFree: true, ReuseMinRemaining: defaultReuseMinRemaining, ReuseMinFraction: defaultReuseMinFraction}
	tok := &client.Token{AccessToken: "x", TokenType: "Bearer", ExpiresIn: 3600}
	floor := reuseFloor(tok, role) // 6m for a 1h token
	tok.Expiry = now.Add(floor - time.Millisecond)
	ttl, period, warning, err := leaseFreeTiming(role, tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != 0 || period != 3240 || warning != "" {
		t.Errorf("ttl=%d rotation_period=%d warning=%q; want 0, 3240 and none", ttl, period, warning)
	}
}
