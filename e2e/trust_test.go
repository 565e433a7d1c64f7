//go:build unix

package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestPolicyCaseBypass checks that a Vault policy that denies token/admin and
// roles/admin cannot be escaped by spelling the name in another case: Vault matches
// policies against the path as sent, so the engine must refuse every spelling but the
// canonical one instead of folding it into the denied name.
func TestPolicyCaseBypass(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	c := e.client
	e.configure()
	e.writeRole("admin", map[string]any{"scopes": "read,write", "ttl": "5m"})
	e.writeRole("app", map[string]any{"scopes": "read"})

	const policy = `
path "cyberark/token/*" { capabilities = ["read"] }
path "cyberark/roles/*" { capabilities = ["create", "update", "read"] }
path "cyberark/token/admin" { capabilities = ["deny"] }
path "cyberark/roles/admin" { capabilities = ["deny"] }
`
	if err := c.Sys().PutPolicyWithContext(e.ctx, "no-admin", policy); err != nil {
		t.Fatalf("writing the policy: %v", err)
	}
	created, err := c.Auth().Token().CreateWithContext(e.ctx, &api.TokenCreateRequest{
		Policies: []string{"no-admin"},
		TTL:      "1h",
	})
	if err != nil || created == nil || created.Auth == nil {
		t.Fatalf("creating the policy's token: %v", err)
	}
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"the no-admin policy's Vault token", created.Auth.ClientToken}}
	})
	limited := newClient(t, e.vault.addr, created.Auth.ClientToken)

	// What the policy allows works.
	e.readTokenAs(limited, "token/app", nil)

	roleBefore := readRole(t, e, "admin")
	before := e.tenant.emu.Stats()

	_, err = limited.Logical().ReadWithContext(e.ctx, mountPath+"/token/admin")
	if re := responseError(t, err); re.StatusCode != http.StatusForbidden || !strings.Contains(strings.Join(re.Errors, " "), "permission denied") {
		t.Errorf("token/admin with the policy's token: %d %q, want 403 permission denied", re.StatusCode, re.Errors)
	}
	// The engine refuses other spellings whoever asks: the policy's token, which no deny
	// rule matches, and root, whose lease would otherwise live under a path that a
	// revocation by the canonical prefix misses.
	for _, tc := range []struct {
		who  string
		c    *api.Client
		name string
	}{
		{"the policy's token", limited, "ADMIN"},
		{"the policy's token", limited, "Admin"},
		{"root", c, "ADMIN"},
	} {
		s, err := tc.c.Logical().ReadWithContext(e.ctx, mountPath+"/token/"+tc.name)
		if err == nil {
			tok := ""
			if s != nil {
				tok, _ = s.Data["access_token"].(string)
			}
			t.Errorf("token/%s read by %s returned a secret (access token length %d); want a 400", tc.name, tc.who, len(tok))
			continue
		}
		if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "lower-case") {
			t.Errorf("token/%s read by %s: %d %q, want a 400 saying the name must be lower-case", tc.name, tc.who, re.StatusCode, re.Errors)
		}
	}

	_, err = limited.Logical().WriteWithContext(e.ctx, mountPath+"/roles/Admin", map[string]any{
		"scopes": "write", "ttl": "1m", "app_id": otherAppID,
	})
	if err == nil {
		t.Error("roles/Admin write with the policy's token was accepted; want a 400")
	} else if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "lower-case") {
		t.Errorf("roles/Admin write with the policy's token: %d %q, want a 400 saying the name must be lower-case", re.StatusCode, re.Errors)
	}
	if got := readRole(t, e, "admin"); !reflect.DeepEqual(got, roleBefore) {
		t.Errorf("a refused write of roles/Admin changed role admin:\n got  %v\n want %v", got, roleBefore)
	}
	list, err := c.Logical().ListWithContext(e.ctx, mountPath+"/roles")
	if err != nil || list == nil {
		t.Fatalf("listing roles: %v", err)
	}
	if got := list.Data["keys"]; !reflect.DeepEqual(got, []any{"admin", "app"}) {
		t.Errorf("role list = %v, want [admin app]", got)
	}

	if after := e.tenant.emu.Stats(); after.TokenRequests != before.TokenRequests || after.Grants != before.Grants {
		t.Errorf("the refused reads cost %d token requests and %d grants at the tenant, want none",
			after.TokenRequests-before.TokenRequests, after.Grants-before.Grants)
	}

	// Leases live under the canonical spelling only, so revoking by that prefix, as
	// "vault lease revoke -prefix cyberark/token/admin" does, ends them all.
	sec := e.readToken("token/admin", nil)
	if !strings.HasPrefix(sec.LeaseID, mountPath+"/token/admin/") {
		t.Errorf("lease %q is not under %s/token/admin/", sec.LeaseID, mountPath)
	}
	if err := c.Sys().RevokePrefixWithContext(e.ctx, mountPath+"/token/admin"); err != nil {
		t.Fatalf("sys/leases/revoke-prefix: %v", err)
	}
	_, err = c.Sys().LookupWithContext(e.ctx, sec.LeaseID)
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "invalid lease") {
		t.Errorf("lookup after revoke-prefix: %d %q, want 400 invalid lease", re.StatusCode, re.Errors)
	}
	if !e.tenant.emu.Revoked(accessToken(t, sec)) {
		t.Error("revoke-prefix did not revoke the token at the tenant")
	}
}

