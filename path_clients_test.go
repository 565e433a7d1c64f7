package cyberark

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

const (
	teamAUser   = "svc-team-a@tenant.example"
	teamASecret = "Team-A-Secret-0001"
	teamAUUID   = "0a0a0a0a-0000-4000-8000-00000000000a"
	teamBUser   = "svc-team-b@tenant.example"
	teamBSecret = "Team-B-Secret-0002"
	teamBUUID   = "0b0b0b0b-0000-4000-8000-00000000000b"
	mgrUser     = "svc-manager@tenant.example"
	mgrSecret   = "Manager-Secret-0003"
	otherApp    = "TeamBApp"
)

// newClientsEnv is a tenant with three service users on two apps: team A's on the
// engine's app, team B's on another, and a manager, an administrator whose "manage"
// scope may reset passwords.
func newClientsEnv(t *testing.T) *testEnv {
	t.Helper()
	return newTestEnvWith(t, func(c *emulator.Config) {
		c.Apps[0].Scopes = append(c.Apps[0].Scopes, "rotate", "manage")
		c.Apps[0].ScopeAPIs = map[string][]string{"rotate": {"UserMgmt/ChangeUserPassword"}, "manage": {"UserMgmt/ResetUserPassword"}}
		c.Apps[0].Clients = append(c.Apps[0].Clients,
			emulator.Client{ID: teamAUser, Secret: teamASecret, UUID: teamAUUID},
			emulator.Client{ID: mgrUser, Secret: mgrSecret, Admin: true})
		c.Apps = append(c.Apps, emulator.App{ID: otherApp, Scopes: []string{"read"},
			Clients: []emulator.Client{{ID: teamBUser, Secret: teamBSecret, UUID: teamBUUID}}})
	})
}

func (e *testEnv) clientData(app, id, secret string, extra map[string]any) map[string]any {
	data := map[string]any{"tenant_url": e.url, "app_id": app, "client_id": id, "client_secret": secret, "ca_cert": e.caPEM, "scopes": "read"}
	for k, v := range extra {
		data[k] = v
	}
	return data
}

// writeClients stores team-a (self-rotated), mgr (manages team-b) and team-b (managed),
// with a role each.
func (e *testEnv) writeClients(t *testing.T) {
	t.Helper()
	e.mustRequest(t, logical.CreateOperation, "clients/team-a", e.clientData(testAppID, teamAUser, teamASecret,
		map[string]any{"rotation_scopes": "rotate", "allowed_roles": "team-a-*"}))
	e.mustRequest(t, logical.CreateOperation, "clients/mgr", e.clientData(testAppID, mgrUser, mgrSecret,
		map[string]any{"managed_clients": "team-b", "management_scopes": "manage"}))
	e.mustRequest(t, logical.CreateOperation, "clients/team-b", e.clientData(otherApp, teamBUser, teamBSecret,
		map[string]any{"rotation_method": "managed", "manager": "mgr", "allowed_roles": "team-b-*"}))
	e.mustRequest(t, logical.CreateOperation, "roles/team-a-app", map[string]any{"client": "team-a", "scopes": "read"})
	e.mustRequest(t, logical.CreateOperation, "roles/team-b-app", map[string]any{"client": "team-b", "scopes": "read"})
}

