//go:build unix

package e2e

import (
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// TestConfigRolesTokensLeases drives every path of the engine through Vault, and the
// leases of its tokens through Vault's lease API.
func TestConfigRolesTokensLeases(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	c := e.client

	// Config, verified with a grant over HTTPS against the tenant's own CA.
	e.configure()
	if st := e.tenant.emu.Stats(); st.Grants != 1 || st.TokenRequests != 1 {
		t.Fatalf("after the config write the tenant saw %d token requests and %d grants; want the one verification grant", st.TokenRequests, st.Grants)
	}
	verify := e.tenant.lastTokenRequest(t)
	if verify.Path != "/oauth2/token/"+appID {
		t.Errorf("verification grant went to %s, want /oauth2/token/%s", verify.Path, appID)
	}
	if verify.Header.Get("Authorization") != e.tenant.basicCredentials() {
		t.Error("verification grant did not carry the client's raw Basic credentials")
	}
	if got := verify.Form.Get("grant_type"); got != "client_credentials" {
		t.Errorf("grant_type = %q", got)
	}
	if got := verify.Form.Get("scope"); got != "read write" {
		t.Errorf("verification grant asked for scope %q, want the config's %q", got, "read write")
	}
	if ua := verify.Header.Get("User-Agent"); !strings.Contains(ua, versionV1) {
		t.Errorf("User-Agent %q does not name the running plugin version %s", ua, versionV1)
	}

	// A config read shows that a secret is set, never the secret.
	raw, err := c.Logical().ReadRawWithContext(e.ctx, mountPath+"/config")
	if err != nil {
		t.Fatalf("reading the config: %v", err)
	}
	body, err := io.ReadAll(raw.Body)
	raw.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range newScanner(e.tenant.secrets()).findings(body, nil) {
		t.Fatalf("the config read's response body contains %s, %s", f.secret, f.form)
	}
	cfg, err := api.ParseSecret(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing the config read: %v", err)
	}
	if _, ok := cfg.Data["client_secret"]; ok {
		t.Error("the config read has a client_secret field")
	}
	if cfg.Data["client_secret_set"] != true {
		t.Errorf("client_secret_set = %v, want true", cfg.Data["client_secret_set"])
	}
	for field, want := range map[string]string{"tenant_url": e.tenant.url, "app_id": appID, "client_id": clientID, "client_auth": "basic"} {
		if got := cfg.Data[field]; got != want {
			t.Errorf("config %s = %v, want %q", field, got, want)
		}
	}
	if got, _ := cfg.Data["ca_cert"].(string); strings.TrimSpace(got) != strings.TrimSpace(e.tenant.caPEM) {
		t.Error("config ca_cert is not the CA certificate that was written")
	}
	if got := cfg.Data["scopes"]; !reflect.DeepEqual(got, []any{"read", "write"}) {
		t.Errorf("config scopes = %v, want [read write]", got)
	}
	if got := intField(t, cfg.Data, "total_timeout"); got != 45 {
		t.Errorf("config total_timeout = %d, want the default 45", got)
	}

	// Roles: write, read, list; unknown fields are refused.
	e.writeRole("reader", map[string]any{"scopes": "read"})
	e.writeRole("writer", map[string]any{"scopes": "write", "allowed_scopes": "read,write", "ttl": "2m"})
	e.writeRole("other", map[string]any{"scopes": "read", "app_id": otherAppID})
	e.writeRole("inherit", map[string]any{"ttl": "1m"})
	role, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/roles/writer")
	if err != nil || role == nil {
		t.Fatalf("reading role writer: %v", err)
	}
	if got := intField(t, role.Data, "ttl"); got != 120 {
		t.Errorf("role ttl = %d, want 120", got)
	}
	// A role read shows what is stored and, beside it, what a token read will use and
	// where that comes from.
	for _, tc := range []struct {
		role string
		want map[string]any // nil: JSON null
	}{
		{"writer", map[string]any{
			"scopes": []any{"write"}, "allowed_scopes": []any{"read", "write"},
			"effective_scopes": []any{"write"}, "effective_allowed_scopes": []any{"read", "write"},
			"scopes_source": "role", "allowed_scopes_source": "role",
		}},
		{"reader", map[string]any{
			"scopes": []any{"read"}, "allowed_scopes": nil,
			"effective_scopes": []any{"read"}, "effective_allowed_scopes": []any{"read"},
			"scopes_source": "role", "allowed_scopes_source": "scopes",
		}},
		{"inherit", map[string]any{
			"allowed_scopes":   nil,
			"effective_scopes": []any{"read", "write"}, "effective_allowed_scopes": []any{"read", "write"},
			"scopes_source": "config", "allowed_scopes_source": "scopes",
		}},
	} {
		role, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/roles/"+tc.role)
		if err != nil || role == nil {
			t.Fatalf("reading role %s: %v", tc.role, err)
		}
		for field, want := range tc.want {
			if got, ok := role.Data[field]; !ok || !reflect.DeepEqual(got, want) {
				t.Errorf("role %s %s = %v (present: %t), want %v", tc.role, field, got, ok, want)
			}
		}
	}
	list, err := c.Logical().ListWithContext(e.ctx, mountPath+"/roles")
	if err != nil || list == nil {
		t.Fatalf("listing roles: %v", err)
	}
	if got := list.Data["keys"]; !reflect.DeepEqual(got, []any{"inherit", "other", "reader", "writer"}) {
		t.Errorf("role list = %v, want [inherit other reader writer]", got)
	}
	_, err = c.Logical().WriteWithContext(e.ctx, mountPath+"/roles/reader", map[string]any{"scopes": "read", "sopes": "write"})
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "sopes") {
		t.Errorf("a role write with an unknown field: %d %v, want a 400 naming the field", re.StatusCode, re.Errors)
	}

	// A token read is a fresh grant, returned as a non-renewable lease.
	grantsBefore := e.tenant.emu.Stats().Grants
	sec := e.readToken("token/reader", nil)
	tok := accessToken(t, sec)
	if got := e.tenant.emu.Stats().Grants; got != grantsBefore+1 {
		t.Errorf("a token read made %d grants, want 1", got-grantsBefore)
	}
	claims := parseClaims(t, tok)
	if claims.Aud != clientID || claims.Iss != e.tenant.url+"/"+appID+"/" || claims.Scope != "read" {
		t.Errorf("token claims aud=%q iss=%q scope=%q; want the client, the config's app and the role's scope", claims.Aud, claims.Iss, claims.Scope)
	}
	if sec.Data["token_type"] != "Bearer" || sec.Data["scope"] != "read" || intField(t, sec.Data, "expires_in") != 3600 {
		t.Errorf("token data token_type=%v scope=%v expires_in=%v", sec.Data["token_type"], sec.Data["scope"], sec.Data["expires_in"])
	}
	expiresAt, _ := sec.Data["expires_at"].(string)
	if exp, err := time.Parse(time.RFC3339, expiresAt); err != nil || exp.Unix() < claims.Exp-2 || exp.Unix() > claims.Exp+2 {
		t.Errorf("expires_at = %v (%v), want about the token's exp %d", sec.Data["expires_at"], err, claims.Exp)
	}
	if !strings.HasPrefix(sec.LeaseID, mountPath+"/token/reader/") || sec.Renewable {
		t.Errorf("lease %q renewable=%t; want a non-renewable lease under %s/token/reader/", sec.LeaseID, sec.Renewable, mountPath)
	}
	// expires_in 3600 gives a margin of 60s; the lease is what remains, in whole seconds.
	if sec.LeaseDuration < 3537 || sec.LeaseDuration > 3540 {
		t.Errorf("lease_duration = %d, want 3540 less a second or two", sec.LeaseDuration)
	}
	if len(sec.Warnings) != 0 {
		t.Errorf("unexpected warnings: %v", sec.Warnings)
	}

	// The lease as Vault holds it.
	lookup, err := c.Sys().LookupWithContext(e.ctx, sec.LeaseID)
	if err != nil {
		t.Fatalf("sys/leases/lookup: %v", err)
	}
	if ttl := intField(t, lookup.Data, "ttl"); ttl < 3535 || ttl > 3540 {
		t.Errorf("lease lookup ttl = %d, want about 3540", ttl)
	}
	if lookup.Data["renewable"] != false || lookup.Data["id"] != sec.LeaseID {
		t.Errorf("lease lookup id=%v renewable=%v", lookup.Data["id"], lookup.Data["renewable"])
	}

	// Renewal is refused by Vault itself, since the lease says it is not renewable.
	_, err = c.Sys().RenewWithContext(e.ctx, sec.LeaseID, 0)
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !slices.Contains(re.Errors, "lease is not renewable") {
		t.Errorf("renew: %d %q, want 400 \"lease is not renewable\"", re.StatusCode, re.Errors)
	}

	// Revocation succeeds and the lease is gone.
	if err := c.Sys().RevokeWithContext(e.ctx, sec.LeaseID); err != nil {
		t.Fatalf("sys/leases/revoke: %v", err)
	}
	_, err = c.Sys().LookupWithContext(e.ctx, sec.LeaseID)
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "invalid lease") {
		t.Errorf("lookup after revoke: %d %q, want 400 invalid lease", re.StatusCode, re.Errors)
	}

	// The scope parameter narrows within the allowed scopes; the role's ttl caps the lease.
	sec = e.readToken("token/writer", map[string][]string{"scope": {"read"}})
	if got := parseClaims(t, accessToken(t, sec)).Scope; got != "read" {
		t.Errorf("token/writer scope=read gave a token with scope %q", got)
	}
	if sec.LeaseDuration != 120 || len(sec.Warnings) != 1 || !strings.Contains(sec.Warnings[0], "capped") {
		t.Errorf("token/writer: lease_duration %d, warnings %q; want 120 with a warning about the cap", sec.LeaseDuration, sec.Warnings)
	}
	grantsBefore = e.tenant.emu.Stats().Grants
	_, err = c.Logical().ReadWithDataWithContext(e.ctx, mountPath+"/token/writer", map[string][]string{"scope": {"admin"}})
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), `"admin"`) {
		t.Errorf("a scope outside allowed_scopes: %d %q, want a 400 naming it", re.StatusCode, re.Errors)
	}
	if got := e.tenant.emu.Stats().Grants; got != grantsBefore {
		t.Errorf("a refused read still made %d grants", got-grantsBefore)
	}

	// The config's own token, and a role on another application.
	if got := parseClaims(t, accessToken(t, e.readToken("token", nil))).Scope; got != "read write" {
		t.Errorf("token gave scope %q, want the config's \"read write\"", got)
	}
	if got := parseClaims(t, accessToken(t, e.readToken("token/other", nil))).Iss; got != e.tenant.url+"/"+otherAppID+"/" {
		t.Errorf("token/other was issued by %q, want the role's app %s", got, otherAppID)
	}
}

