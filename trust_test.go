package cyberark

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestRotationScopeNeverAskedForWorkloads: every way the adversarial review found to
// ask for the rotation scope for a workload is a 400 that says why, and nothing is
// stored: the config's scopes, a role's scopes or allowed_scopes (in any case), a
// reader's scope, and a role stored before the guardrails.
func TestRotationScopeNeverAskedForWorkloads(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil) // scopes=read, rotation_scopes=rotate
	refused := func(op logical.Operation, path string, data map[string]any, field string) {
		t.Helper()
		resp, err := e.request(t, op, path, data)
		assertBadRequest(t, resp, err, field)
		if !strings.Contains(resp.Error().Error(), "is a rotation, management or denied scope") {
			t.Errorf("%s %v: %v, want it to say it is a rotation scope", path, data, resp.Error())
		}
	}
	refused(logical.UpdateOperation, "config", map[string]any{"scopes": "read,rotate"}, "scopes")
	refused(logical.UpdateOperation, "config", map[string]any{"rotation_scopes": "read"}, "scopes")
	refused(logical.CreateOperation, "roles/team-x", map[string]any{"scopes": "rotate"}, "scopes")
	refused(logical.CreateOperation, "roles/team-x", map[string]any{"scopes": "ROTATE"}, "scopes")
	refused(logical.CreateOperation, "roles/team-x", map[string]any{"scopes": "read", "allowed_scopes": "read,rotate"}, "allowed_scopes")
	if entry, err := e.storage.Get(t.Context(), rolePrefix+"team-x"); err != nil || entry != nil {
		t.Fatalf("a refused role was stored: %v", err)
	}
	if cfg := e.stored(t); strings.Join(cfg.Scopes, " ") != "read" || strings.Join(cfg.RotationScopes, " ") != rotateScope {
		t.Errorf("a refused config write changed scopes to %v, rotation_scopes to %v", cfg.Scopes, cfg.RotationScopes)
	}

	// A reader narrowing to the rotation scope, on a role that allows "read" only and
	// on the config's token path.
	e.mustRequest(t, logical.CreateOperation, "roles/ok", map[string]any{"scopes": "read"})
	refused(logical.ReadOperation, "token/ok", map[string]any{"scope": "rotate"}, "scope")
	refused(logical.ReadOperation, "token", map[string]any{"scope": "Rotate"}, "scope")

	// A role stored before the guardrails existed (or before rotation_scopes was set).
	entry, err := logical.StorageEntryJSON(rolePrefix+"legacy", &roleEntry{Scopes: []string{"rotate"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Put(t.Context(), entry); err != nil {
		t.Fatal(err)
	}
	e.b.cache.resetRole("legacy")
	refused(logical.ReadOperation, "token/legacy", nil, "scopes")
	if n := e.emu.Stats().Grants; n > 0 {
		t.Logf("%d grants in all (config writes verify)", n)
	}
}

// TestRotationNeedsWorkloadScopes: with rotation_scopes set, a config without scopes is
// refused (a grant without scope gets the tenant's default, which may be "all"), and a
// stored config like that is refused at the read.
func TestRotationNeedsWorkloadScopes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["rotation_scopes"] = rotateScope
	resp, err := e.request(t, logical.CreateOperation, "config", data)
	assertBadRequest(t, resp, err, "scopes")

	e.configure(t) // no rotation: no scopes is allowed
	cfg := e.stored(t)
	cfg.RotationScopes = []string{rotateScope} // as an earlier release could store it
	entry, _ := logical.StorageEntryJSON(configPath, cfg)
	if err := e.storage.Put(t.Context(), entry); err != nil {
		t.Fatal(err)
	}
	e.b.cache.resetClient(defaultClient)
	resp, err = e.request(t, logical.ReadOperation, "token", nil)
	assertBadRequest(t, resp, err, "scopes")
}

// TestGrantedScopeIsChecked: a tenant that widens the grant. A rotation scope granted
// is refused and revoked whatever verify_scope says; another scope beyond the ask is
// refused and revoked under enforce, handed out with a warning under warn. Reused and
// lease-free tokens are checked the same way, and a refused one never enters the cache.
func TestGrantedScopeIsChecked(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, verify string
		widen        []string
		in           string
		handedOut    bool
		why          string
	}{
		{"rotation scope, enforce", "", []string{rotateScope}, "", false, "protected scope"},
		{"rotation scope, warn", "warn", []string{rotateScope}, "", false, "protected scope"},
		{"rotation scope in the answer only", "warn", []string{rotateScope}, emulator.WidenInAnswer, false, "protected scope"},
		{"denied scope all, warn", "warn", []string{"all"}, "", false, "protected scope"},
		{"another scope, enforce", "", []string{"admin"}, "", false, "beyond those asked"},
		{"another scope, warn", "warn", []string{"admin"}, "", true, "beyond those asked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			if tc.verify != "" {
				e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"verify_scope": tc.verify})
			}
			e.mustRequest(t, logical.CreateOperation, "roles/plain", map[string]any{"scopes": "read"})
			e.mustRequest(t, logical.CreateOperation, "roles/free", map[string]any{"scopes": "read", "token_reuse": true, "lease_free": true})
			if err := e.emu.SetTokenQuirks(testAppID, emulator.TokenQuirks{WidenScope: tc.widen, WidenScopeIn: tc.in}); err != nil {
				t.Fatal(err)
			}
			for _, path := range []string{"token", "token/plain", "token/free", "token/free"} {
				before := len(e.emu.Issued())
				resp, err := e.request(t, logical.ReadOperation, path, nil)
				issued := e.emu.Issued()
				switch {
				case tc.handedOut:
					if err != nil || resp.IsError() || len(resp.Warnings) == 0 || !strings.Contains(strings.Join(resp.Warnings, " "), tc.why) {
						t.Errorf("%s: (%v, %v), want the token with a warning naming %q", path, resp, err, tc.why)
					}
				case err == nil || errorCode(err) != "409" || !strings.Contains(err.Error(), tc.why):
					t.Errorf("%s: (%v, %v), want a 409 naming %q", path, resp, err, tc.why)
				case len(issued) == before:
					t.Errorf("%s: no grant was made (a refused token must not be cached)", path)
				case !e.emu.Revoked(issued[len(issued)-1]):
					t.Errorf("%s: the refused token was not revoked at the tenant", path)
				}
			}
		})
	}
}