// subOf is the sub claim of a read's token.
func subOf(t *testing.T, resp *logical.Response) string {
	t.Helper()
	jwt, err := client.ParseJWT(resp.Data["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return jwt.String("sub")
}

// TestClientsServeTheirOwnUsers: each role's tokens are its client's service user's,
// granted with that client's secret at its app; config stays the default client.
func TestClientsServeTheirOwnUsers(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.configure(t)
	e.writeClients(t)
	e.mustRequest(t, logical.CreateOperation, "roles/legacy", map[string]any{"scopes": "read"})

	if sub := subOf(t, e.mustRequest(t, logical.ReadOperation, "token/team-a-app", nil)); sub != teamAUUID {
		t.Errorf("team-a-app's token is for %s, want team A's user", sub)
	}
	if sub := subOf(t, e.mustRequest(t, logical.ReadOperation, "token/team-b-app", nil)); sub != teamBUUID {
		t.Errorf("team-b-app's token is for %s, want team B's user", sub)
	}
	e.mustRequest(t, logical.ReadOperation, "token/legacy", nil) // the default client, as before

	for _, r := range e.emu.Requests() {
		if !strings.HasPrefix(strings.ToLower(r.Path), "/oauth2/token/") {
			continue
		}
		user, _, _ := decodeBasic(r.Header.Get("Authorization"))
		app := strings.TrimPrefix(r.Path, "/oauth2/token/")
		want := map[string]string{teamAUser: testAppID, teamBUser: otherApp, mgrUser: testAppID, testClientID: testAppID}[user]
		if app != want {
			t.Errorf("a grant for %s went to app %s, want %s", user, app, want)
		}
	}

	list := e.mustRequest(t, logical.ListOperation, "clients/", nil).Data["keys"].([]string)
	if strings.Join(list, ",") != "mgr,team-a,team-b" {
		t.Errorf("clients/ lists %v", list)
	}
	read := e.mustRequest(t, logical.ReadOperation, "clients/team-b", nil)
	raw, _ := json.Marshal(read.Data)
	if strings.Contains(string(raw), teamBSecret) || read.Data["rotation_method"] != "managed" || read.Data["manager"] != "mgr" {
		t.Errorf("clients/team-b read: rotation_method %v, manager %v, secret shown %v",
			read.Data["rotation_method"], read.Data["manager"], strings.Contains(string(raw), teamBSecret))
	}
	// The default client has one path: a policy on config must hold.
	resp, err := e.request(t, logical.ReadOperation, "clients/default", nil)
	assertBadRequest(t, resp, err, "name")
}

// decodeBasic splits a Basic Authorization header.
func decodeBasic(h string) (user, secret string, ok bool) {
	r, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "/", nil)
	r.Header.Set("Authorization", h)
	return r.BasicAuth()
}

// TestAllowedRoles: a client says which roles may use it, at the write and at every
// read, so that a writer of roles/team-a* cannot reach team B's client.
func TestAllowedRoles(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.writeClients(t)

	resp, err := e.request(t, logical.CreateOperation, "roles/team-a-evil", map[string]any{"client": "team-b", "scopes": "read"})
	assertBadRequest(t, resp, err, "client")
	resp, err = e.request(t, logical.CreateOperation, "roles/team-a-x", map[string]any{"client": "nobody"})
	assertBadRequest(t, resp, err, "client")

	// team-b's list changes after its role was written: reads of the role stop.
	e.mustRequest(t, logical.UpdateOperation, "clients/team-b", map[string]any{"allowed_roles": "team-b-other"})
	resp, err = e.request(t, logical.ReadOperation, "token/team-b-app", nil)
	assertBadRequest(t, resp, err, "client")

	// Team A's role is not touched by team B's list; the default client, once its list
	// is set, takes only the roles it names.
	resp, err = e.request(t, logical.ReadOperation, "token/team-a-app", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("team-a-app: %v %v", resp.Error(), err)
	}
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"allowed_roles": "legacy-*"})
	resp, err = e.request(t, logical.CreateOperation, "roles/team-a-y", map[string]any{"scopes": "read"})
	assertBadRequest(t, resp, err, "client")
	e.mustRequest(t, logical.CreateOperation, "roles/legacy-1", map[string]any{"scopes": "read"})
}

// TestClientDeleteRefusedWhileUsed: roles and managed clients hold their client.
func TestClientDeleteRefusedWhileUsed(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.writeClients(t)
	for _, name := range []string{"team-a", "mgr"} {
		resp, err := e.request(t, logical.DeleteOperation, "clients/"+name, nil)
		assertBadRequest(t, resp, err, "name")
	}
	e.mustRequest(t, logical.DeleteOperation, "roles/team-a-app", nil)
	e.mustRequest(t, logical.DeleteOperation, "clients/team-a", nil)
	if resp := e.mustRequest(t, logical.ReadOperation, "clients/team-a", nil); resp != nil {
		t.Error("clients/team-a still reads after its delete")
	}
}

// TestManagedClientRotation: a managed client's secret is reset with its manager's
// token, never its own, and the manager's secret stays as it was.
func TestManagedClientRotation(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.writeClients(t)
	before := e.emu.ClientStats(teamBUser)

	e.mustRequest(t, logical.UpdateOperation, "clients/team-b/rotate-root", nil)

	if e.emu.ClientSecretIs(teamBUser, teamBSecret) {
		t.Fatal("team B's password is unchanged at the tenant")
	}
	stored, err := readConfigAt(t.Context(), e.storage, "clients/team-b")
	if err != nil || stored == nil {
		t.Fatalf("reading clients/team-b: %v", err)
	}
	if !e.emu.ClientSecretIs(teamBUser, stored.ClientSecret) || stored.Rotation.PendingSecret != "" {
		t.Fatalf("the stored secret of team-b is not the one the tenant accepts (or the rotation is %q)", stored.Rotation.status())
	}
	if !e.emu.ClientSecretIs(mgrUser, mgrSecret) {
		t.Error("the manager's own password changed")
	}
	var resets int
	for _, r := range e.emu.Requests() {
		if strings.EqualFold(r.Path, resetPasswordPath) {
			resets++
		}
		if strings.EqualFold(r.Path, changePasswordPath) {
			t.Error("a managed client's rotation called ChangeUserPassword")
		}
	}
	if resets != 1 {
		t.Errorf("%d ResetUserPassword calls, want 1", resets)
	}
	if after := e.emu.ClientStats(teamBUser); after.TokenRequests-before.TokenRequests > 2 {
		t.Errorf("team B's own grants during its rotation: %d, want the settle's check only", after.TokenRequests-before.TokenRequests)
	}
	if sub := subOf(t, e.mustRequest(t, logical.ReadOperation, "token/team-b-app", nil)); sub != teamBUUID {
		t.Errorf("after the reset, team-b-app's token is for %s", sub)
	}
}

