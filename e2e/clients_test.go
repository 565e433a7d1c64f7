//go:build unix

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// Several clients on one mount (issue 19) in a real Vault against the tenant emulator:
// three service users on two apps, each client's tokens granted with its own secret
// only, each client rotated on its own schedule (one of them by a manager's
// ResetUserPassword, killed mid-way and recovered), no workload token with a rotation
// or management scope, a config and role from before clients existed served after the
// upgrade, and a team's Vault policy (examples/policies/team-a.hcl) that keeps it to its
// own client, roles and tokens.

const (
	// appA is team A's app: its user rotates itself with rotateAScope.
	appA         = "e2e-team-a"
	rotateAScope = "rotate-a"
	// appB is team B's app, where the manager's user may reset passwords with
	// manageScope.
	appB        = "e2e-team-b"
	manageScope = "manage"

	// resetPasswordPath is the tenant API a manager resets a managed user's password
	// with, as the emulator records its path.
	resetPasswordPath = "/UserMgmt/ResetUserPassword"
)

// serviceUser is a service user of the tenant and the client of the mount that it is.
type serviceUser struct {
	client string // the mount's name for it
	id     string // login name = client_id
	uuid   string // the tokens' sub
	app    string // the app its client's config names
	secret string // its password before any rotation
}

func (u serviceUser) basic(secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u.id+":"+secret))
}

// teams are the users of the clients tests: team A's on app A, rotating itself; team
// B's on app B, managed; and the manager's on app B, an administrator whose scope
// manageScope allows ResetUserPassword. def is the harness's own user, the default
// client (config).
type teams struct {
	a, b, mgr, def serviceUser
}

func newTeams(t *testing.T) *teams {
	t.Helper()
	user := func(client, app, uuid string) serviceUser {
		return serviceUser{client: client, id: "svc-" + client + "@e2e.cyberark.cloud", uuid: uuid, app: app,
			secret: "E2e:%40-" + randomHex(t, 16)}
	}
	return &teams{
		a:   user("team-a", appA, "a0a0a0a0-0000-4000-8000-00000000000a"),
		b:   user("team-b", appB, "b0b0b0b0-0000-4000-8000-00000000000b"),
		mgr: user("mgr", appB, "e0e0e0e0-0000-4000-8000-00000000000e"),
	}
}

func (tm *teams) users() []serviceUser { return []serviceUser{tm.def, tm.a, tm.b, tm.mgr} }

// tenantConfig adds the two apps to the harness's tenant.
func (tm *teams) tenantConfig(c *emulator.Config) {
	c.Apps = append(c.Apps,
		emulator.App{
			ID: appA, Scopes: []string{"read", "write", rotateAScope},
			ScopeAPIs: map[string][]string{rotateAScope: {"UserMgmt/ChangeUserPassword"}},
			Clients: []emulator.Client{{ID: tm.a.id, Secret: tm.a.secret, UUID: tm.a.uuid,
				AllowedScopes: []string{"read", "write", rotateAScope}}},
		},
		emulator.App{
			ID: appB, Scopes: []string{"read", "write", manageScope},
			ScopeAPIs: map[string][]string{manageScope: {"UserMgmt/ResetUserPassword"}},
			Clients: []emulator.Client{
				{ID: tm.b.id, Secret: tm.b.secret, UUID: tm.b.uuid, AllowedScopes: []string{"read", "write"}},
				{ID: tm.mgr.id, Secret: tm.mgr.secret, UUID: tm.mgr.uuid, AllowedScopes: []string{"read", manageScope}, Admin: true},
			},
		},
	)
}

func (tm *teams) secrets() []namedSecret {
	return []namedSecret{
		{"team A's original secret", tm.a.secret},
		{"team B's original secret", tm.b.secret},
		{"the manager's original secret", tm.mgr.secret},
	}
}

// newTeamsEnv is newEnv with the teams' users at the tenant.
func newTeamsEnv(t *testing.T, opts ...envOption) (*env, *teams) {
	t.Helper()
	tm := newTeams(t)
	e := newEnv(t, 3600, append(opts, withTenantConfig(tm.tenantConfig))...)
	e.guard.addSecrets(tm.secrets)
	tm.def = serviceUser{client: "default", id: clientID, app: appID, secret: e.tenant.secret}
	return e, tm
}

// clientData is a complete, verified write of u's client.
func (u serviceUser) clientData(e *env, extra map[string]any) map[string]any {
	d := map[string]any{
		"tenant_url":    e.tenant.url,
		"app_id":        u.app,
		"client_id":     u.id,
		"client_secret": u.secret,
		"ca_cert":       e.tenant.caPEM,
		"scopes":        "read,write",
	}
	maps.Copy(d, extra)
	return d
}

// write writes the four clients and a role for each team: config (the default
// client, for roles default-*), mgr (manages team-b, rotates nothing itself), team-a
// (rotates itself with rotateAScope) and team-b (managed by mgr); teamA and teamB are
// more fields for team-a and team-b (a schedule). Roles: team-a-app, team-b-app and
// default-app (which names no client, as roles written before clients had names).
func (tm *teams) write(e *env, teamA, teamB map[string]any) {
	e.t.Helper()
	def := e.tenant.configData()
	def["allowed_roles"] = "default-*"
	writeClient(e, "config", def)
	writeClient(e, "clients/mgr", tm.mgr.clientData(e, map[string]any{
		"scopes": "read", "managed_clients": "team-b", "management_scopes": manageScope,
	}))
	a := map[string]any{"rotation_scopes": rotateAScope, "allowed_roles": "team-a-*"}
	maps.Copy(a, teamA)
	writeClient(e, "clients/team-a", tm.a.clientData(e, a))
	b := map[string]any{"rotation_method": "managed", "manager": "mgr", "allowed_roles": "team-b-*"}
	maps.Copy(b, teamB)
	writeClient(e, "clients/team-b", tm.b.clientData(e, b))
	e.writeRole("team-a-app", map[string]any{"client": "team-a", "scopes": "read"})
	e.writeRole("team-b-app", map[string]any{"client": "team-b", "scopes": "read,write", "allowed_scopes": "read,write"})
	e.writeRole("default-app", map[string]any{"scopes": "read"})
}

func writeClient(e *env, path string, data map[string]any) {
	e.t.Helper()
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, data); err != nil {
		e.t.Fatalf("writing %s: %v", path, err)
	}
}

// readClientConfig reads clients/<name> and checks the raw response for secrets.
func readClientConfig(t *testing.T, e *env, name string) map[string]any {
	t.Helper()
	raw, err := e.client.Logical().ReadRawWithContext(e.ctx, mountPath+"/clients/"+name)
	if err != nil {
		t.Fatalf("reading clients/%s: %v", name, err)
	}
	defer raw.Body.Close()
	sec, err := api.ParseSecret(raw.Body)
	if err != nil || sec == nil {
		t.Fatalf("parsing clients/%s: %v", name, err)
	}
	noSecretsIn(t, e, "the clients/"+name+" read", sec.Data)
	return sec.Data
}