// TestConfigRefusedByTenant writes credentials the tenant refuses: the write fails with
// the tenant's own words and stores nothing, and a working config survives a bad update.
func TestConfigRefusedByTenant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	c := e.client

	wrong1, wrong2 := "Wrong:%-"+randomHex(t, 8), "Wrong:%-"+randomHex(t, 8)
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"a refused client secret", wrong1}, {"another refused client secret", wrong2}}
	})
	bad := e.tenant.configData()
	bad["client_secret"] = wrong1
	_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", bad)
	re := responseError(t, err)
	msg := strings.Join(re.Errors, " ")
	if re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, "access_denied") || !strings.Contains(msg, "invalid client creds or client not allowed") {
		t.Errorf("config write with a wrong secret: %d %q; want a 400 quoting the tenant's access_denied error", re.StatusCode, msg)
	}
	if strings.Contains(msg, bad["client_secret"].(string)) {
		t.Error("the error message contains the wrong secret that was sent")
	}
	if cfg, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/config"); err != nil || cfg != nil {
		t.Errorf("after a refused write the config read gives %v, %v; want nothing stored", cfg, err)
	}

	bad = e.tenant.configData()
	bad["client_id"] = "svc-nobody@e2e.cyberark.cloud"
	_, err = c.Logical().WriteWithContext(e.ctx, mountPath+"/config", bad)
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "wrong clientid") {
		t.Errorf("config write with an unknown client: %d %q; want a 400 quoting \"wrong clientid\"", re.StatusCode, re.Errors)
	}
	_, err = c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "not configured") {
		t.Errorf("token read with no config: %d %q; want a 400 saying so", re.StatusCode, re.Errors)
	}

	// A bad update of a working config leaves it working with the old secret.
	e.configure()
	_, err = c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"client_secret": wrong2})
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest {
		t.Errorf("config update with a wrong secret: %d %q, want 400", re.StatusCode, re.Errors)
	}
	e.readToken("token", nil)
	if e.tenant.lastTokenRequest(t).Header.Get("Authorization") != e.tenant.basicCredentials() {
		t.Error("after a refused update the engine no longer sends the stored credentials")
	}
	if st := e.tenant.emu.Stats(); st.TokenErrors != 3 || st.Grants != 2 {
		t.Errorf("tenant saw %d errors and %d grants, want 3 and 2", st.TokenErrors, st.Grants)
	}

	// The plugin's own log lines reach the log the guard scans: its warning about the
	// refused verification quotes the tenant. They arrive through go-plugin's relay, so
	// give them a moment.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.vault.logText(t), "invalid client creds or client not allowed") {
		if time.Now().After(deadline) {
			t.Error("the Vault log does not hold the plugin's warning about the refused verification")
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPluginReload reloads the plugin by name and by mount: the stored config survives,
// the engine still issues tokens, and a lease from before the reload is revoked, its
// token at the tenant too.
func TestPluginReload(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	c := e.client
	e.configure()
	e.writeRole("demo", map[string]any{"scopes": "read"})
	before := e.readToken("token/demo", nil)
	cfgBefore := readConfig(t, e)

	for _, in := range []*api.ReloadPluginInput{
		{Plugin: pluginName},
		{Mounts: []string{mountPath + "/"}},
	} {
		reloads := strings.Count(e.vault.logText(t), "successfully reloaded plugin")
		if _, err := c.Sys().ReloadPluginWithContext(e.ctx, in); err != nil {
			t.Fatalf("reload (plugin=%q mounts=%v): %v", in.Plugin, in.Mounts, err)
		}
		if got := strings.Count(e.vault.logText(t), "successfully reloaded plugin"); got != reloads+1 {
			t.Errorf("reload (plugin=%q mounts=%v): Vault logged %d reloads, want 1", in.Plugin, in.Mounts, got-reloads)
		}
		if got := readConfig(t, e); !reflect.DeepEqual(storedConfig(got), storedConfig(cfgBefore)) {
			t.Errorf("config after reload = %v, want %v", got, cfgBefore)
		}
		grants := e.tenant.emu.Stats().Grants
		e.readToken("token/demo", nil)
		if got := e.tenant.emu.Stats().Grants; got != grants+1 {
			t.Errorf("a token read after reload made %d grants, want 1", got-grants)
		}
	}
	revokes := e.tenant.emu.Stats().RevokeRequests
	if err := c.Sys().RevokeWithContext(e.ctx, before.LeaseID); err != nil {
		t.Errorf("revoking a lease from before the reloads: %v", err)
	}
	// The reloaded plugin revoked the token at the tenant, not just the lease in Vault.
	if !e.tenant.emu.Revoked(accessToken(t, before)) {
		t.Errorf("the token of the lease from before the reloads was not revoked at the tenant (%d revoke requests since)",
			e.tenant.emu.Stats().RevokeRequests-revokes)
	}
}

// TestPluginUpgrade registers a second build with a higher version, pins the mount to
// it and reloads: the new binary serves the mount with the old config, and revokes a
// lease of the old one at the tenant.
func TestPluginUpgrade(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	c := e.client
	e.configure()
	e.writeRole("demo", map[string]any{"scopes": "read"})
	before := e.readToken("token/demo", nil)
	cfgBefore := readConfig(t, e)
	v1 := plugin(t, versionV1)
	if m := e.vault.mountInfo(t, mountPath); m.RunningVersion != versionV1 || m.RunningSha256 != v1.SHA256 {
		t.Fatalf("before the upgrade the mount runs %s (sha256 %s), want %s (%s)", m.RunningVersion, m.RunningSha256, versionV1, v1.SHA256)
	}

	v2 := plugin(t, versionV2)
	e.vault.register(t, v2)
	v2Version := versionV2
	if err := c.Sys().TuneMountAllowNilWithContext(e.ctx, mountPath, api.TuneMountConfigInput{PluginVersion: &v2Version}); err != nil {
		t.Fatalf("tuning plugin_version: %v", err)
	}
	// The tune pins the version; the running binary changes only with a reload.
	if m := e.vault.mountInfo(t, mountPath); m.PluginVersion != versionV2 || m.RunningVersion != versionV1 {
		t.Errorf("after the tune: plugin_version %s, running %s; want %s and still %s", m.PluginVersion, m.RunningVersion, versionV2, versionV1)
	}
	if _, err := c.Sys().ReloadPluginWithContext(e.ctx, &api.ReloadPluginInput{Mounts: []string{mountPath}}); err != nil {
		t.Fatalf("reload: %v", err)
	}
	m := e.vault.mountInfo(t, mountPath)
	if m.RunningVersion != versionV2 || m.RunningSha256 != v2.SHA256 {
		t.Fatalf("after the reload the mount runs %s (sha256 %s), want %s (%s)", m.RunningVersion, m.RunningSha256, versionV2, v2.SHA256)
	}

	if got := readConfig(t, e); !reflect.DeepEqual(storedConfig(got), storedConfig(cfgBefore)) {
		t.Errorf("config after the upgrade = %v, want %v", got, cfgBefore)
	}
	e.readToken("token/demo", nil)
	// The tenant sees the grant come from the new binary.
	if ua := e.tenant.lastTokenRequest(t).Header.Get("User-Agent"); !strings.Contains(ua, versionV2) {
		t.Errorf("User-Agent after the upgrade is %q, want it to name %s", ua, versionV2)
	}
	revokes := e.tenant.emu.Stats().RevokeRequests
	if err := c.Sys().RevokeWithContext(e.ctx, before.LeaseID); err != nil {
		t.Errorf("revoking a lease issued by %s: %v", versionV1, err)
	}
	// The new binary revoked the old binary's token at the tenant.
	if !e.tenant.emu.Revoked(accessToken(t, before)) {
		t.Errorf("the token of the lease issued by %s was not revoked at the tenant (%d revoke requests since)",
			versionV1, e.tenant.emu.Stats().RevokeRequests-revokes)
	}
	if ua := e.tenant.lastRequest(t, "/oauth2/revoke/").Header.Get("User-Agent"); !strings.Contains(ua, versionV2) {
		t.Errorf("User-Agent of the revocation is %q, want it to name %s", ua, versionV2)
	}
}

// storedConfig is a config read without what the running instance knows in memory
// only (whether it has fetched the signing keys yet), which a reload starts afresh.
func storedConfig(read map[string]any) map[string]any {
	out := maps.Clone(read)
	delete(out, "signing_keys")
	return out
}

func readConfig(t testing.TB, e *env) map[string]any {
	t.Helper()
	s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/config")
	if err != nil || s == nil {
		t.Fatalf("reading the config: %v", err)
	}
	return s.Data
}