// TestEndpointChangeNeedsSecret checks that a config update which moves where the stored
// secret or the tokens go must carry the secret again: otherwise anyone allowed to write
// the config, but not to read the secret, could point the engine at a server of theirs
// and collect it. A capture server stands in for that server.
func TestEndpointChangeNeedsSecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	c := e.client
	e.configure()
	capture := startCapture(t)
	e.guard.addSecrets(capture.secrets)
	stored := readConfig(t, e)
	// Whatever reaches the capture server, the stored secret must never be part of it.
	noStoredSecret := func(when string) {
		t.Helper()
		for i, r := range capture.requests() {
			for _, form := range secretForms(clientID, e.tenant.secret) {
				if strings.Contains(r.text(), form.value) {
					t.Errorf("%s: capture request #%d (%s %s) holds the stored secret, %s", when, i+1, r.method, r.path, form.label)
				}
			}
		}
	}

	for _, tc := range []struct {
		name string
		data map[string]any
	}{
		{"tenant_url", map[string]any{"tenant_url": capture.url}},
		// What a writer who wants the secret would send: the verification grant would
		// then reach the capture server with the stored credentials.
		{"tenant_url and ca_cert", map[string]any{"tenant_url": capture.url, "ca_cert": capture.caPEM}},
		{"tenant_url without verification", map[string]any{"tenant_url": capture.url, "verify_connection": false}},
		{"token_url", map[string]any{"token_url": capture.url + "/oauth2/token/x"}},
		{"revoke_url", map[string]any{"revoke_url": capture.url}},
		{"client_id", map[string]any{"client_id": "svc-other@e2e.cyberark.cloud"}},
		{"client_auth", map[string]any{"client_auth": "post"}},
		{"ca_cert", map[string]any{"ca_cert": capture.caPEM}},
		{"app_id", map[string]any{"app_id": otherAppID}},
	} {
		_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", tc.data)
		if err == nil {
			t.Errorf("a config update of %s without client_secret was accepted; want a 400", tc.name)
		} else if re := responseError(t, err); re.StatusCode != http.StatusBadRequest ||
			!strings.Contains(strings.Join(re.Errors, " "), "client_secret") || !strings.Contains(strings.Join(re.Errors, " "), "again") {
			t.Errorf("a config update of %s without client_secret: %d %q, want a 400 saying client_secret must be given again", tc.name, re.StatusCode, re.Errors)
		}
		if n := len(capture.requests()); n != 0 {
			t.Errorf("after the update of %s the capture server has received %d requests, want none", tc.name, n)
			noStoredSecret("after the update of " + tc.name)
			t.FailNow()
		}
		if got := readConfig(t, e); !reflect.DeepEqual(got, stored) {
			t.Errorf("a refused update of %s changed the stored config:\n got  %v\n want %v", tc.name, got, stored)
		}
	}

	// The stored config still works, with the stored secret.
	e.readToken("token", nil)
	if e.tenant.lastTokenRequest(t).Header.Get("Authorization") != e.tenant.basicCredentials() {
		t.Error("after the refused updates the engine no longer sends the stored credentials")
	}

	// With the secret in the same write the move is the writer's own secret's business.
	newSecret := "Capture:%-" + randomHex(t, 16)
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"the secret written with the capture server's URL", newSecret}}
	})
	_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{
		"tenant_url":        capture.url,
		"ca_cert":           capture.caPEM,
		"client_secret":     newSecret,
		"verify_connection": false,
	})
	if err != nil {
		t.Fatalf("a config update of tenant_url with client_secret: %v", err)
	}
	if got := readConfig(t, e)["tenant_url"]; got != capture.url {
		t.Errorf("after the update tenant_url = %v, want the capture server's %s", got, capture.url)
	}
	sec, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	if err != nil || sec == nil {
		t.Fatalf("reading token from the capture server: %v", err)
	}
	if got := accessToken(t, sec); got != capture.token {
		t.Errorf("the token read returned an access token (length %d, sha256 %s) that is not the capture server's", len(got), shortHash(got))
	}
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(clientID+":"+newSecret))
	reqs := capture.requests()
	sentNew := false
	for _, r := range reqs {
		if r.header.Get("Authorization") == wantAuth {
			sentNew = true
		}
	}
	if !sentNew {
		t.Errorf("the capture server received %d requests, none with the newly written credentials", len(reqs))
	}
	noStoredSecret("after the token read")
}