// listedClients is the answer of LIST clients/, empty when there is none.
func listedClients(t *testing.T, e *env) []string {
	t.Helper()
	list, err := e.client.Logical().ListWithContext(e.ctx, mountPath+"/clients")
	if err != nil {
		t.Fatalf("listing clients: %v", err)
	}
	if list == nil {
		return nil
	}
	var names []string
	raw, _ := list.Data["keys"].([]any)
	for _, n := range raw {
		name, _ := n.(string)
		names = append(names, name)
	}
	return names
}

// protectedScopes are every client's rotation, management and denied scopes in these
// tests: no workload token may carry one.
var protectedScopes = []string{rotationScope, rotateAScope, manageScope, "all"}

// readTeamToken reads token/<role> and checks that the token is the user's: its sub
// and aud, and no protected scope in its claims.
func readTeamToken(t *testing.T, e *env, c *api.Client, role string, u serviceUser, params map[string][]string) *api.Secret {
	t.Helper()
	s := e.readTokenAs(c, "token/"+role, params)
	claims := parseClaims(t, accessToken(t, s))
	if claims.Aud != u.id || u.uuid != "" && claims.Sub != u.uuid {
		t.Errorf("token/%s: a token for aud %q sub %q, want client %s's user %q (sub %q)", role, claims.Aud, claims.Sub, u.client, u.id, u.uuid)
	}
	for _, sc := range strings.Fields(claims.Scope) {
		if slices.Contains(protectedScopes, sc) {
			t.Errorf("token/%s: the token carries the protected scope %q (scope %q)", role, sc, claims.Scope)
		}
	}
	return s
}

// grant is one request to the tenant's token endpoint, by what it carried.
type grant struct {
	at                time.Time
	app, id, password string
	scope             string
}

func grants(t *testing.T, e *env) []grant {
	t.Helper()
	var out []grant
	for _, r := range e.tenant.emu.Requests() {
		app, ok := strings.CutPrefix(strings.ToLower(strings.TrimSuffix(r.Path, "/")), "/oauth2/token/")
		if !ok {
			continue
		}
		g := grant{at: r.Time, app: app, scope: r.Form.Get("scope")}
		if raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Basic "); ok {
			if dec, err := base64.StdEncoding.DecodeString(raw); err == nil {
				g.id, g.password, _ = strings.Cut(string(dec), ":")
			}
		}
		out = append(out, g)
	}
	return out
}

// passwordSet is one password the tenant was asked to set, by whom and for whom.
type passwordSet struct {
	at          time.Time
	reset       bool   // ResetUserPassword, else ChangeUserPassword
	target      string // the user's UUID (reset) or login name (change, from the bearer's aud)
	old, new    string
	bearerAud   string // the user whose token authorised it
	bearerScope string
}

func passwordSets(t *testing.T, e *env) []passwordSet {
	t.Helper()
	var out []passwordSet
	for _, r := range e.tenant.emu.Requests() {
		path := strings.TrimSuffix(r.Path, "/")
		reset := strings.EqualFold(path, resetPasswordPath)
		if !reset && !strings.EqualFold(path, changePasswordPath) {
			continue
		}
		var body struct {
			ID  string `json:"ID"`
			Old string `json:"oldPassword"`
			New string `json:"newPassword"`
		}
		_ = json.Unmarshal(r.Body, &body)
		p := passwordSet{at: r.Time, reset: reset, old: body.Old, new: body.New}
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			c := parseClaims(t, tok)
			p.bearerAud, p.bearerScope = c.Aud, c.Scope
		}
		p.target = p.bearerAud
		if reset {
			p.target = strings.ToLower(body.ID)
		}
		out = append(out, p)
	}
	return out
}

// sets are the passwords the tenant was asked to set for u, in order.
func (u serviceUser) sets(all []passwordSet) []passwordSet {
	var out []passwordSet
	for _, p := range all {
		if p.reset && p.target == strings.ToLower(u.uuid) || !p.reset && p.target == u.id {
			out = append(out, p)
		}
	}
	return out
}

// current is the password the tenant accepts for u: its original or one set since.
func (u serviceUser) current(t *testing.T, e *env) string {
	t.Helper()
	candidates := []string{u.secret}
	for _, p := range u.sets(passwordSets(t, e)) {
		candidates = append(candidates, p.new)
	}
	for i := len(candidates) - 1; i >= 0; i-- {
		if e.tenant.emu.ClientSecretIs(u.id, candidates[i]) {
			return candidates[i]
		}
	}
	t.Fatalf("the tenant accepts for %s neither its original password nor any set since", u.id)
	return ""
}

// checkGrantsKeepApart checks every grant the tenant received: it names one of the
// users, on that user's app, with a password that user held (its original or one the
// tenant was asked to set for it), never another user's; and a grant that asks for a
// rotation or management scope comes from the client that owns the scope.
func checkGrantsKeepApart(t *testing.T, e *env, tm *teams) {
	t.Helper()
	sets := passwordSets(t, e)
	owned := map[string][]string{} // login name -> passwords
	byID := map[string]serviceUser{}
	for _, u := range tm.users() {
		byID[u.id] = u
		owned[u.id] = append(owned[u.id], u.secret)
		for _, p := range u.sets(sets) {
			owned[u.id] = append(owned[u.id], p.new)
		}
	}
	scopeOwner := map[string]string{rotationScope: tm.def.id, rotateAScope: tm.a.id, manageScope: tm.mgr.id}
	per := map[string]int{}
	for i, g := range grants(t, e) {
		u, ok := byID[g.id]
		if !ok {
			t.Errorf("grant #%d: a client ID %q that is none of the mount's clients", i+1, g.id)
			continue
		}
		per[u.client]++
		if g.app != strings.ToLower(u.app) {
			t.Errorf("grant #%d: client %s's user at app %s, want its app %s", i+1, u.client, g.app, u.app)
		}
		if !slices.Contains(owned[g.id], g.password) {
			whose := "no user's"
			for id, pws := range owned {
				if slices.Contains(pws, g.password) {
					whose = byID[id].client + "'s"
				}
			}
			t.Errorf("grant #%d: client %s's user authenticated with %s password (length %d, sha256 %s), not one it ever held",
				i+1, u.client, whose, len(g.password), shortHash(g.password))
		}
		for _, sc := range strings.Fields(g.scope) {
			// A protected scope is its application's: asked for at another app, the
			// tenant refuses it as unknown, and no token carries it.
			if owner, ok := scopeOwner[sc]; ok && owner != g.id && strings.EqualFold(byID[owner].app, g.app) {
				t.Errorf("grant #%d: client %s asked for %q, the protected scope of %s", i+1, u.client, sc, byID[owner].client)
			}
		}
	}
	t.Logf("grants by client: %v, each with its own user's password on its own app", per)
}

