package cyberark

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// identityView is Vault's system view with the entities and groups a test sets, by
// entity ID, as Vault's identity store answers a plugin. It counts the lookups.
type identityView struct {
	logical.SystemView
	entities map[string]*logical.Entity
	groups   map[string][]*logical.Group
	lookups  atomic.Int64
}

func (v *identityView) EntityInfo(id string) (*logical.Entity, error) {
	v.lookups.Add(1)
	return v.entities[id], nil
}

func (v *identityView) GroupsForEntity(id string) ([]*logical.Group, error) {
	return v.groups[id], nil
}

const testAccessor = "auth_userpass_0a1b2c3d"

// teamEntities are the readers the tests use, by entity ID.
func teamEntities() map[string]*logical.Entity {
	entity := func(id string, meta map[string]string) *logical.Entity {
		return &logical.Entity{ID: id, Name: id, Metadata: meta, Aliases: []*logical.Alias{
			{MountAccessor: testAccessor, ID: "alias-" + id, Name: "user-" + id, Metadata: map[string]string{"team": meta["team"]}},
		}}
	}
	return map[string]*logical.Entity{
		"ent-pay":      entity("ent-pay", map[string]string{"team": "payments"}),
		"ent-pay-2":    entity("ent-pay-2", map[string]string{"team": "payments"}),
		"ent-bill":     entity("ent-bill", map[string]string{"team": "billing"}),
		"ent-deeper":   entity("ent-deeper", map[string]string{"team": "payments.admin"}),
		"ent-none":     entity("ent-none", map[string]string{"site": "eu"}),
		"ent-empty":    entity("ent-empty", map[string]string{"team": ""}),
		"ent-space":    entity("ent-space", map[string]string{"team": "pay ments"}),
		"ent-control":  entity("ent-control", map[string]string{"team": "pay\x07"}),
		"ent-template": entity("ent-template", map[string]string{"team": "{{identity.entity.id}}"}),
		// A tenant that splits scopes at commas would grant "all"; "*" is a pattern.
		"ent-comma": entity("ent-comma", map[string]string{"team": "x,all"}),
		"ent-star":  entity("ent-star", map[string]string{"team": "*"}),
	}
}

// newTemplateEnv is a configured engine whose system view knows teamEntities, on a
// tenant whose app defines their team scopes.
func newTemplateEnv(t *testing.T) (*testEnv, *identityView) {
	t.Helper()
	e := newTestEnvWith(t, func(c *emulator.Config) {
		c.Apps[0].Scopes = append(c.Apps[0].Scopes, "team.payments.read", "team.billing.read", "team.payments.write",
			"team.billing.write", "team.payments.admin.read", "grp.payments.read", "grp.billing.read", "grp.admin.read")
	})
	view := &identityView{SystemView: logical.TestSystemView(), entities: teamEntities(), groups: map[string][]*logical.Group{
		"ent-pay":  {{ID: "g1", Name: "payments"}, {ID: "g2", Name: "admin"}, {ID: "g3", Name: "Ops Team"}, {ID: "g4", Name: "billing"}},
		"ent-bill": {{ID: "g2", Name: "admin"}},
	}}
	e.withSystem(t, view)
	e.configure(t)
	return e, view
}

// readAs reads path with a token of the entity (none when empty).
func (e *testEnv) readAs(t *testing.T, entityID, path string, data map[string]any) (*logical.Response, error) {
	t.Helper()
	return e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.ReadOperation, Path: path, Data: data, Storage: e.storage, MountPoint: "cyberark/", EntityID: entityID,
	})
}

func (e *testEnv) mustReadAs(t *testing.T, entityID, path string) *logical.Response {
	t.Helper()
	resp, err := e.readAs(t, entityID, path, nil)
	if err != nil || resp.IsError() {
		t.Fatalf("%s reading %s: %v %v", entityID, path, err, resp.Error())
	}
	return resp
}

// askedScopes is the scope parameter of each grant the tenant received.
func askedScopes(e *testEnv) []string {
	var out []string
	for _, r := range e.emu.Requests() {
		if r.Form != nil && r.Form.Get("grant_type") == "client_credentials" {
			out = append(out, r.Form.Get("scope"))
		}
	}
	return out
}

const teamRead = "team.{{identity.entity.metadata.team}}.read"