// TestTokensAreCheckedBeforeTheyLeave: every way the tenant can hand out a token the
// engine must not pass on, under verify_tokens=auto (the default) and enforce; each
// refused token is revoked and never reaches a reader.
func TestTokensAreCheckedBeforeTheyLeave(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		quirks emulator.TokenQuirks
		fault  *emulator.Fault
		mode   string
		// ok: handed out; warn: with a warning that holds it; else refused naming it.
		ok   bool
		want string
	}{
		{name: "a good token", ok: true},
		{name: "issuer without its trailing slash", quirks: emulator.TokenQuirks{IssuerNoTrailingSlash: true}, ok: true},
		{name: "unknown key, its own kid", quirks: emulator.TokenQuirks{UnknownKey: emulator.UnknownKeyOwnKid}, want: "signature"},
		{name: "unknown key, the real kid", quirks: emulator.TokenQuirks{UnknownKey: emulator.UnknownKeyRealKid}, want: "signature"},
		{name: "another issuer", quirks: emulator.TokenQuirks{Issuer: "https://evil.example/VaultApp/"}, want: "iss"},
		{name: "another audience", quirks: emulator.TokenQuirks{Audience: "someone-else"}, want: "aud"},
		{name: "another subject", quirks: emulator.TokenQuirks{Subject: "0b9b1f8e-1111-2222-3333-444455556666"}, want: "sub"},
		{name: "exp off expires_in", quirks: emulator.TokenQuirks{ExpOffset: 3600}, want: "exp"},
		{name: "rotation scope in the claim only", quirks: emulator.TokenQuirks{WidenScope: []string{rotateScope}, WidenScopeIn: emulator.WidenInClaim}, want: "protected scope"},
		{name: "wider scope in the claim only", quirks: emulator.TokenQuirks{WidenScope: []string{"admin"}, WidenScopeIn: emulator.WidenInClaim}, want: "scope claim"},
		{name: "opaque token, auto", quirks: emulator.TokenQuirks{OpaqueToken: true}, ok: true},
		{name: "opaque token, enforce", quirks: emulator.TokenQuirks{OpaqueToken: true}, mode: verifyTokensEnforce, want: "not a JWT"},
		{name: "keys not found, auto", fault: &emulator.Fault{Endpoint: "keys", Status: 404}, ok: true, want: "signature was not checked"},
		{name: "keys not found, enforce", fault: &emulator.Fault{Endpoint: "keys", Status: 404}, mode: verifyTokensEnforce, want: "signature"},
		{name: "off checks no claim", quirks: emulator.TokenQuirks{Audience: "someone-else"}, mode: verifyTokensOff, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			if tc.mode != "" {
				e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"verify_tokens": tc.mode})
			}
			e.b.keyCache = newKeyCache() // fetched anew, under the fault if there is one
			if tc.fault != nil {
				e.emu.AddFaults(*tc.fault)
			}
			if err := e.emu.SetTokenQuirks(testAppID, tc.quirks); err != nil {
				t.Fatal(err)
			}
			resp, err := e.request(t, logical.ReadOperation, "token", nil)
			issued := e.emu.Issued()
			last := issued[len(issued)-1]
			switch {
			case tc.ok:
				if err != nil || resp.IsError() {
					t.Fatalf("refused: %v %v", resp, err)
				}
				if tc.want != "" && !strings.Contains(strings.Join(resp.Warnings, " "), tc.want) {
					t.Errorf("warnings %v, want one naming %q", resp.Warnings, tc.want)
				}
			case err == nil || errorCode(err) != "409" || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("(%v, %v), want a 409 naming %q", resp, err, tc.want)
			case strings.Contains(err.Error(), last):
				t.Error("the error quotes the token")
			case !e.emu.Revoked(last):
				t.Error("the refused token was not revoked at the tenant")
			}
		})
	}
}