// TestClientsServeTheirOwnUsers: one mount, three service users on two apps, four
// clients (config among them). Each role's reads are tokens of its client's user,
// granted with that user's secret alone; each client rotates through its own API (the
// managed one through its manager's ResetUserPassword, with the manager's secret
// untouched); no role or reader gets any client's rotation or management scope; and the
// links between clients and roles hold (allowed_roles, manager, deletes refused while
// in use).
func TestClientsServeTheirOwnUsers(t *testing.T) {
	t.Parallel()
	e, tm := newTeamsEnv(t)
	c := e.client
	tm.write(e, nil, nil)
	l := &trustLog{t: t, e: e}
	write := func(path string, data map[string]any) (*api.Secret, error) {
		return c.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, data)
	}
	read := func(path string, params map[string][]string) (*api.Secret, error) {
		return c.Logical().ReadWithDataWithContext(e.ctx, mountPath+"/"+path, params)
	}

	// The clients as the API lists and reads them.
	if got := listedClients(t, e); !slices.Equal(got, []string{"mgr", "team-a", "team-b"}) {
		t.Errorf("LIST clients/ = %v, want mgr, team-a and team-b (the default client is config, not listed)", got)
	}
	b := readClientConfig(t, e, "team-b")
	if b["rotation_method"] != "managed" || b["manager"] != "mgr" || b["pinned_sub"] != tm.b.uuid || b["client_id"] != tm.b.id {
		t.Errorf("clients/team-b: rotation_method=%v manager=%v pinned_sub=%v client_id=%v, want managed, mgr, team B's user",
			b["rotation_method"], b["manager"], b["pinned_sub"], b["client_id"])
	}
	if d := readRotationConfig(t, e); d["client_id"] != clientID || d["name"] != "default" || d["allowed_roles"] == nil {
		t.Errorf("config: client_id=%v name=%v allowed_roles=%v, want the default client's", d["client_id"], d["name"], d["allowed_roles"])
	}
	// The default client has one path, config: a policy on config covers it whole.
	s, err := read("clients/default", nil)
	l.expect("root", "read clients/default", s, err, http.StatusBadRequest, "config")
	s, err = write("clients/default", map[string]any{"allowed_roles": "team-a-*"})
	l.expect("root", "write clients/default allowed_roles=team-a-*", s, err, http.StatusBadRequest, "config")
	s, err = write("clients/default/rotate-root", nil)
	l.expect("root", "write clients/default/rotate-root", s, err, http.StatusBadRequest, "config")

	// Each role's tokens are its client's user's, granted with that user's secret, on
	// that user's app.
	roles := []struct {
		role string
		u    serviceUser
	}{{"team-a-app", tm.a}, {"team-b-app", tm.b}, {"default-app", tm.def}, {"team-a-app", tm.a}, {"team-b-app", tm.b}}
	checkReads := func(when string) {
		t.Helper()
		for _, r := range roles {
			readTeamToken(t, e, c, r.role, r.u, nil)
			g := e.tenant.lastTokenRequest(t)
			if got := g.Header.Get("Authorization"); got != r.u.basic(r.u.current(t, e)) {
				t.Errorf("%s: the grant of token/%s did not authenticate as client %s's user with its current secret", when, r.role, r.u.client)
			}
			if want := "/oauth2/token/" + r.u.app; !strings.EqualFold(strings.TrimSuffix(g.Path, "/"), want) {
				t.Errorf("%s: the grant of token/%s went to %s, want %s", when, r.role, g.Path, want)
			}
		}
	}
	checkReads("before any rotation")

	// Rotations: team-a changes its own password with its rotation scope; team-b's is
	// reset by mgr's token of the management scope, with team-b's user named by the
	// sub its verified write pinned; mgr's own secret stays.
	for _, name := range []string{"team-a", "team-b"} {
		s, err := write("clients/"+name+"/rotate-root", nil)
		if err != nil {
			t.Fatalf("clients/%s/rotate-root: %v", name, err)
		}
		noSecretsIn(t, e, "the rotate-root response", s)
	}
	sets := passwordSets(t, e)
	if len(sets) != 2 {
		t.Fatalf("the tenant received %d password calls, want 2 (team-a's change, team-b's reset)", len(sets))
	}
	if ch := sets[0]; ch.reset || ch.bearerAud != tm.a.id || ch.bearerScope != rotateAScope || ch.old != tm.a.secret {
		t.Errorf("team-a's rotation: reset=%v by %s with scope %q, oldPassword its secret: %v; want ChangeUserPassword by team A's user with scope %q",
			ch.reset, ch.bearerAud, ch.bearerScope, ch.old == tm.a.secret, rotateAScope)
	}
	if rs := sets[1]; !rs.reset || rs.target != tm.b.uuid || rs.bearerAud != tm.mgr.id || rs.bearerScope != manageScope {
		t.Errorf("team-b's rotation: reset=%v of %s by %s with scope %q; want ResetUserPassword of %s by the manager's user with scope %q",
			rs.reset, rs.target, rs.bearerAud, rs.bearerScope, tm.b.uuid, manageScope)
	}
	for _, u := range []serviceUser{tm.a, tm.b} {
		if e.tenant.emu.ClientSecretIs(u.id, u.secret) || u.current(t, e) == u.secret {
			t.Errorf("client %s: the tenant still accepts the secret from before its rotation", u.client)
		}
	}
	if !e.tenant.emu.ClientSecretIs(tm.mgr.id, tm.mgr.secret) {
		t.Error("the manager's secret changed: a managed client's rotation must leave it")
	}
	if cfg := readClientConfig(t, e, "team-b"); cfg["rotation_state"] != "ok" || cfg["last_vault_rotation"] == nil {
		t.Errorf("clients/team-b after its rotation: rotation_state=%v last_vault_rotation=%v, want ok and a time", cfg["rotation_state"], cfg["last_vault_rotation"])
	}
	checkReads("after the rotations")

	// No role or reader gets a rotation or management scope, of its own client or of
	// another's on the same application. Scopes are an application's: team-a's
	// rotate-a means nothing at team-b's app, where the tenant refuses it as unknown.
	s, err = write("roles/team-b-m", map[string]any{"client": "team-b", "scopes": manageScope})
	l.expect("root", "roles/team-b-m client=team-b scopes=manage (mgr's management scope)", s, err, http.StatusBadRequest, protectedWords, "scopes")
	s, err = write("roles/team-b-n", map[string]any{"client": "team-b", "scopes": "read", "allowed_scopes": "read," + manageScope})
	l.expect("root", "roles/team-b-n client=team-b allowed_scopes=read,manage", s, err, http.StatusBadRequest, protectedWords)
	s, err = write("roles/team-a-r", map[string]any{"client": "team-a", "scopes": rotateAScope})
	l.expect("root", "roles/team-a-r client=team-a scopes=rotate-a (its rotation scope)", s, err, http.StatusBadRequest, protectedWords, "scopes")
	s, err = write("roles/team-b-r", map[string]any{"client": "team-b", "scopes": rotateAScope})
	l.expect("root", "roles/team-b-r client=team-b scopes=rotate-a (team-a's rotation scope, another app)", s, err, http.StatusNoContent)
	if _, err := c.Logical().DeleteWithContext(e.ctx, mountPath+"/roles/team-b-r"); err != nil {
		t.Fatal(err)
	}
	s, err = read("token/team-b-app", map[string][]string{"scope": {manageScope}})
	l.expect("root", "read token/team-b-app scope=manage", s, err, http.StatusBadRequest, protectedWords, "scope")
	s, err = read("token/team-a-app", map[string][]string{"scope": {rotateAScope}})
	l.expect("root", "read token/team-a-app scope=rotate-a", s, err, http.StatusBadRequest, protectedWords, "scope")
	s, err = write("clients/team-b", map[string]any{"scopes": "read," + manageScope})
	l.expect("root", "clients/team-b scopes=read,manage (mgr's management scope, same app)", s, err, http.StatusBadRequest, protectedWords, "scopes")

	// The links: a role may use a client that allows it, and only while it does; a
	// client is managed only by a manager that lists it; a client in use stays.
	s, err = write("roles/team-a-b", map[string]any{"client": "team-b", "scopes": "read"})
	l.expect("root", "roles/team-a-b client=team-b (team-b allows team-b-*)", s, err, http.StatusBadRequest, "client", "allowed_roles")
	s, err = write("roles/team-a-mgr", map[string]any{"client": "mgr", "scopes": "read"})
	l.expect("root", "roles/team-a-mgr client=mgr (mgr allows no role)", s, err, http.StatusBadRequest, "client")
	s, err = write("roles/team-a-none", map[string]any{"client": "team-z", "scopes": "read"})
	l.expect("root", "roles/team-a-none client=team-z (no such client)", s, err, http.StatusBadRequest, "client")
	s, err = write("clients/team-b", map[string]any{"allowed_roles": "other-*"})
	l.expect("root", "clients/team-b allowed_roles=other-*", s, err, http.StatusNoContent)
	s, err = read("token/team-b-app", nil)
	l.expect("root", "read token/team-b-app after its client no longer allows it", s, err, http.StatusBadRequest, "client")
	s, err = write("clients/team-b", map[string]any{"allowed_roles": "team-b-*"})
	l.expect("root", "clients/team-b allowed_roles=team-b-*", s, err, http.StatusNoContent)
	s, err = write("clients/team-a", map[string]any{"rotation_method": "managed", "manager": "mgr"})
	l.expect("root", "clients/team-a managed by mgr (mgr does not list it)", s, err, http.StatusBadRequest, "manager")
	s, err = write("clients/team-b", map[string]any{"manager": "team-a"})
	l.expect("root", "clients/team-b managed by team-a (no managed_clients)", s, err, http.StatusBadRequest, "manager")
	s, err = write("clients/team-b", map[string]any{"manager": "default"})
	l.expect("root", "clients/team-b managed by default (no managed_clients)", s, err, http.StatusBadRequest, "manager")
	s, err = c.Logical().DeleteWithContext(e.ctx, mountPath+"/clients/mgr")
	l.expect("root", "delete clients/mgr (manages team-b)", s, err, http.StatusBadRequest, "in use", "team-b")
	s, err = c.Logical().DeleteWithContext(e.ctx, mountPath+"/clients/team-a")
	l.expect("root", "delete clients/team-a (role team-a-app uses it)", s, err, http.StatusBadRequest, "in use", "team-a-app")
	l.log("clients and roles: refusals")

	checkReads("after the refused writes")
	checkGrantsKeepApart(t, e, tm)
	// The reads' own grants asked for the roles' scopes alone.
	for i, g := range grants(t, e) {
		if g.id == tm.b.id && g.scope != "" && g.scope != "read write" {
			t.Errorf("grant #%d: team-b's user asked for %q, want its role's read write", i+1, g.scope)
		}
	}
}