// TestTemplatedScopesPerEntity: one role gives each reader the scopes its own entity
// names, and the tenant is asked for those.
func TestTemplatedScopesPerEntity(t *testing.T) {
	t.Parallel()
	e, _ := newTemplateEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/team", map[string]any{"scopes": teamRead, "scope_ceiling": "team.*.read"})
	e.mustRequest(t, logical.CreateOperation, "roles/alias", map[string]any{
		"scopes": "team.{{identity.entity.aliases." + testAccessor + ".metadata.team}}.read", "scope_ceiling": "team.*.read",
	})
	e.emu.Reset()
	pay := e.mustReadAs(t, "ent-pay", "token/team")
	bill := e.mustReadAs(t, "ent-bill", "token/team")
	viaAlias := e.mustReadAs(t, "ent-bill", "token/alias")
	if pay.Data["scope"] != "team.payments.read" || bill.Data["scope"] != "team.billing.read" || viaAlias.Data["scope"] != "team.billing.read" {
		t.Errorf("scopes granted: payments reader %v, billing reader %v, billing reader by alias %v", pay.Data["scope"], bill.Data["scope"], viaAlias.Data["scope"])
	}
	if got, want := askedScopes(e), []string{"team.payments.read", "team.billing.read", "team.billing.read"}; !slices.Equal(got, want) {
		t.Errorf("the tenant was asked for %q, want %q", got, want)
	}
	if pay.Data["access_token"] == bill.Data["access_token"] {
		t.Error("two teams got one token")
	}
}

// TestTemplatedScopeRefusals: a reader whose identity cannot fill the template, or fills
// it outside the ceiling or the scope syntax, gets a 400 that says why, and the tenant
// is asked for nothing.
func TestTemplatedScopeRefusals(t *testing.T) {
	t.Parallel()
	e, _ := newTemplateEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/team", map[string]any{"scopes": teamRead, "scope_ceiling": "team.*.read"})
	e.mustRequest(t, logical.CreateOperation, "roles/listed", map[string]any{"scopes": teamRead, "scope_ceiling": "team.billing.read"})
	e.mustRequest(t, logical.CreateOperation, "roles/alias", map[string]any{
		"scopes": "team.{{identity.entity.aliases.auth_other_1.name}}.read", "scope_ceiling": "team.*.read",
	})
	e.emu.Reset()
	for _, tc := range []struct {
		entity, role string
		want         []string // what the message must say
	}{
		{"", "team", []string{"scopes: role \"team\"", "reader's identity", "has no entity", "auth method"}},
		{"ent-gone", "team", []string{"entity \"ent-gone\" does not exist"}},
		{"ent-none", "team", []string{`metadata key "team"`, teamRead}},
		{"ent-empty", "team", []string{`metadata key "team"`, "or has empty"}},
		{"ent-pay", "alias", []string{`alias on mount accessor "auth_other_1"`}},
		{"ent-deeper", "team", []string{`"team.payments.admin.read"`, "scope_ceiling [team.*.read]", "reader's identity", "metadata outside the ceiling is refused"}},
		{"ent-pay", "listed", []string{`"team.payments.read"`, "scope_ceiling [team.billing.read]"}},
		{"ent-space", "team", []string{`metadata key "team" holds a character`, "letters, digits"}},
		{"ent-control", "team", []string{`metadata key "team" holds a character`}},
		{"ent-template", "team", []string{`metadata key "team" holds a character`}},
		{"ent-comma", "team", []string{`metadata key "team" holds a character`}},
		{"ent-star", "team", []string{`metadata key "team" holds a character`}},
	} {
		resp, err := e.readAs(t, tc.entity, "token/"+tc.role, nil)
		assertBadRequest(t, resp, err, "scopes")
		for _, w := range tc.want {
			if msg := resp.Error().Error(); !strings.Contains(msg, w) {
				t.Errorf("entity %q, role %s: %q does not say %q", tc.entity, tc.role, msg, w)
			}
		}
	}
	if n := e.emu.Stats().TokenRequests; n != 0 {
		t.Errorf("refused reads sent %d token requests to the tenant", n)
	}
}

// TestTemplatedScopeReuseKeyedPerExpansion: token_reuse (with and without leases)
// shares a token between readers whose identities expand the role alike, never between
// others.
func TestTemplatedScopeReuseKeyedPerExpansion(t *testing.T) {
	t.Parallel()
	for _, leaseFree := range []bool{false, true} {
		e, _ := newTemplateEnv(t)
		e.mustRequest(t, logical.CreateOperation, "roles/team", map[string]any{
			"scopes": teamRead, "scope_ceiling": "team.*.read", "token_reuse": true, "lease_free": leaseFree,
		})
		e.emu.Reset()
		pay := e.mustReadAs(t, "ent-pay", "token/team").Data["access_token"]
		bill := e.mustReadAs(t, "ent-bill", "token/team").Data["access_token"]
		pay2 := e.mustReadAs(t, "ent-pay-2", "token/team").Data["access_token"]
		if pay != pay2 || pay == bill {
			t.Errorf("lease_free=%v: same team shares: %v, other team shares: %v; want true, false", leaseFree, pay == pay2, pay == bill)
		}
		if g := e.emu.Stats().Grants; g != 2 {
			t.Errorf("lease_free=%v: %d grants, want one per team", leaseFree, g)
		}
	}
	one := &tokenPlan{client: "default", appID: testAppID, scopes: []string{"team.payments.read"}}
	other := &tokenPlan{client: "default", appID: testAppID, scopes: []string{"team.billing.read"}}
	if one.reuseKey() == other.reuseKey() {
		t.Error("two expansions share a reuse key")
	}
}