// TestTokenReadTellsWhatItGot: a read returns the token's SHA-256 and its JWT claims,
// and the config pins the service user's sub at its verified write.
func TestTokenReadTellsWhatItGot(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	resp := e.mustRequest(t, logical.ReadOperation, "token", nil)
	tok := resp.Data["access_token"].(string)
	sum := sha256.Sum256([]byte(tok))
	if resp.Data["token_sha256"] != hex.EncodeToString(sum[:]) {
		t.Errorf("token_sha256 %v is not the token's SHA-256", resp.Data["token_sha256"])
	}
	jwt, err := client.ParseJWT(tok)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Data["sub"] != jwt.String("sub") || resp.Data["jti"] != jwt.String("jti") || resp.Data["iat"] == nil {
		t.Errorf("claims in the answer: sub %v jti %v iat %v", resp.Data["sub"], resp.Data["jti"], resp.Data["iat"])
	}
	read := e.mustRequest(t, logical.ReadOperation, "config", nil)
	if read.Data["pinned_sub"] != jwt.String("sub") || read.Data["signing_keys"] != "found" {
		t.Errorf("config read: pinned_sub %v (want the token's sub), signing_keys %v", read.Data["pinned_sub"], read.Data["signing_keys"])
	}
}

// TestNoReaderGetsATokenThatChangesThePassword: on a tenant whose ChangeUserPassword
// ignores oldPassword, and whose "all" scope allows every UserMgmt API, every way a
// role writer or a reader can ask for a token, against every way the tenant can widen
// what it grants, and under the operator's laxest settings: whatever token a read
// hands out, none can change the engine's password.
func TestNoReaderGetsATokenThatChangesThePassword(t *testing.T) {
	t.Parallel()
	quirks := []emulator.TokenQuirks{
		{},
		{WidenScope: []string{rotateScope}},
		{WidenScope: []string{rotateScope}, WidenScopeIn: emulator.WidenInClaim},
		{WidenScope: []string{rotateScope}, WidenScopeIn: emulator.WidenInAnswer},
		{WidenScope: []string{"all"}},
		{WidenScope: []string{"all"}, WidenScopeIn: emulator.WidenInClaim},
		{EmptyScopeAsAll: true},
	}
	roles := []map[string]any{
		{"scopes": "rotate"}, {"scopes": "ROTATE"}, {"scopes": "read,rotate"},
		{"scopes": "read", "allowed_scopes": "read,rotate"},
		{"scopes": "all"}, {"scopes": "read", "allowed_scopes": "read,all"},
		{"scopes": "read"}, {},
	}
	readerScopes := []any{nil, "rotate", "read", "all", "read rotate"}
	settings := []map[string]any{
		{}, {"verify_scope": "warn"}, {"verify_tokens": "off"}, {"verify_scope": "warn", "verify_tokens": "off"},
	}
	handedOut, refused := 0, 0
	for qi, q := range quirks {
		for si, set := range settings {
			e := newRotationEnv(t, func(c *emulator.Config) {
				c.IgnoreOldPassword = true
				app := &c.Apps[0]
				app.Scopes = append(app.Scopes, "all")
				app.ScopeAPIs["all"] = []string{"UserMgmt/.*"}
			})
			if len(set) > 0 {
				e.mustRequest(t, logical.UpdateOperation, "config", set)
			}
			if err := e.emu.SetTokenQuirks(testAppID, q); err != nil {
				t.Fatal(err)
			}
			for ri, role := range roles {
				name := "r" + strconv.Itoa(ri)
				if resp, err := e.request(t, logical.CreateOperation, "roles/"+name, role); err != nil || resp.IsError() {
					continue // refused at the write: a role writer cannot store it
				}
				for _, scope := range readerScopes {
					data := map[string]any{}
					if scope != nil {
						data["scope"] = scope
					}
					for _, path := range []string{"token/" + name, "token"} {
						resp, err := e.request(t, logical.ReadOperation, path, data)
						if err != nil || resp.IsError() {
							refused++
							continue
						}
						handedOut++
						tok := resp.Data["access_token"].(string)
						if changed := tryChangePassword(t, e, tok); changed {
							t.Fatalf("quirks #%d, settings #%d, role %v, scope %v, %s: a handed-out token (scope %q) changed the engine's password",
								qi, si, role, scope, path, resp.Data["scope"])
						}
					}
				}
			}
		}
	}
	t.Logf("%d tokens handed out, %d reads refused; none could change the password", handedOut, refused)
	if handedOut == 0 {
		t.Error("no read succeeded: the test shows nothing")
	}
}