// TestClientsRotateOnTheirOwnSchedules: team-a rotates itself every 5s and team-b is
// reset by its manager every 6s, each by the engine's own timer (Community Edition).
// team-b's first reset is made at the tenant, whose answer comes 10s late: the plugin
// is killed meanwhile. The restarted plugin settles team-b with the secret the tenant
// took, before serving its tokens, and both timers go on: each client rotates again
// after the restart, tokens are served throughout, and the manager's secret never
// changes.
func TestClientsRotateOnTheirOwnSchedules(t *testing.T) {
	t.Parallel()
	const periodA, periodB, periodDefault = 5 * time.Second, 6 * time.Second, 7 * time.Second
	if _, err := vaultproc.Children(1, pluginName); err != nil {
		t.Skipf("cannot list processes here: %v", err)
	}
	e, tm := newTeamsEnv(t)
	c := e.client
	// The first reset is made at once and answered 10s later.
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "reset_password", Times: 1, Delay: 10 * time.Second, ApplyFirst: true})
	start := time.Now()
	tm.write(e, map[string]any{"rotation_period": periodA.String(), "max_retries": 0},
		map[string]any{"rotation_period": periodB.String(), "max_retries": 0})
	// The default client rotates itself too, on a schedule of its own: two self-rotated
	// clients and one managed in one mount.
	writeClient(e, "config", map[string]any{"rotation_period": periodDefault.String()})
	dueA := nextRotationTime(t, readClientConfig(t, e, "team-a"))
	dueB := nextRotationTime(t, readClientConfig(t, e, "team-b"))
	t.Logf("next_vault_rotation: team-a %s, team-b %s after the first write",
		dueA.Sub(start).Round(time.Millisecond), dueB.Sub(start).Round(time.Millisecond))
	if cfg := readClientConfig(t, e, "mgr"); cfg["next_vault_rotation"] != nil {
		t.Errorf("clients/mgr next_vault_rotation = %v with no schedule", cfg["next_vault_rotation"])
	}
	for _, role := range []string{"team-a-app", "team-b-app"} {
		e.readToken("token/"+role, nil)
	}

	// team-a's first scheduled change, then team-b's reset, made and not yet answered.
	// The tenant records a request as it arrives and makes the reset just after: wait
	// for both.
	waitFor(t, 15*time.Second, "team-b's scheduled reset to be made at the tenant", func() bool {
		sets := tm.b.sets(passwordSets(t, e))
		return len(sets) == 1 && e.tenant.emu.ClientSecretIs(tm.b.id, sets[0].new)
	})
	reset := tm.b.sets(passwordSets(t, e))[0]
	if n := len(tm.a.sets(passwordSets(t, e))); n != 1 {
		t.Logf("team-a had %d password changes by team-b's first reset (its first due time was %s before team-b's)", n, dueB.Sub(dueA).Round(time.Millisecond))
	}
	e.readToken("token/team-a-app", nil) // team-a is served while team-b's reset waits
	killedAt := time.Now()
	killPlugin(t, e)

	// A read of team-b's tokens starts the plugin again, whose start settles team-b's
	// rotation first: the grant is made with the secret the tenant took.
	readTeamToken(t, e, c, "team-b-app", tm.b, nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != tm.b.basic(reset.new) {
		t.Error("the first read of team-b's tokens after the restart did not authenticate with the secret its reset set")
	}
	waitForLogLine(t, e, "[WARN]", "settling an unfinished rotation")
	cfg := readClientConfig(t, e, "team-b")
	t.Logf("restarted and settled %s after the kill: clients/team-b rotation_state=%v last_vault_rotation=%v last_rotation_error=%q",
		time.Since(killedAt).Round(time.Millisecond), cfg["rotation_state"], cfg["last_vault_rotation"], stringField(cfg, "last_rotation_error"))
	if cfg["rotation_state"] != "ok" || cfg["last_vault_rotation"] == nil {
		t.Errorf("clients/team-b after the restart: rotation_state=%v last_vault_rotation=%v, want ok and a time", cfg["rotation_state"], cfg["last_vault_rotation"])
	}
	st := e.tenant.emu.ClientStats(tm.b.id)
	t.Logf("team-b's user: %d failed logins so far", st.FailedLogins)
	if st.FailedLogins > 1 {
		t.Errorf("team-b's user had %d failed logins by the settle, want at most 1 (the settle's try of the secret from before the reset)", st.FailedLogins)
	}

	// Both timers run in the restarted plugin: each client rotates again, and every
	// read of either role is served meanwhile.
	restartedAt := time.Now()
	rotatedSince := func(u serviceUser) int {
		n := 0
		for _, p := range u.sets(passwordSets(t, e)) {
			if p.at.After(restartedAt) {
				n++
			}
		}
		return n
	}
	reads := 0
	deadline := restartedAt.Add(2 * periodDefault)
	for rotatedSince(tm.a) == 0 || rotatedSince(tm.b) == 0 || rotatedSince(tm.def) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s after the restart team-a has rotated %d times, team-b %d and the default client %d, want each at least once", 2*periodDefault, rotatedSince(tm.a), rotatedSince(tm.b), rotatedSince(tm.def))
		}
		readTeamToken(t, e, c, "team-a-app", tm.a, nil)
		readTeamToken(t, e, c, "team-b-app", tm.b, nil)
		reads += 2
		time.Sleep(400 * time.Millisecond)
	}
	// The schedules end, so the last checks see settled secrets.
	for _, path := range []string{"clients/team-a", "clients/team-b", "config"} {
		writeClient(e, path, map[string]any{"disable_automated_rotation": true})
	}
	sets := passwordSets(t, e)
	var offsets []string
	for _, p := range sets {
		who := "team-a change"
		switch {
		case p.reset:
			who = "team-b reset"
		case p.target == tm.def.id:
			who = "default change"
		}
		offsets = append(offsets, who+" at "+p.at.Sub(start).Round(time.Millisecond).String())
	}
	t.Logf("%d reads after the restart, all served; password calls: %v", reads, offsets)

	// Each call was its client's own: team-a's with its own token of its rotation
	// scope, team-b's with the manager's token of the management scope, for team-b's
	// user; none for the manager, whose secret is the one it started with.
	for i, p := range sets {
		switch {
		case !p.reset && p.target == tm.def.id:
			if p.bearerAud != tm.def.id || p.bearerScope != rotationScope {
				t.Errorf("password call #%d: a change of the default client's user by %s with scope %q, want its own with %q", i+1, p.bearerAud, p.bearerScope, rotationScope)
			}
		case !p.reset && (p.bearerAud != tm.a.id || p.bearerScope != rotateAScope):
			t.Errorf("password call #%d: a change by %s with scope %q, want team-a's user with %q", i+1, p.bearerAud, p.bearerScope, rotateAScope)
		case p.reset && (p.bearerAud != tm.mgr.id || p.bearerScope != manageScope || p.target != tm.b.uuid):
			t.Errorf("password call #%d: a reset of %s by %s with scope %q, want team-b's user by the manager's with %q", i+1, p.target, p.bearerAud, p.bearerScope, manageScope)
		}
	}
	// Each on its own schedule: the k-th call of a client comes no earlier than its
	// k-th due time, so neither ran on the other's period nor served a due time twice.
	for _, sc := range []struct {
		u      serviceUser
		due    time.Time
		period time.Duration
	}{{tm.a, dueA, periodA}, {tm.b, dueB, periodB}} {
		for k, p := range sc.u.sets(sets) {
			if due := sc.due.Add(time.Duration(k) * sc.period); p.at.Before(due) {
				t.Errorf("client %s: password call #%d came %s before its due time #%d (rotation_period %s)", sc.u.client, k+1, due.Sub(p.at).Round(time.Millisecond), k+1, sc.period)
			}
		}
	}
	if !e.tenant.emu.ClientSecretIs(tm.mgr.id, tm.mgr.secret) {
		t.Error("the manager's secret changed")
	}
	for _, r := range []struct {
		role string
		u    serviceUser
	}{{"team-a-app", tm.a}, {"team-b-app", tm.b}} {
		cur := r.u.current(t, e)
		if cur == r.u.secret {
			t.Errorf("client %s: the tenant still accepts its original secret", r.u.client)
		}
		readTeamToken(t, e, c, r.role, r.u, nil)
		if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != r.u.basic(cur) {
			t.Errorf("token/%s: the last grant did not authenticate with the secret the tenant accepts for %s", r.role, r.u.client)
		}
		if cfg := readClientConfig(t, e, r.u.client); cfg["rotation_state"] != "ok" {
			t.Errorf("clients/%s rotation_state = %v, want ok", r.u.client, cfg["rotation_state"])
		}
	}
	checkGrantsKeepApart(t, e, tm)
}