// TestErrorsVisibleAtInfoLevel runs Vault at -log-level=info, as production does, and
// checks that the plugin's errors reach its log at their own level: Vault re-emits a
// plugin's stderr lines that are JSON at their level and demotes all others to DEBUG.
func TestErrorsVisibleAtInfoLevel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600, withLogLevel("info"))
	c := e.client

	wrong := "Wrong:%-" + randomHex(t, 8)
	e.guard.addSecrets(func() []namedSecret { return []namedSecret{{"a refused client secret", wrong}} })
	data := e.tenant.configData()
	data["client_secret"] = wrong
	data["verify_connection"] = false
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing the config without verification: %v", err)
	}
	_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest {
		t.Errorf("token read with a refused secret: %d %q, want 400", re.StatusCode, re.Errors)
	}
	waitForLogLine(t, e, "[ERROR]", "token request failed")

	// A revocation the tenant refuses ends the lease, and says so above info level.
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"client_secret": e.tenant.secret}); err != nil {
		t.Fatalf("writing the right secret: %v", err)
	}
	sec := e.readToken("token", nil)
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Times: 1, Status: http.StatusBadRequest})
	if err := c.Sys().RevokeWithContext(e.ctx, sec.LeaseID); err != nil {
		t.Fatalf("sys/leases/revoke: %v", err)
	}
	if st := e.tenant.emu.Stats(); st.FaultsServed != 1 {
		t.Errorf("the tenant served %d faults, want the one refused revocation", st.FaultsServed)
	}
	waitForLogLine(t, e, "[WARN]", "revoke")

	// The level took: nothing below info was written, so the lines above were not
	// there merely because everything is.
	if strings.Contains(e.vault.logText(t), "[DEBUG]") {
		t.Error("the Vault log holds [DEBUG] lines at -log-level=info")
	}
}

