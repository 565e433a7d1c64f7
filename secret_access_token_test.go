package cyberark

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// revoke sends the revocation Vault's expiration manager sends when a lease ends. The
// lease's internal data makes the JSON round trip it makes through Vault's storage and
// the plugin's gRPC, which turns numbers into json.Number.
func (e *testEnv) revoke(t *testing.T, secret *logical.Secret) (*logical.Response, error) {
	t.Helper()
	return e.revokeWith(t, e.storage, secret)
}

func TestAccessTokenRenewIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read"})
	secret := e.mustRequest(t, logical.ReadOperation, "token/r", nil).Secret

	_, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.RenewOperation, Secret: secret, Storage: e.storage, MountPoint: "cyberark/",
	})
	if err == nil || !strings.Contains(err.Error(), "cannot be renewed: read cyberark/token/r again") {
		t.Errorf("renew error = %v, want one that says to read cyberark/token/r again", err)
	}
}

func TestRevokeAtTenant(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		config     map[string]any
		role       map[string]any
		wantRevoke bool
	}{
		{"default for a CyberArk tenant", nil, map[string]any{"scopes": "read"}, true},
		{"off in the config", map[string]any{"revoke_tokens": false}, map[string]any{"scopes": "read"}, false},
		{"off in the config, on for the role", map[string]any{"revoke_tokens": false}, map[string]any{"scopes": "read", "revoke_tokens": true}, true},
		{"off for the role", nil, map[string]any{"scopes": "read", "revoke_tokens": false}, false},
		{"shared token", nil, map[string]any{"scopes": "read", "token_reuse": true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.configure(t)
			if tc.config != nil {
				e.mustRequest(t, logical.UpdateOperation, "config", tc.config)
			}
			e.mustRequest(t, logical.CreateOperation, "roles/r", tc.role)
			e.emu.Reset() // forget the config's verification and its revocation
			resp := e.mustRequest(t, logical.ReadOperation, "token/r", nil)
			token := resp.Data["access_token"].(string)

			if resp, err := e.revoke(t, resp.Secret); err != nil || resp.IsError() {
				t.Fatalf("revoke: %v %v", err, resp.Error())
			}
			if got := e.emu.Revoked(token); got != tc.wantRevoke {
				t.Errorf("revoked at the tenant = %v, want %v", got, tc.wantRevoke)
			}
			if !tc.wantRevoke && e.emu.Stats().RevokeRequests != 0 {
				t.Error("the tenant got a revoke request")
			}
			if tc.wantRevoke {
				r := e.emu.Requests()
				last := r[len(r)-1]
				if last.Path != "/oauth2/revoke/"+testAppID || last.Form.Get("token") != token || last.Header.Get("Authorization") == "" {
					t.Errorf("revoke request: path %s, token sent %v, authenticated %v", last.Path, last.Form.Get("token") == token, last.Header.Get("Authorization") != "")
				}
			}
		})
	}
}

func TestRevokeDefaultsOffForForeignTokenURL(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["token_url"] = e.url + "/oauth2/token/" + testAppID
	e.mustRequest(t, logical.CreateOperation, "config", data)
	if got := e.mustRequest(t, logical.ReadOperation, "config", nil).Data["revoke_tokens"]; got != false {
		t.Errorf("revoke_tokens with token_url = %v, want false", got)
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"revoke_url": e.url + "/oauth2/revoke/" + testAppID, "client_secret": testClientSecret})
	resp := e.mustRequest(t, logical.ReadOperation, "config", nil)
	if resp.Data["revoke_tokens"] != true || resp.Data["revoke_endpoint"] != e.url+"/oauth2/revoke/"+testAppID {
		t.Errorf("with revoke_url: revoke_tokens=%v endpoint=%v", resp.Data["revoke_tokens"], resp.Data["revoke_endpoint"])
	}
	tok := e.mustRequest(t, logical.ReadOperation, "token", nil)
	if _, err := e.revoke(t, tok.Secret); err != nil {
		t.Fatal(err)
	}
	if !e.emu.Revoked(tok.Data["access_token"].(string)) {
		t.Error("token not revoked through revoke_url")
	}
}

func TestRevokeTransientFailuresRetryThenGiveUp(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	sink := withInmemMetrics(t, e)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
	resp := e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: 503})

	for attempt := 1; attempt < maxRevokeAttempts; attempt++ {
		_, err := e.revoke(t, resp.Secret)
		if err == nil || !strings.Contains(err.Error(), "HTTP 503") {
			t.Fatalf("attempt %d: err = %v, want the 503 back so Vault retries", attempt, err)
		}
	}
	if _, err := e.revoke(t, resp.Secret); err != nil {
		t.Fatalf("attempt %d: err = %v, want the lease released", maxRevokeAttempts, err)
	}
	if !strings.Contains(e.logs.String(), "giving up revoking the token") {
		t.Error("giving up was not logged")
	}
	// Vault sets no lease ID on a revocation: the lines name the lease by what it holds.
	sum := sha256.Sum256([]byte(resp.Data["access_token"].(string)))
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if !strings.Contains(line, "revoking the token at the tenant") {
			continue
		}
		for _, want := range []string{"role=", "app_id=" + testAppID, "expires_at=", "token_sha256=" + hex.EncodeToString(sum[:6])} {
			if !strings.Contains(line, want) {
				t.Errorf("revocation log line lacks %q: %s", want, line)
			}
		}
		if strings.Contains(line, "lease_id") {
			t.Errorf("revocation log line carries a lease_id, which Vault never sets there: %s", line)
		}
	}
	if got := counter(sink, "test.cyberark.revoke;outcome=retry"); got != maxRevokeAttempts-1 {
		t.Errorf("retry metric = %d", got)
	}
	if got := counter(sink, "test.cyberark.revoke;outcome=gave_up"); got != 1 {
		t.Errorf("gave_up metric = %d", got)
	}
}