// preClientsCommit is the last commit before clients (issue 19): the engine of a
// mount with config and roles only, which a mount upgraded from it was written with.
const preClientsCommit = "1fa8cad3c75ba307290ef38d768ab0cb97d4a90d"

// versionPreClients is the version that build is registered under.
const versionPreClients = "v0.0.9-e2e-pre-clients"

// preClientsPlugin builds the engine as it was at preClientsCommit, from the
// repository's history, into the plugin directory, once per run. It returns false when
// that cannot be done here (no git, or a copy of the tree without that history).
func preClientsPlugin(t *testing.T) bool {
	t.Helper()
	buildsMu.Lock()
	b := builds[versionPreClients]
	if b == nil {
		b = &pluginBuild{version: versionPreClients}
		builds[versionPreClients] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		src, err := os.MkdirTemp("", "cyberark-e2e-pre-clients-")
		if err != nil {
			b.err = err
			return
		}
		defer os.RemoveAll(src)
		tarball := filepath.Join(src, "tree.tar")
		archive := exec.CommandContext(ctx, "git", "archive", "--output", tarball, preClientsCommit) //nolint:gosec // a constant commit
		archive.Dir = moduleRoot
		if out, err := archive.CombinedOutput(); err != nil {
			b.err = errNoHistory{strings.TrimSpace(string(out)) + ": " + err.Error()}
			return
		}
		tree := filepath.Join(src, "tree")
		if err := os.Mkdir(tree, 0o700); err != nil {
			b.err = err
			return
		}
		untar := exec.CommandContext(ctx, "tar", "-xf", tarball, "-C", tree) //nolint:gosec // paths in this test's temporary directory
		if out, err := untar.CombinedOutput(); err != nil {
			b.err = errNoHistory{strings.TrimSpace(string(out)) + ": " + err.Error()}
			return
		}
		b.Plugin, b.err = vaultproc.BuildPlugin(ctx, vaultproc.Build{
			ModuleRoot: tree,
			Package:    "./cmd/" + pluginName,
			Name:       pluginName,
			Version:    versionPreClients,
			PluginDir:  pluginDir,
			File:       pluginName + "-" + versionPreClients,
		})
	})
	var noHistory errNoHistory
	switch {
	case b.err == nil:
		return true
	case errors.As(b.err, &noHistory):
		t.Logf("cannot build the engine of %s from this tree's history (%s): the upgrade is played as a reload of this build", preClientsCommit[:7], noHistory.why)
		return false
	default:
		t.Fatalf("building the engine of %s: %v", preClientsCommit[:7], b.err)
		return false
	}
}