// TestTemplatedScopeGroups: the groups directive gives one scope per group of the
// reader's entity whose scope is valid and within the ceiling.
func TestTemplatedScopeGroups(t *testing.T) {
	t.Parallel()
	e, _ := newTemplateEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/groups", map[string]any{
		"scopes": "grp.{{identity.entity.groups.names}}.read", "scope_ceiling": "grp.payments.read,grp.bill*.read",
	})
	e.emu.Reset()
	resp := e.mustReadAs(t, "ent-pay", "token/groups")
	if resp.Data["scope"] != "grp.payments.read grp.billing.read" {
		t.Errorf("scope = %v, want the two groups within the ceiling, admin and Ops Team left out", resp.Data["scope"])
	}
	resp, err := e.readAs(t, "ent-bill", "token/groups", nil)
	assertBadRequest(t, resp, err, "expands to no scope within scope_ceiling")
}

// TestTemplatedAllowedScopes: a reader narrows to its own expansion of allowed_scopes,
// never to another team's.
func TestTemplatedAllowedScopes(t *testing.T) {
	t.Parallel()
	e, _ := newTemplateEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/team", map[string]any{
		"scopes": teamRead, "allowed_scopes": teamRead + ",team.{{identity.entity.metadata.team}}.write",
		"scope_ceiling": "team.*.read,team.*.write",
	})
	resp, err := e.readAs(t, "ent-pay", "token/team", map[string]any{"scope": "team.payments.write"})
	if err != nil || resp.IsError() || resp.Data["scope"] != "team.payments.write" {
		t.Fatalf("narrowing to the reader's own write scope: %v, scope %v", err, resp.Data["scope"])
	}
	resp, err = e.readAs(t, "ent-pay", "token/team", map[string]any{"scope": "team.billing.write"})
	assertBadRequest(t, resp, err, "not allowed here")
	resp, err = e.readAs(t, "ent-pay", "token/team", map[string]any{"scope": teamRead})
	assertBadRequest(t, resp, err, "scope")
}

// TestRoleWriteChecksTemplatesAndCeiling: what a role write refuses, by field.
func TestRoleWriteChecksTemplatesAndCeiling(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil) // rotation_scopes=rotate; denied_scopes defaults to all
	for _, tc := range []struct {
		name  string
		data  map[string]any
		field string
	}{
		{"template without ceiling", map[string]any{"scopes": teamRead}, "scope_ceiling: is required"},
		{"allowed_scopes template without ceiling", map[string]any{"scopes": "read", "allowed_scopes": "read," + teamRead}, "scope_ceiling: is required"},
		{"ceiling of stars", map[string]any{"scopes": teamRead, "scope_ceiling": "*"}, "scope_ceiling"},
		{"ceiling of stars and dots", map[string]any{"scopes": teamRead, "scope_ceiling": "*.*.*"}, "bounds nothing"},
		{"ceiling matching the rotation scope", map[string]any{"scopes": teamRead, "scope_ceiling": "team.*.read,rot*"}, `scope_ceiling: "rot*" matches "rotate"`},
		{"ceiling equal to the rotation scope, in another case", map[string]any{"scopes": "read", "scope_ceiling": "read,ROTATE"}, "scope_ceiling"},
		{"ceiling matching the denied scope", map[string]any{"scopes": teamRead, "scope_ceiling": "team.*.read,a*"}, `matches "all"`},
		{"template in the ceiling", map[string]any{"scopes": teamRead, "scope_ceiling": teamRead}, "scope_ceiling"},
		{"literal scope outside the ceiling", map[string]any{"scopes": "read," + teamRead, "scope_ceiling": "team.*.read"}, `does not admit the effective scope "read"`},
		{"config's scope outside the ceiling", map[string]any{"scope_ceiling": "team.*.read"}, `does not admit the effective scope "read" (from the config)`},
		{"unbalanced", map[string]any{"scopes": "team.{{identity.entity.name.read", "scope_ceiling": "team.*"}, "scopes: template"},
		{"stray closing braces", map[string]any{"scopes": "team.}}read", "scope_ceiling": "team.*"}, "unbalanced"},
		{"time", map[string]any{"scopes": "t.{{time.now}}", "scope_ceiling": "t.*"}, "not a template this engine expands"},
		{"named group", map[string]any{"scopes": "g.{{identity.groups.names.ops.name}}", "scope_ceiling": "g.*"}, "not a template"},
		{"whole metadata", map[string]any{"scopes": "g.{{identity.entity.metadata}}", "scope_ceiling": "g.*"}, "not a template"},
		{"alias without field", map[string]any{"scopes": "g.{{identity.entity.aliases.x}}", "scope_ceiling": "g.*"}, "not a template"},
		{"groups twice", map[string]any{"scopes": "g.{{identity.entity.groups.names}}.{{identity.entity.groups.names}}", "scope_ceiling": "g.*.*"}, "may appear once"},
		{"bad template in allowed_scopes", map[string]any{"scopes": "read", "allowed_scopes": "read,x.{{nope}}", "scope_ceiling": "read,x.*"}, "allowed_scopes: template"},
	} {
		resp, err := e.request(t, logical.CreateOperation, "roles/bad", tc.data)
		if err != nil || resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), tc.field) {
			t.Errorf("%s: got %v %v, want a 400 naming %q", tc.name, err, resp.Error(), tc.field)
		}
	}
	if list, _ := e.request(t, logical.ListOperation, "roles/", nil); list != nil && len(list.Data) > 0 {
		t.Errorf("refused writes stored roles: %v", list.Data)
	}
	e.mustRequest(t, logical.CreateOperation, "roles/good", map[string]any{
		"scopes": teamRead + ",read", "scope_ceiling": "team.*.read,read",
	})
	read := e.mustRequest(t, logical.ReadOperation, "roles/good", nil).Data
	if read["templated"] != true || !slices.Equal(read["effective_scopes"].([]string), []string{teamRead, "read"}) ||
		!slices.Equal(read["scope_ceiling"].([]string), []string{"team.*.read", "read"}) {
		t.Errorf("role read: templated %v, effective_scopes %v, scope_ceiling %v", read["templated"], read["effective_scopes"], read["scope_ceiling"])
	}
}

