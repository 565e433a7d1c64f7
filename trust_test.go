package cyberark

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

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
		if !strings.Contains(resp.Error().Error(), "rotation scope") {
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
	e.b.cache.resetConfig()
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
		{"rotation scope, enforce", "", []string{rotateScope}, "", false, "rotation scope"},
		{"rotation scope, warn", "warn", []string{rotateScope}, "", false, "rotation scope"},
		{"rotation scope in the answer only", "warn", []string{rotateScope}, emulator.WidenInAnswer, false, "rotation scope"},
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