type errNoHistory struct{ why string }

func (e errNoHistory) Error() string { return "no history: " + e.why }

// TestClientsUpgradeFromConfigOnly: a config and roles written by the engine from
// before clients (built from preClientsCommit) are served after the upgrade to this
// build with no write at all: the role names no client and gets the default client's
// tokens, the config reads as the default client, and a lease of the old build is
// revoked at the tenant by the new one. Where the old engine cannot be built, the same
// runs across a reload of this build.
func TestClientsUpgradeFromConfigOnly(t *testing.T) {
	t.Parallel()
	from := versionV1
	if preClientsPlugin(t) {
		from = versionPreClients
	}
	e := newEnv(t, 3600, withPluginVersion(from))
	c := e.client
	e.configure()
	e.writeRole("legacy", map[string]any{"scopes": "read"})
	before := e.readToken("token/legacy", nil)
	e.readToken("token", nil)
	if m := e.vault.mountInfo(t, mountPath); m.RunningVersion != from {
		t.Fatalf("before the upgrade the mount runs %s, want %s", m.RunningVersion, from)
	}

	if from != versionV1 {
		v1 := plugin(t, versionV1)
		e.vault.register(t, v1)
		version := versionV1
		if err := c.Sys().TuneMountAllowNilWithContext(e.ctx, mountPath, api.TuneMountConfigInput{PluginVersion: &version}); err != nil {
			t.Fatalf("tuning plugin_version: %v", err)
		}
	}
	if _, err := c.Sys().ReloadPluginWithContext(e.ctx, &api.ReloadPluginInput{Mounts: []string{mountPath}}); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if m := e.vault.mountInfo(t, mountPath); m.RunningVersion != versionV1 {
		t.Fatalf("after the upgrade the mount runs %s, want %s", m.RunningVersion, versionV1)
	}
	t.Logf("upgraded from %s to %s with no write", from, versionV1)

	// No write: the role and config from before serve tokens.
	for _, path := range []string{"token/legacy", "token"} {
		s := e.readToken(path, nil)
		if cl := parseClaims(t, accessToken(t, s)); cl.Aud != clientID {
			t.Errorf("%s after the upgrade: a token for %q, want the config's client %q", path, cl.Aud, clientID)
		}
		if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != e.tenant.basicCredentials() {
			t.Errorf("%s after the upgrade: the grant did not authenticate with the config's secret", path)
		}
	}
	role, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/roles/legacy")
	if err != nil || role == nil {
		t.Fatalf("reading roles/legacy: %v", err)
	}
	if role.Data["client"] != "default" {
		t.Errorf("roles/legacy client = %v after the upgrade, want default", role.Data["client"])
	}
	cfg := readRotationConfig(t, e)
	if cfg["name"] != "default" || cfg["rotation_method"] != "self" || cfg["client_id"] != clientID {
		t.Errorf("config after the upgrade: name=%v rotation_method=%v client_id=%v, want default, self, the config's", cfg["name"], cfg["rotation_method"], cfg["client_id"])
	}
	if got := listedClients(t, e); len(got) != 0 && !slices.Equal(got, []string{"default"}) {
		t.Errorf("LIST clients/ after the upgrade = %v, want no client but the default one", got)
	}
	// A lease from before the upgrade ends with a revocation at the tenant.
	if err := c.Sys().RevokeWithContext(e.ctx, before.LeaseID); err != nil {
		t.Errorf("revoking a lease from before the upgrade: %v", err)
	}
	if !e.tenant.emu.Revoked(accessToken(t, before)) {
		t.Error("the token of a lease from before the upgrade was not revoked at the tenant")
	}
	// And the role goes on being served by the default client after a config write,
	// as roles written before clients had names do.
	e.configure()
	e.readToken("token/legacy", nil)
}