// TestManagerMustAllow: a client names a manager only if the manager lists it, so that
// whoever may write a client cannot have another team's manager reset any user.
func TestManagerMustAllow(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.writeClients(t)
	resp, err := e.request(t, logical.CreateOperation, "clients/team-c", e.clientData(testAppID, teamAUser, teamASecret,
		map[string]any{"rotation_method": "managed", "manager": "mgr"}))
	assertBadRequest(t, resp, err, "manager")
	resp, err = e.request(t, logical.CreateOperation, "clients/team-d", e.clientData(testAppID, teamAUser, teamASecret,
		map[string]any{"rotation_method": "managed", "manager": "nobody"}))
	assertBadRequest(t, resp, err, "manager")
	resp, err = e.request(t, logical.CreateOperation, "clients/team-e", e.clientData(testAppID, teamAUser, teamASecret,
		map[string]any{"rotation_method": "managed"}))
	assertBadRequest(t, resp, err, "manager")
	// The sub its write pins is whom the manager resets: it must be the tenant's word.
	resp, err = e.request(t, logical.UpdateOperation, "clients/team-b", map[string]any{
		"token_url": e.url + "/oauth2/token/" + otherApp, "client_secret": teamBSecret})
	assertBadRequest(t, resp, err, "rotation_method")
	resp, err = e.request(t, logical.UpdateOperation, "clients/team-b", map[string]any{"verify_tokens": "off"})
	assertBadRequest(t, resp, err, "verify_tokens")
}

// TestManagementScopeNeverReachesAWorkload: the manager's scope is protected for every
// client's roles and readers, like a rotation scope.
func TestManagementScopeNeverReachesAWorkload(t *testing.T) {
	t.Parallel()
	e := newClientsEnv(t)
	e.configure(t)
	e.writeClients(t)
	for _, scopes := range []string{"manage", "read,rotate"} {
		resp, err := e.request(t, logical.CreateOperation, "roles/team-a-wide", map[string]any{"client": "team-a", "scopes": scopes})
		assertBadRequest(t, resp, err, "scopes")
	}
	resp, err := e.request(t, logical.ReadOperation, "token", map[string]any{"scope": "manage"})
	assertBadRequest(t, resp, err, "scope")
	resp, err = e.request(t, logical.UpdateOperation, "config", map[string]any{"scopes": "read,manage"})
	assertBadRequest(t, resp, err, "scopes")
}

// TestConfigOfThePreviousReleaseServesTokens: a config entry and a role as the previous
// release stored them (testdata), with no write since, serve tokens.
func TestConfigOfThePreviousReleaseServesTokens(t *testing.T) {
	t.Parallel()
	// The user whose sub the stored config pinned.
	e := newTestEnvWith(t, func(c *emulator.Config) { c.Apps[0].Clients[0].UUID = "6736e903-8a5d-4e49-a744-b374d8777c2c" })
	for key, file := range map[string]string{"config": "testdata/previous-release/config.json", "roles/legacy": "testdata/previous-release/role.json"} {
		b, err := os.ReadFile(file) //nolint:gosec // one of the two fixtures named above
		if err != nil {
			t.Fatal(err)
		}
		raw := strings.NewReplacer("@TENANT_URL@", e.url, "@CA_CERT@", jsonEscape(e.caPEM)).Replace(string(b))
		if err := e.storage.Put(t.Context(), &logical.StorageEntry{Key: key, Value: []byte(raw)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, path := range []string{"token", "token/legacy"} {
		if sub := subOf(t, e.mustRequest(t, logical.ReadOperation, path, nil)); sub == "" {
			t.Errorf("%s: a token without sub", path)
		}
	}
	if read := e.mustRequest(t, logical.ReadOperation, "roles/legacy", nil); read.Data["client"] != "default" {
		t.Errorf("a role of the previous release uses client %v, want default", read.Data["client"])
	}
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}