// TestCeilingOfAnotherClientsRole: a client's rotation scope cannot be one that another
// client's templated role on the same application may expand to, and a role's ceiling
// cannot cover another client's management scope.
func TestCeilingOfAnotherClientsRole(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.configure(t)
	e.writeClients(t)
	resp, err := e.request(t, logical.CreateOperation, "roles/wide", map[string]any{"scopes": "read", "scope_ceiling": "read,man*"})
	assertBadRequest(t, resp, err, `scope_ceiling: "man*" matches "manage"`)
	e.mustRequest(t, logical.CreateOperation, "roles/team-a-tpl", map[string]any{
		"client": "team-a", "scopes": "read", "allowed_scopes": "read,x{{identity.entity.metadata.team}}", "scope_ceiling": "read,x*",
	})
	resp, err = e.request(t, logical.UpdateOperation, "config", map[string]any{"scopes": "read", "rotation_scopes": "xfer"})
	assertBadRequest(t, resp, err, `"xfer" matches scope_ceiling "x*" of role "team-a-tpl"`)
}

func TestWithinCeiling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, scope string
		want           bool
	}{
		{"team.*.read", "team.payments.read", true},
		{"team.*.read", "team.payments.admin.read", false},
		{"team.*.read", "team.read", false},
		{"team.*.read", "team.payments.write", false},
		{"team.pay*.read", "team.payments.read", true},
		{"team.pay*.read", "team.billing.read", false},
		{"read", "read", true},
		{"read", "reader", false},
		{"*", "all", true},
		{"team.*", "team.a.b", false},
	} {
		if got := withinCeiling([]string{tc.pattern}, tc.scope); got != tc.want {
			t.Errorf("%q admits %q: %v, want %v", tc.pattern, tc.scope, got, tc.want)
		}
	}
}

// TestUntemplatedRoleAsksNoIdentity: only templated roles cost Vault an identity
// lookup.
func TestUntemplatedRoleAsksNoIdentity(t *testing.T) {
	t.Parallel()
	e, view := newTemplateEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/plain", map[string]any{"scopes": "read", "scope_ceiling": "read"})
	e.mustRequest(t, logical.CreateOperation, "roles/team", map[string]any{"scopes": teamRead, "scope_ceiling": "team.*.read"})
	e.mustReadAs(t, "ent-pay", "token/plain")
	e.mustReadAs(t, "ent-pay", "token")
	if n := view.lookups.Load(); n != 0 {
		t.Errorf("reads of an untemplated role and of token looked up %d entities", n)
	}
	e.mustReadAs(t, "ent-pay", "token/team")
	if n := view.lookups.Load(); n != 1 {
		t.Errorf("a templated read looked up %d entities, want 1", n)
	}
}