// TestClientPoliciesKeepTeamsApart: team A holds the Vault policy of
// examples/policies/team-a.hcl (clients/team-a*, roles/team-a*, token/team-a*). It
// reads its tokens, rotates its client and writes its roles; Vault refuses it every
// other team's path (403), and the engine refuses it every way to reach another
// client through a path it holds (400): a role naming team-b or the default client,
// a manager for its client that does not list it, another client's protected scope.
func TestClientPoliciesKeepTeamsApart(t *testing.T) {
	t.Parallel()
	e, tm := newTeamsEnv(t)
	tm.write(e, nil, nil)
	teamA := teamAClient(t, e)
	l := &trustLog{t: t, e: e}
	write := func(path string, data map[string]any) (*api.Secret, error) {
		return teamA.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, data)
	}
	read := func(path string) (*api.Secret, error) {
		return teamA.Logical().ReadWithContext(e.ctx, mountPath+"/"+path)
	}

	// Its own.
	readTeamToken(t, e, teamA, "team-a-app", tm.a, nil)
	s, err := write("roles/team-a-batch", map[string]any{"client": "team-a", "scopes": "read,write"})
	l.expect("team-a", "write roles/team-a-batch client=team-a", s, err, http.StatusNoContent)
	readTeamToken(t, e, teamA, "team-a-batch", tm.a, nil)
	s, err = read("clients/team-a")
	l.expect("team-a", "read clients/team-a", s, err, http.StatusOK)
	if s != nil {
		noSecretsIn(t, e, "team A's read of its client", s.Data)
	}
	s, err = write("clients/team-a/rotate-root", nil)
	l.expect("team-a", "write clients/team-a/rotate-root", s, err, http.StatusOK)
	readTeamToken(t, e, teamA, "team-a-app", tm.a, nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != tm.a.basic(tm.a.current(t, e)) {
		t.Error("after team A's rotation its read did not authenticate with its new secret")
	}

	// Others' paths: Vault refuses them.
	s, err = read("token/team-b-app")
	l.expect("team-a", "read token/team-b-app", s, err, http.StatusForbidden)
	s, err = read("token/default-app")
	l.expect("team-a", "read token/default-app", s, err, http.StatusForbidden)
	s, err = write("clients/team-b", map[string]any{"allowed_roles": "team-a-*"})
	l.expect("team-a", "update clients/team-b allowed_roles=team-a-*", s, err, http.StatusForbidden)
	s, err = write("clients/team-b/rotate-root", nil)
	l.expect("team-a", "write clients/team-b/rotate-root", s, err, http.StatusForbidden)
	s, err = write("clients/mgr", map[string]any{"managed_clients": "team-b,team-a"})
	l.expect("team-a", "update clients/mgr managed_clients=team-b,team-a", s, err, http.StatusForbidden)
	s, err = write("config", map[string]any{"allowed_roles": "default-*,team-a-*"})
	l.expect("team-a", "update config allowed_roles=default-*,team-a-*", s, err, http.StatusForbidden)
	s, err = write("roles/team-b-app", map[string]any{"client": "team-a"})
	l.expect("team-a", "update roles/team-b-app client=team-a", s, err, http.StatusForbidden)

	// Paths it holds that would reach another client: the engine refuses them.
	s, err = write("roles/team-a-evil", map[string]any{"client": "team-b", "scopes": "read"})
	l.expect("team-a", "write roles/team-a-evil client=team-b (allowed_roles team-b-*)", s, err, http.StatusBadRequest, "client", "allowed_roles")
	s, err = write("roles/team-a-x", map[string]any{"client": "default", "scopes": "read"})
	l.expect("team-a", "write roles/team-a-x client=default (allowed_roles default-*)", s, err, http.StatusBadRequest, "client", "allowed_roles")
	s, err = write("roles/team-a-y", map[string]any{"scopes": "read"})
	l.expect("team-a", "write roles/team-a-y with no client (the default client)", s, err, http.StatusBadRequest, "client")
	s, err = write("roles/team-a-mgr", map[string]any{"client": "mgr", "scopes": "read"})
	l.expect("team-a", "write roles/team-a-mgr client=mgr (allows no role)", s, err, http.StatusBadRequest, "client")
	s, err = write("roles/team-a-app", map[string]any{"client": "team-b"})
	l.expect("team-a", "update roles/team-a-app client=team-b", s, err, http.StatusBadRequest, "client")
	s, err = write("clients/team-a", map[string]any{"rotation_method": "managed", "manager": "mgr"})
	l.expect("team-a", "update clients/team-a rotation_method=managed manager=mgr", s, err, http.StatusBadRequest, "manager")
	// mgr's management scope is team-b's app's: at team-a's app the tenant knows no such
	// scope, and the engine lets the tenant say so.
	s, err = write("clients/team-a", map[string]any{"scopes": "read," + manageScope})
	l.expect("team-a", "update clients/team-a scopes=read,manage (unknown at its app)", s, err, http.StatusBadRequest, "invalid_scope")
	s, err = write("roles/team-a-r", map[string]any{"client": "team-a", "scopes": rotateAScope})
	l.expect("team-a", "write roles/team-a-r client=team-a scopes=rotate-a", s, err, http.StatusBadRequest, protectedWords)
	s, err = teamA.Logical().DeleteWithContext(e.ctx, mountPath+"/clients/team-a")
	l.expect("team-a", "delete clients/team-a (its roles use it)", s, err, http.StatusBadRequest, "in use")
	l.log("team A's policy")

	// Nothing of it reached team B: its tokens are still its own, with its secret.
	readTeamToken(t, e, e.client, "team-b-app", tm.b, nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != tm.b.basic(tm.b.secret) {
		t.Error("team B's read did not authenticate with its own, unrotated secret")
	}
	if role, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/roles/team-b-app"); err != nil || role == nil || role.Data["client"] != "team-b" {
		t.Errorf("roles/team-b-app after team A's attempts: %v (%v), want client team-b", role, err)
	}
	checkGrantsKeepApart(t, e, tm)
}

// TestClientOwnerCannotBlockAnotherTeam: team A, with examples/policies/team-a.hcl
// only, makes scopes protected on clients of its own (denied_scopes, rotation_scopes,
// management_scopes on clients/team-a or a new clients/team-a2, verified or not). Each
// protected scope is one no workload token of any client may carry, so none of these
// may take a scope that team B's client and role already hand out: whatever the engine
// answers the write, team B's tokens are served after it.
func TestClientOwnerCannotBlockAnotherTeam(t *testing.T) {
	t.Parallel()
	e, tm := newTeamsEnv(t)
	tm.write(e, nil, nil)
	teamA := teamAClient(t, e)
	l := &trustLog{t: t, e: e}
	attempts := []struct {
		path string
		data map[string]any
	}{
		{"clients/team-a", map[string]any{"scopes": "read", "denied_scopes": "all,write"}},
		{"clients/team-a", map[string]any{"scopes": "read", "denied_scopes": "all", "rotation_scopes": rotateAScope + ",write"}},
		{"clients/team-a2", tm.a.clientData(e, map[string]any{"scopes": "read", "management_scopes": "write"})},
		// The same on team B's app, unverified: the tenant would refuse team A's user
		// there, so only a write that does not ask it is stored.
		{"clients/team-a3", tm.a.clientData(e, map[string]any{"app_id": appB, "scopes": "read", "management_scopes": "write", "verify_connection": false})},
	}
	for _, a := range attempts {
		if secret, ok := a.data["client_secret"]; ok && secret == tm.a.secret {
			a.data["client_secret"] = tm.a.current(t, e)
		}
		s, err := teamA.Logical().WriteWithContext(e.ctx, mountPath+"/"+a.path, a.data)
		got, msg := l.outcome(s, err)
		l.rows = append(l.rows, trustAttempt{"team-a", "write " + a.path + " " + describeFields(a.data), got, msg[:min(len(msg), 100)]})
		s, err = e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token/team-b-app")
		l.expect("root", "  then read token/team-b-app", s, err, http.StatusOK)
		if err == nil && s != nil {
			e.tenant.mustHaveIssued(t, accessToken(t, s))
		}
		// Put team A's clients back as they were for the next attempt.
		for _, extra := range []string{"team-a2", "team-a3"} {
			if _, err := e.client.Logical().DeleteWithContext(e.ctx, mountPath+"/clients/"+extra); err != nil {
				t.Fatalf("deleting clients/%s: %v", extra, err)
			}
		}
		if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/clients/team-a", map[string]any{
			"scopes": "read,write", "denied_scopes": "all", "rotation_scopes": rotateAScope,
		}); err != nil {
			t.Fatalf("restoring clients/team-a: %v", err)
		}
	}
	l.log("team A's protected scopes against team B's tokens")
}

// describeFields names a write's fields other than the connection's, for a log.
func describeFields(data map[string]any) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(data)) {
		switch k {
		case "tenant_url", "client_id", "client_secret", "ca_cert":
			continue
		}
		out = append(out, k+"="+strings.TrimSpace(strings.ReplaceAll(fmtAny(data[k]), " ", "")))
	}
	return strings.Join(out, " ")
}

func fmtAny(v any) string {
	b, _ := json.Marshal(v)
	return strings.Trim(string(b), `"`)
}

// fakeTokenEndpoint stands in front of the tenant and answers POST /evil/token as a
// token endpoint that a client's writer controls would: any credentials get a JWT whose
// sub is the one armed, unsigned. It keeps the Basic credentials it received.
type fakeTokenEndpoint struct {
	next http.Handler
	sub  string

	mu       sync.Mutex
	received []string // "client_id:password"
}