func TestRevokeRefusalEndsLease(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	resp := e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: 400, Body: `{"error":"invalid_request","error_description":"missing token"}`})
	if _, err := e.revoke(t, resp.Secret); err != nil {
		t.Fatalf("a refusal must not keep the lease: %v", err)
	}
	if !strings.Contains(e.logs.String(), "missing token") {
		t.Error("the tenant's refusal was not logged")
	}
}

func TestRevokeExpiredTokenSkipsTenant(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	clock := newFakeClock(e)
	e.configure(t)
	resp := e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.emu.Reset()
	clock.Advance(2 * time.Hour)
	if _, err := e.revoke(t, resp.Secret); err != nil {
		t.Fatal(err)
	}
	if n := e.emu.Stats().RevokeRequests; n != 0 {
		t.Errorf("revoke of an expired token called the tenant %d times", n)
	}
}

func TestRevokeAfterClientChangedSkipsTenant(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		change func(e *testEnv)
	}{
		{"config deleted", func(e *testEnv) { e.mustRequest(t, logical.DeleteOperation, "config", nil) }},
		{"another client", func(e *testEnv) {
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_id": "svc-other@tenant.example", "client_secret": testClientSecret, "verify_connection": false})
		}},
		{"another tenant", func(e *testEnv) {
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"revoke_url": e.url + "/elsewhere/revoke", "client_secret": testClientSecret, "verify_connection": false})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.configure(t)
			resp := e.mustRequest(t, logical.ReadOperation, "token", nil)
			tc.change(e)
			e.emu.Reset()
			if _, err := e.revoke(t, resp.Secret); err != nil {
				t.Fatalf("revoke: %v", err)
			}
			if n := e.emu.Stats().RevokeRequests; n != 0 {
				t.Errorf("tenant got %d revoke requests", n)
			}
			if !strings.Contains(e.logs.String(), "cannot revoke the token at the tenant") {
				t.Error("skipping the revocation was not logged")
			}
		})
	}
}

func TestRevokeGivesUpLongAfterLeaseEnd(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	clock := newFakeClock(e)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
	e.mustRequest(t, logical.CreateOperation, "roles/short", map[string]any{"ttl": "5m"})
	resp := e.mustRequest(t, logical.ReadOperation, "token/short", nil)
	resp.Secret.IssueTime = clock.Now()
	e.emu.Reset()
	e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: 503})

	// The token lives another 55 minutes, but 2 minutes past the lease's end the
	// engine stops asking Vault to retry, even with no failure counted in memory.
	clock.Advance(5*time.Minute + 2*time.Minute + time.Second)
	if _, err := e.revoke(t, resp.Secret); err != nil {
		t.Fatalf("2m past the lease's end: %v, want the lease released", err)
	}
	if e.emu.Stats().RevokeRequests != 1 {
		t.Error("the revocation was not tried first")
	}
}

// TestRevokeWithoutEndpointIsPermanent: a lease whose token has nowhere to be revoked
// ends at once; retrying cannot give it an endpoint, and a stuck lease blocks
// "vault secrets disable".
func TestRevokeWithoutEndpointIsPermanent(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	sink := withInmemMetrics(t, e)
	data := e.configData()
	data["token_url"] = e.url + "/oauth2/token/" + testAppID
	data["revoke_url"] = e.url + "/oauth2/revoke/" + testAppID
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"revoke_tokens": true})
	resp := e.mustRequest(t, logical.ReadOperation, "token/r", nil)

	// A lease written before revocation needed an endpoint.
	old := *resp.Secret
	old.InternalData = map[string]any{}
	for k, v := range resp.Secret.InternalData {
		old.InternalData[k] = v
	}
	old.InternalData["revoke_endpoint"] = ""
	e.emu.Reset()
	if _, err := e.revoke(t, &old); err != nil {
		t.Fatalf("a lease without a revocation endpoint must end at the first try: %v", err)
	}
	if n := e.emu.Stats().RevokeRequests; n != 0 {
		t.Errorf("the tenant got %d revoke requests", n)
	}
	if got := counter(sink, "test.cyberark.revoke;outcome=no_endpoint"); got != 1 {
		t.Errorf("no_endpoint metric = %d", got)
	}

	// The config loses its revoke_url after the role was written: reads warn, and their
	// leases are not marked revocable.
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"revoke_url": "", "client_secret": testClientSecret})
	resp = e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	if len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "will not be revoked") {
		t.Errorf("warnings = %v, want one saying the token will not be revoked", resp.Warnings)
	}
	if resp.Secret.InternalData["revoke"] != false {
		t.Error("the lease is marked revocable without an endpoint")
	}
}
