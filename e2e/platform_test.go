package e2e

import (
	"testing"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestPlatformTokenInVault runs docs/tenant-setup.md's recipe for CyberArk's platform
// APIs in a real Vault: tokens come from /oauth2/platformtoken with client_secret_post,
// checked in full against the platform's key set and audience, and every grant carries
// the token_params the tenant insists on.
func TestPlatformTokenInVault(t *testing.T) {
	t.Parallel()
	const resource = "https://api.e2e.example/"
	e := newEnv(t, 3600, withTenantConfig(func(c *emulator.Config) {
		user := c.Apps[0].Clients[0]
		user.AllowedScopes = nil // the platform app defines no scopes
		c.Apps = append(c.Apps, emulator.App{
			ID: emulator.PlatformAppID, Clients: []emulator.Client{user}, AuthModes: []string{"post"},
			TokenQuirks:    emulator.TokenQuirks{Audience: emulator.PlatformAppID},
			RequiredParams: map[string]string{"resource": resource},
		})
	}))
	data := map[string]any{
		"tenant_url":     e.tenant.url,
		"token_url":      e.tenant.url + "/oauth2/platformtoken",
		"client_auth":    "post",
		"client_id":      clientID,
		"client_secret":  e.tenant.secret,
		"ca_cert":        e.tenant.caPEM,
		"jwks_url":       e.tenant.url + "/oauth2/keys/" + emulator.PlatformAppID,
		"token_audience": emulator.PlatformAppID,
		"verify_tokens":  "enforce",
	}
	// Without the parameter the tenant refuses, and nothing is stored.
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", data); err == nil {
		t.Fatal("a config without the tenant's required resource was stored")
	} else if re := responseError(t, err); re.StatusCode != 400 {
		t.Fatalf("config without token_params: status %d, want 400", re.StatusCode)
	}
	data["token_params"] = map[string]any{"resource": resource}
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing the platform config: %v", err)
	}

	s := e.readToken("token", nil)
	if aud := parseClaims(t, accessToken(t, s)).Aud; aud != emulator.PlatformAppID {
		t.Errorf("aud = %v, want the platform's %s", aud, emulator.PlatformAppID)
	}
	if s.LeaseID == "" || s.LeaseDuration <= 0 {
		t.Errorf("a platform token's lease: id %q, duration %d", s.LeaseID, s.LeaseDuration)
	}
	grant := e.tenant.lastRequest(t, "/oauth2/platformtoken")
	switch {
	case grant.Header.Get("Authorization") != "" || grant.Form.Get("client_id") != clientID:
		t.Error("the read's grant did not authenticate with client_secret_post")
	case grant.Form.Get("resource") != resource || grant.Form.Get("grant_type") != "client_credentials":
		t.Errorf("the read's grant carried resource %q and grant_type %q", grant.Form.Get("resource"), grant.Form.Get("grant_type"))
	}
}