const fakeTokenPath = "/evil/token"

func (f *fakeTokenEndpoint) wrap(next http.Handler) http.Handler {
	f.next = next
	return f
}

func (f *fakeTokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != fakeTokenPath {
		f.next.ServeHTTP(w, r)
		return
	}
	_ = r.ParseForm()
	id := ""
	if raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Basic "); ok {
		if dec, err := base64.StdEncoding.DecodeString(raw); err == nil {
			f.mu.Lock()
			f.received = append(f.received, string(dec))
			f.mu.Unlock()
			id, _, _ = strings.Cut(string(dec), ":")
		}
	}
	now := time.Now().Unix()
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(map[string]any{"sub": f.sub, "aud": id, "iat": now, "exp": now + 3600, "scope": r.Form.Get("scope")})
	tok := enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims) + "." + enc.EncodeToString([]byte("not-a-signature"))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 3600, "scope": r.Form.Get("scope")})
}

func (f *fakeTokenEndpoint) secrets() []namedSecret {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []namedSecret
	for i, c := range f.received {
		_, pw, _ := strings.Cut(c, ":")
		out = append(out, namedSecret{"password #" + strconv.Itoa(i+1) + " the fake token endpoint received", pw})
	}
	return out
}

// TestManagedClientCannotAimItsManager: whoever may write a managed client (team B,
// with the policy of examples/policies/team-a.hcl for team-b) points its token_url at an
// endpoint of its own, which answers the verified write with a token whose sub is
// another user of the tenant: the manager's own. The sub is pinned, and the managed
// client's rotation would then have the manager reset that user's password, and send
// the new one to that endpoint in the settle's grant. Neither may happen: the manager's
// password stays, and no password the tenant accepts reaches the endpoint.
func TestManagedClientCannotAimItsManager(t *testing.T) {
	t.Parallel()
	fake := &fakeTokenEndpoint{}
	tm := newTeams(t)
	fake.sub = tm.mgr.uuid
	e := newEnv(t, 3600, withTenantConfig(tm.tenantConfig), withTenantHandler(fake.wrap))
	e.guard.addSecrets(tm.secrets)
	e.guard.addSecrets(fake.secrets)
	tm.def = serviceUser{client: "default", id: clientID, app: appID, secret: e.tenant.secret}
	tm.write(e, nil, nil)
	policy, err := os.ReadFile(filepath.Join(moduleRoot, "examples", "policies", "team-a.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	token := e.tokenWithPolicy("cyberark-team-b", strings.ReplaceAll(string(policy), "team-a", "team-b"))
	e.guard.addSecrets(func() []namedSecret { return []namedSecret{{"team B's Vault token", token}} })
	teamB := newClient(t, e.vault.addr, token)
	l := &trustLog{t: t, e: e}

	s, err := teamB.Logical().WriteWithContext(e.ctx, mountPath+"/clients/team-b", map[string]any{
		"token_url":     e.tenant.url + fakeTokenPath,
		"client_secret": "Chosen-By-Team-B-1",
		"verify_tokens": "off",
	})
	got, msg := l.outcome(s, err)
	l.rows = append(l.rows, trustAttempt{"team-b", "clients/team-b token_url=<its own endpoint> verify_tokens=off", got, msg[:min(len(msg), 100)]})
	if got == http.StatusNoContent || got == http.StatusOK {
		if cfg := readClientConfig(t, e, "team-b"); cfg["pinned_sub"] == tm.mgr.uuid {
			t.Errorf("clients/team-b pinned the manager's own user (sub %s) from a token of an endpoint its writer chose", tm.mgr.uuid)
		}
		s, err = teamB.Logical().WriteWithContext(e.ctx, mountPath+"/clients/team-b/rotate-root", nil)
		got, msg = l.outcome(s, err)
		l.rows = append(l.rows, trustAttempt{"team-b", "clients/team-b/rotate-root", got, msg[:min(len(msg), 100)]})
	}
	l.log("team B aims the manager")
	if !e.tenant.emu.ClientSecretIs(tm.mgr.id, tm.mgr.secret) {
		t.Error("the manager's password was reset through a managed client's rotation")
	}
	for _, u := range tm.users() {
		for _, c := range fake.secrets() {
			if u.id != tm.b.id && e.tenant.emu.ClientSecretIs(u.id, c.value) {
				t.Errorf("the fake token endpoint received %s, the password the tenant now accepts for %s's user", c.label, u.client)
			}
		}
	}
	for _, p := range passwordSets(t, e) {
		if p.reset && p.target != tm.b.uuid {
			t.Errorf("the manager's token reset the password of user %s, which is not the managed client's", p.target)
		}
	}
}

// TestManagerTokenStaysWithItsTenant: the manager's tenant_url moves (here to the same
// emulator under the name localhost: to the engine, another tenant) while it manages
// team-b, which stays at 127.0.0.1. A token of the manager carries the right to reset
// any user's password at the tenant that issued it, so it may go to that tenant only:
// either the move is refused while the manager manages a client elsewhere, or team-b's
// rotation is, or it sends the reset where the token came from. Every reset the tenant
// receives is sent to the host its bearer token was issued by.
func TestManagerTokenStaysWithItsTenant(t *testing.T) {
	t.Parallel()
	e, tm := newTeamsEnv(t)
	tm.write(e, nil, nil)
	l := &trustLog{t: t, e: e}
	moved := strings.Replace(e.tenant.url, "127.0.0.1", "localhost", 1)
	s, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/clients/mgr", map[string]any{
		"tenant_url": moved, "client_secret": tm.mgr.secret,
	})
	got, msg := l.outcome(s, err)
	l.rows = append(l.rows, trustAttempt{"root", "clients/mgr tenant_url=<another tenant> (it manages team-b at 127.0.0.1)", got, msg[:min(len(msg), 100)]})
	s, err = e.client.Logical().WriteWithContext(e.ctx, mountPath+"/clients/team-b/rotate-root", nil)
	got, msg = l.outcome(s, err)
	l.rows = append(l.rows, trustAttempt{"root", "clients/team-b/rotate-root", got, msg[:min(len(msg), 100)]})
	l.log("the manager moves")
	for i, r := range e.tenant.emu.Requests() {
		if !strings.EqualFold(strings.TrimSuffix(r.Path, "/"), resetPasswordPath) {
			continue
		}
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		iss := parseClaims(t, tok).Iss
		if !strings.HasPrefix(iss, "https://"+r.Host+"/") {
			t.Errorf("request #%d: a reset sent to %s with the manager's token issued by %s", i+1, r.Host, iss)
		}
	}
}

// teamAClient is a Vault client whose token holds examples/policies/team-a.hcl alone.
func teamAClient(t *testing.T, e *env) *api.Client {
	t.Helper()
	policy, err := os.ReadFile(filepath.Join(moduleRoot, "examples", "policies", "team-a.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	token := e.tokenWithPolicy("cyberark-team-a", string(policy))
	e.guard.addSecrets(func() []namedSecret { return []namedSecret{{"team A's Vault token", token}} })
	return newClient(t, e.vault.addr, token)
}
