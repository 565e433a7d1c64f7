//go:build unix

package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestTemplatedScopes is docs/templated-scopes.md in a real Vault: userpass users whose
// entities carry team metadata read one templated role, and each gets its own team's
// scope, which is what the tenant was asked for and granted. A user whose metadata
// would reach a scope outside the role's ceiling, and the root token, which has no
// entity, are refused with a 400 and the tenant is asked for nothing.
func TestTemplatedScopes(t *testing.T) {
	t.Parallel()
	teamScopes := []string{"team.payments.read", "team.billing.read", "team.payments.admin.read"}
	e := newEnv(t, 3600, withTenantConfig(func(c *emulator.Config) {
		// The tenant would grant the deeper scope: only the ceiling keeps it out.
		c.Apps[0].Scopes = append(c.Apps[0].Scopes, teamScopes...)
		c.Apps[0].Clients[0].AllowedScopes = append(c.Apps[0].Clients[0].AllowedScopes, teamScopes...)
	}))
	e.configure()
	e.writeRole("team", map[string]any{
		"scopes": "team.{{identity.entity.metadata.team}}.read", "scope_ceiling": "team.*.read", "token_reuse": true,
	})
	role, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/roles/team")
	if err != nil || role == nil || role.Data["templated"] != true {
		t.Fatalf("role read: %v, templated = %v", err, role)
	}

	users := newTeamUsers(t, e, map[string]string{"alice": "payments", "bob": "billing", "mallory": "payments.admin"})
	for user, want := range map[string]string{"alice": "team.payments.read", "bob": "team.billing.read"} {
		s := e.readTokenAs(users[user], "token/team", nil)
		granted := parseClaims(t, accessToken(t, s)).Scope
		asked := e.tenant.lastTokenRequest(t).Form.Get("scope")
		if s.Data["scope"] != want || granted != want || asked != want {
			t.Errorf("%s: scope %v, JWT scope %q, asked the tenant for %q; want %s", user, s.Data["scope"], granted, asked, want)
		}
	}

	before := e.tenant.emu.Stats().TokenRequests
	for who, c := range map[string]*api.Client{"mallory": users["mallory"], "root": e.client} {
		_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token/team")
		re := responseError(t, err)
		msg := strings.Join(re.Errors, "; ")
		want := map[string]string{"mallory": "outside scope_ceiling [team.*.read]", "root": "has no entity"}[who]
		if re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, want) {
			t.Errorf("%s: status %d, %q; want 400 saying %q", who, re.StatusCode, msg, want)
		}
	}
	if n := e.tenant.emu.Stats().TokenRequests - before; n != 0 {
		t.Errorf("refused reads sent %d token requests to the tenant", n)
	}
}

// newTeamUsers enables userpass, makes for each user an entity whose metadata names its
// team and an alias that ties the user's logins to it, and returns a client logged in
// as each, under a policy that may read token/team and nothing else.
func newTeamUsers(t *testing.T, e *env, teams map[string]string) map[string]*api.Client {
	t.Helper()
	c := e.client
	if err := c.Sys().EnableAuthWithOptionsWithContext(e.ctx, "userpass", &api.EnableAuthOptions{Type: "userpass"}); err != nil {
		t.Fatalf("enabling userpass: %v", err)
	}
	auths, err := c.Sys().ListAuthWithContext(e.ctx)
	if err != nil || auths["userpass/"] == nil {
		t.Fatalf("listing auth methods: %v", err)
	}
	accessor := auths["userpass/"].Accessor
	policy := fmt.Sprintf("path %q {\n  capabilities = [\"read\"]\n}\n", mountPath+"/token/team")
	if err := c.Sys().PutPolicyWithContext(e.ctx, "team-tokens", policy); err != nil {
		t.Fatalf("writing the policy: %v", err)
	}
	out := map[string]*api.Client{}
	for user, team := range teams {
		password := "pw-" + randomHex(t, 12)
		mustWrite(t, e, "auth/userpass/users/"+user, map[string]any{"password": password, "token_policies": "team-tokens"})
		entity := mustWrite(t, e, "identity/entity", map[string]any{"name": user, "metadata": map[string]string{"team": team}})
		mustWrite(t, e, "identity/entity-alias", map[string]any{"name": user, "canonical_id": entity.Data["id"], "mount_accessor": accessor})
		login := mustWrite(t, e, "auth/userpass/login/"+user, map[string]any{"password": password})
		if login.Auth == nil || login.Auth.EntityID != entity.Data["id"] {
			t.Fatalf("%s logged in without the entity made for it: %+v", user, login.Auth)
		}
		token := login.Auth.ClientToken
		e.guard.addSecrets(func() []namedSecret {
			return []namedSecret{{user + "'s password", password}, {user + "'s Vault token", token}}
		})
		out[user] = newClient(t, e.vault.addr, token)
	}
	return out
}

// mustWrite writes data to path as root and fails the test on an error; the answer is
// empty (not nil) when Vault answers without one.
func mustWrite(t *testing.T, e *env, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := e.client.Logical().WriteWithContext(e.ctx, path, data)
	if err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	if s == nil {
		s = &api.Secret{}
	}
	return s
}