// TestRefusedReadIsOneTenantCall reads a token with credentials the tenant refuses,
// through a Vault client with vault/api's default retries: a refusal is the caller's
// to fix, so it must come back as a 400, which the client does not retry, and cost the
// tenant one login attempt, not one per retry.
func TestRefusedReadIsOneTenantCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)

	wrong := "Wrong:%-" + randomHex(t, 8)
	e.guard.addSecrets(func() []namedSecret { return []namedSecret{{"a refused client secret", wrong}} })
	data := e.tenant.configData()
	data["client_secret"] = wrong
	data["verify_connection"] = false
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing the config without verification: %v", err)
	}

	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		t.Fatalf("vault/api default config: %v", cfg.Error)
	}
	if cfg.MaxRetries < 1 {
		t.Fatalf("vault/api's default MaxRetries is %d here (VAULT_MAX_RETRIES?); the test needs the retrying default", cfg.MaxRetries)
	}
	cfg.Address = e.vault.addr
	retrying, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("vault client: %v", err)
	}
	retrying.SetToken(e.vault.token)
	retrying.ClearNamespace()

	before := e.tenant.emu.Stats()
	_, err = retrying.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	re := responseError(t, err)
	msg := strings.Join(re.Errors, " ")
	if re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, "access_denied") {
		t.Errorf("token read with a refused secret: %d %q, want a 400 quoting the tenant's access_denied", re.StatusCode, msg)
	}
	after := e.tenant.emu.Stats()
	if got := after.TokenRequests - before.TokenRequests; got != 1 {
		t.Errorf("one refused read (vault/api MaxRetries %d) cost %d token requests at the tenant, want 1", cfg.MaxRetries, got)
	}
	if after.Grants != before.Grants {
		t.Errorf("a refused read made %d grants", after.Grants-before.Grants)
	}
}

// waitForLogLine waits for a line of the Vault log at level (as Vault writes it, e.g.
// "[ERROR]") from the plugin, whose name is in the logger's, that contains text.
// Plugin lines arrive through go-plugin's relay, so they may lag the response.
func waitForLogLine(t *testing.T, e *env, level, text string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		sc := bufio.NewScanner(strings.NewReader(e.vault.logText(t)))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, level) && strings.Contains(line, pluginName) && strings.Contains(line, text) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("the Vault log has no %s line from %s containing %q", level, pluginName, text)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readRole(t testing.TB, e *env, name string) map[string]any {
	t.Helper()
	s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/roles/"+name)
	if err != nil || s == nil {
		t.Fatalf("reading role %s: %v", name, err)
	}
	return s.Data
}

// capture is a loopback HTTPS server that stands in for a server an attacker runs: it
// records every request and answers each with a token.
type capture struct {
	url   string
	caPEM string
	token string

	mu   sync.Mutex
	reqs []capturedRequest
}

type capturedRequest struct {
	method, path, rawQuery string
	header                 http.Header
	body                   []byte
}

// text is everything the request carried, with Basic credentials also decoded, for
// substring checks.
func (r capturedRequest) text() string {
	var b strings.Builder
	b.WriteString(r.method + " " + r.path + "?" + r.rawQuery + "\n")
	for k, vs := range r.header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
			if scheme, rest, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Basic") {
				if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest)); err == nil {
					b.WriteString("decoded: " + string(raw) + "\n")
				}
			}
		}
	}
	b.Write(r.body)
	return b.String()
}

func startCapture(t *testing.T) *capture {
	t.Helper()
	cp := &capture{token: "capture." + randomHex(t, 24) + "." + randomHex(t, 24)}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		cp.mu.Lock()
		cp.reqs = append(cp.reqs, capturedRequest{
			method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery,
			header: r.Header.Clone(), body: body,
		})
		cp.mu.Unlock()
		form, _ := url.ParseQuery(string(body))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": cp.token,
			"token_type":   "Bearer",
			"expires_in":   3600,
			"scope":        form.Get("scope"),
		})
	}))
	t.Cleanup(srv.Close)
	cp.url = srv.URL
	cp.caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	return cp
}

func (cp *capture) requests() []capturedRequest {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]capturedRequest(nil), cp.reqs...)
}

// secrets is for the log guard: the token the capture server hands out.
func (cp *capture) secrets() []namedSecret {
	return []namedSecret{{"the capture server's access token", cp.token}}
}
