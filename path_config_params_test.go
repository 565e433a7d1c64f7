package cyberark

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestTokenParamsReachTheTenant: the grant carries token_params, which the emulated app
// insists on, and a read shows them; without them the tenant refuses.
func TestTokenParamsReachTheTenant(t *testing.T) {
	t.Parallel()
	want := map[string]string{"resource": "https://api.example.com/", "audience": "payments"}
	e := newTestEnvWith(t, func(c *emulator.Config) { c.Apps[0].RequiredParams = want })

	data := e.configData()
	resp, err := e.request(t, logical.CreateOperation, "config", data)
	if err != nil || resp == nil || !strings.Contains(resp.Error().Error(), "invalid_target") {
		t.Fatalf("a grant without the app's parameters: got %v, %v; want the tenant's invalid_target", resp, err)
	}
	data["token_params"] = map[string]any{"resource": want["resource"], "audience": want["audience"]}
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.ReadOperation, "token", nil)

	got := e.mustRequest(t, logical.ReadOperation, "config", nil).Data["token_params"].(map[string]string)
	if len(got) != 2 || got["resource"] != want["resource"] || got["audience"] != want["audience"] {
		t.Errorf("config read: token_params = %v, want %v", got, want)
	}
	for _, r := range e.emu.Requests() {
		if strings.HasPrefix(r.Path, "/oauth2/token/") && r.Form.Get("grant_type") != "client_credentials" {
			t.Errorf("a grant went out with grant_type %q", r.Form.Get("grant_type"))
		}
	}

	// An empty map removes them, and the tenant refuses again.
	resp, err = e.request(t, logical.UpdateOperation, "config", map[string]any{"token_params": map[string]any{}})
	if err != nil || resp == nil || !strings.Contains(resp.Error().Error(), "invalid_target") {
		t.Fatalf("after token_params were removed: got %v, %v; want the tenant's invalid_target", resp, err)
	}
}

// TestTokenParamsRefused: parameters that would replace the engine's own, carry a
// credential, or are malformed are a 400 naming token_params, and nothing is stored.
func TestTokenParamsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	many := map[string]any{}
	for i := range maxTokenParams + 1 {
		many["p"+strings.Repeat("x", i)] = "v"
	}
	for _, tc := range []struct {
		name   string
		params any
		want   string
	}{
		{"grant_type", map[string]any{"grant_type": "password"}, "must not set grant_type"},
		{"client_secret", map[string]any{"client_secret": "x"}, "must not set client_secret"},
		{"scope", map[string]any{"scope": "all"}, "must not set scope"},
		{"upper-case scope", map[string]any{"SCOPE": "all"}, "must not set SCOPE"},
		{"password", map[string]any{"password": "x"}, "must not set password"},
		{"empty value", map[string]any{"audience": ""}, "parameter audience must not be empty"},
		{"bad name", map[string]any{"a b": "x"}, "parameter names are 1 to 64"},
		{"control character", map[string]any{"audience": "a\u202eb"}, "parameter audience must not contain control"},
		{"relative resource", map[string]any{"resource": "api"}, "absolute URI without a fragment"},
		{"resource with fragment", map[string]any{"resource": "https://api.example.com/#x"}, "absolute URI without a fragment"},
		{"too many", many, "must have at most 16 parameters"},
		{"not pairs", []any{"resource"}, "token_params:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.request(t, logical.UpdateOperation, "config", map[string]any{"token_params": tc.params})
			if err != nil || resp == nil || !resp.IsError() {
				t.Fatalf("got %v, %v; want a 400", resp, err)
			}
			if msg := resp.Error().Error(); !strings.HasPrefix(msg, "token_params: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("got %q, want token_params: ...%s...", msg, tc.want)
			}
			if stored := e.stored(t); len(stored.TokenParams) != 0 {
				t.Errorf("a refused write stored token_params %v", stored.TokenParams)
			}
		})
	}
}

// TestPlatformTokenRecipe is docs/tenant-setup.md's recipe for the platform APIs: the
// platform token endpoint with client_secret_post, its key set and its audience. The
// token is checked in full (verify_tokens=enforce), and the grant names no app.
func TestPlatformTokenRecipe(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.mustRequest(t, logical.CreateOperation, "config", map[string]any{
		"tenant_url":     e.url,
		"token_url":      e.url + "/oauth2/platformtoken",
		"client_auth":    "post",
		"client_id":      testClientID,
		"client_secret":  testClientSecret,
		"ca_cert":        e.caPEM,
		"jwks_url":       e.url + "/oauth2/keys/" + emulator.PlatformAppID,
		"token_audience": emulator.PlatformAppID,
		"verify_tokens":  "enforce",
	})
	resp := e.mustRequest(t, logical.ReadOperation, "token", nil)
	jwt, err := client.ParseJWT(resp.Data["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if aud := jwt.String("aud"); aud != emulator.PlatformAppID {
		t.Errorf("aud = %q, want the platform's %q", aud, emulator.PlatformAppID)
	}
	if resp.Secret == nil || resp.Secret.InternalData["revoke"] == true {
		t.Errorf("a platform token's lease: %+v; want one without revocation (no endpoint is known)", resp.Secret)
	}
	var platformGrants int
	for _, r := range e.emu.Requests() {
		if r.Path == "/oauth2/platformtoken" {
			platformGrants++
			if r.Form.Get("client_id") != testClientID || r.Header.Get("Authorization") != "" {
				t.Error("a platform grant did not authenticate with client_secret_post")
			}
		}
	}
	if platformGrants < 2 { // the write's verification and the read
		t.Errorf("%d grants reached /oauth2/platformtoken, want 2", platformGrants)
	}
}