// tryChangePassword calls ChangeUserPassword with a reader's token, as a workload that
// got it would, and says whether the tenant's password changed.
func tryChangePassword(t *testing.T, e *testEnv, token string) bool {
	t.Helper()
	body := `{"oldPassword":"a-guess","newPassword":"Attacker-Chosen-123"}`
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/UserMgmt/ChangeUserPassword", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(e.caPEM))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return e.emu.ClientSecretIs(testClientID, "Attacker-Chosen-123")
}

// BenchmarkTokenCheck is the cost of the checks of one granted token (keys cached):
// the part of an uncached read that verify_tokens adds (BenchmarkTokenRead shows the
// whole read).
func BenchmarkTokenCheck(b *testing.B) {
	e := newTestEnv(b)
	e.configure(b)
	tok := e.mustRequest(b, logical.ReadOperation, "token", nil)
	v, err := e.b.cache.view(b.Context(), e.storage, "", "", "")
	if err != nil {
		b.Fatal(err)
	}
	ct := &client.Token{AccessToken: tok.Data["access_token"].(string), ExpiresIn: 3600, Scope: tok.Data["scope"].(string)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.b.verifyToken(b.Context(), v, nil, ct); err != nil {
			b.Fatal(err)
		}
	}
}

// TestKeyFetchOutlivesItsFirstReader: the signing keys are fetched once for every
// reader and the result kept for a minute, so the reader whose request started the
// fetch must not end it. Fetched with that reader's context, a disconnected reader
// left "context canceled" as the key set, and every read for a minute went unchecked
// (auto) or was refused (enforce).
func TestKeyFetchOutlivesItsFirstReader(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	v, err := e.b.cache.view(t.Context(), e.storage, "", "", "")
	if err != nil || v.client == nil {
		t.Fatalf("view: %v", err)
	}
	e.b.keyCache = newKeyCache()
	gone, cancel := context.WithCancel(t.Context())
	cancel()
	e.b.keys(gone, v.config, v.client, v.appID(""), false)
	set := e.b.keys(t.Context(), v.config, v.client, v.appID(""), false)
	if set.missing != "" || len(set.keys) == 0 {
		t.Errorf("the next reader's key set: %d keys, missing %q; want the tenant's keys", len(set.keys), set.missing)
	}
}

// TestRefusedTokenRevokedWhateverLeasesDo: a token the engine refuses is revoked
// wherever the tenant has a revocation endpoint, revoke_tokens=false included (that
// setting is about lease ends, and a refused token has no lease), and the refusal says
// so; where there is no endpoint, the refusal says the token stays valid instead of
// claiming it was revoked.
func TestRefusedTokenRevokedWhateverLeasesDo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		config  func(e *testEnv) map[string]any
		revoked bool
		says    string
	}{
		{"revoke_tokens=false", func(*testEnv) map[string]any { return map[string]any{"revoke_tokens": false} }, true, "it was revoked"},
		{"no revocation endpoint", func(e *testEnv) map[string]any {
			return map[string]any{"token_url": e.url + "/oauth2/token/" + testAppID, "client_secret": testClientSecret}
		}, false, "could not be revoked and stays valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			e.mustRequest(t, logical.UpdateOperation, "config", tc.config(e))
			if err := e.emu.SetTokenQuirks(testAppID, emulator.TokenQuirks{WidenScope: []string{rotateScope}}); err != nil {
				t.Fatal(err)
			}
			_, err := e.request(t, logical.ReadOperation, "token", nil)
			issued := e.emu.Issued()
			last := issued[len(issued)-1]
			switch {
			case err == nil || errorCode(err) != "409" || !strings.Contains(err.Error(), tc.says):
				t.Errorf("the refusal: %v; want a 409 saying %q", err, tc.says)
			case e.emu.Revoked(last) != tc.revoked:
				t.Errorf("revoked at the tenant: %v; want %v", e.emu.Revoked(last), tc.revoked)
			}
		})
	}
}
