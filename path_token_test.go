package cyberark

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/emulator"
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
	// 3600s token: margin 60s, and the lease is cut to whole seconds.
	if s.TTL < 3538*time.Second || s.TTL > 3540*time.Second || s.TTL%time.Second != 0 {
		t.Errorf("lease TTL = %s, want 3540s less any elapsed whole second", s.TTL)
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
			if !tc.err && got > tc.tok.Expiry.Sub(now) {
				t.Errorf("lease %s outlives the token (%s left)", got, tc.tok.Expiry.Sub(now))
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

	reqs := e.emu.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
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
		{"oauth error", emulator.Fault{Status: 400, Body: `{"error":"access_denied","error_description":"user not allowed access to app"}`}, 502, "access_denied: user not allowed access to app"},
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
	if err == nil || !strings.Contains(err.Error(), "Client.Timeout exceeded") {
		t.Fatalf("err = %v, want the client timeout", err)
	}
	if elapsed >= 10*time.Second {
		t.Errorf("read took %s: the 1s request_timeout did not apply", elapsed)
	}
}
