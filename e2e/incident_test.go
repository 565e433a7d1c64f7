package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// incidentReaderPolicy lets a workload read the two roles' tokens, written out in full
// as examples/policies/token-reader.hcl asks.
const incidentReaderPolicy = `
path "cyberark/token/app" { capabilities = ["read"] }
path "cyberark/token/shared" { capabilities = ["read"] }
`

// userLogin is a userpass user logged in: its Vault client and identity.
type userLogin struct {
	client   *api.Client
	entityID string
	accessor string
}

// incidentUser creates a userpass user with policy and logs it in, which makes its
// entity.
func (e *env) incidentUser(name, policy string) userLogin {
	e.t.Helper()
	pw := randomHex(e.t, 12)
	if _, err := e.client.Logical().WriteWithContext(e.ctx, "auth/userpass/users/"+name, map[string]any{"password": pw, "token_policies": policy}); err != nil {
		e.t.Fatalf("creating user %s: %v", name, err)
	}
	login, err := e.client.Logical().WriteWithContext(e.ctx, "auth/userpass/login/"+name, map[string]any{"password": pw})
	if err != nil || login == nil || login.Auth == nil {
		e.t.Fatalf("logging in as %s: %v", name, err)
	}
	return userLogin{
		client:   newClient(e.t, e.vault.addr, login.Auth.ClientToken),
		entityID: login.Auth.EntityID,
		accessor: login.Auth.Accessor,
	}
}

// incidentUsers enables userpass, writes the workload's policy and the security
// team's (examples/policies/security-team.hcl), and logs in a user with each.
func (e *env) incidentUsers() (reader, security userLogin) {
	e.t.Helper()
	if err := e.client.Sys().EnableAuthWithOptionsWithContext(e.ctx, "userpass", &api.EnableAuthOptions{Type: "userpass"}); err != nil {
		e.t.Fatalf("enabling userpass: %v", err)
	}
	sec, err := os.ReadFile(filepath.Join(moduleRoot, "examples", "policies", "security-team.hcl"))
	if err != nil {
		e.t.Fatal(err)
	}
	for name, text := range map[string]string{"reader": incidentReaderPolicy, "security": string(sec)} {
		if err := e.client.Sys().PutPolicyWithContext(e.ctx, name, text); err != nil {
			e.t.Fatalf("writing the %s policy: %v", name, err)
		}
	}
	return e.incidentUser("alice", "reader"), e.incidentUser("sec", "security")
}

// writeAs writes path under the mount through c.
func (e *env) writeAs(c *api.Client, path string, data map[string]any) (*api.Secret, error) {
	return c.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, data)
}

func (e *env) mustWriteAs(c *api.Client, path string, data map[string]any) *api.Secret {
	e.t.Helper()
	s, err := e.writeAs(c, path, data)
	if err != nil {
		e.t.Fatalf("writing %s: %v", path, err)
	}
	return s
}

// TestIncidentResponse plays the runbook in a real Vault with a file audit device: a
// leaked token is traced by tokens/lookup to its role, entity, accessor and request, and
// tokens/revoke makes the tenant refuse it; a workload's token cannot reach tokens/;
// tokens/revoke-all, its plugin killed half-way, is run again and leaves no tracked or
// cached token valid, with reads refused until tokens/unfreeze; with tracking off, the
// audit-hash runbook finds the same facts in the audit log.
func TestIncidentResponse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600, withAuditLog())
	data := e.tenant.configData()
	data["track_tokens"] = true
	e.mustWriteAs(e.client, "config", data)
	e.writeRole("app", nil)
	e.writeRole("shared", map[string]any{"token_reuse": true})
	alice, sec := e.incidentUsers()

	// Tracked: lookup names who got it, and revoke ends it at the tenant.
	leaked := e.readTokenAs(alice.client, "token/app", nil)
	tok := accessToken(t, leaked)
	look := e.mustWriteAs(sec.client, "tokens/lookup", map[string]any{"token": tok})
	readers, _ := look.Data["readers"].([]any)
	if look.Data["role"] != "app" || len(readers) != 1 {
		t.Fatalf("tokens/lookup: role %v, %d readers", look.Data["role"], len(readers))
	}
	r := readers[0].(map[string]any)
	if r["entity_id"] != alice.entityID || r["token_accessor"] != alice.accessor || r["request_id"] != leaked.RequestID {
		t.Errorf("tokens/lookup reader %v, want entity %s, accessor %s, request %s", r, alice.entityID, alice.accessor, leaked.RequestID)
	}
	noSecretsIn(t, e, "the tokens/lookup answer", look)
	// What it could reach: the runbook's next step, under the team's policy.
	if role, err := sec.client.Logical().ReadWithContext(e.ctx, mountPath+"/roles/app"); err != nil || role == nil || role.Data["effective_scopes"] == nil {
		t.Errorf("the security team reading the leaked token's role: %v", err)
	}
	// A compromised Vault token: what it read, by its accessor.
	byAccessor := e.mustWriteAs(sec.client, "tokens/lookup", map[string]any{"token_accessor": alice.accessor})
	if got, _ := byAccessor.Data["tokens"].([]any); len(got) != 1 || got[0].(map[string]any)["token_sha256"] != look.Data["token_sha256"] {
		t.Errorf("tokens/lookup by alice's accessor: %v", byAccessor.Data["tokens"])
	}
	e.mustWriteAs(sec.client, "tokens/revoke", map[string]any{"token_sha256": look.Data["token_sha256"]})
	if !e.tenant.emu.Revoked(tok) {
		t.Fatal("tokens/revoke: the tenant still accepts the token")
	}

	// The workload's own token cannot look up, revoke or freeze.
	for _, path := range []string{"tokens/lookup", "tokens/revoke", "tokens/revoke-all", "tokens/unfreeze"} {
		_, err := alice.client.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, map[string]any{"token": tok})
		if re := responseError(t, err); re.StatusCode != http.StatusForbidden {
			t.Errorf("%s with a reader's token: %d, want 403", path, re.StatusCode)
		}
	}

	e.revokeAllKilledHalfWay(alice, sec)
	e.auditHashRunbook(alice, sec)
}

// revokeAllKilledHalfWay: the tenant holds the revocations back, the plugin is killed
// while they are at the tenant, and a second run finishes.
func (e *env) revokeAllKilledHalfWay(alice, sec userLogin) {
	t := e.t
	own := accessToken(t, e.readTokenAs(alice.client, "token/app", nil))
	shared := accessToken(t, e.readTokenAs(alice.client, "token/shared", nil))
	before := e.tenant.emu.Stats().RevokeRequests
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Delay: 20 * time.Second})
	go func() { _, _ = e.writeAs(sec.client, "tokens/revoke-all", nil) }() // its answer is lost with the plugin
	waitFor(t, 30*time.Second, "both revocations to reach the tenant", func() bool {
		return e.tenant.emu.Stats().RevokeRequests >= before+2
	})
	e.tenant.emu.ClearFaults()
	killPlugin(t, e)
	if e.tenant.emu.Revoked(own) || e.tenant.emu.Revoked(shared) {
		t.Fatal("a held revocation was made: the run was not cut half-way")
	}
	_, err := alice.client.Logical().ReadWithContext(e.ctx, mountPath+"/token/shared")
	if re := responseError(t, err); re.StatusCode != http.StatusLocked {
		t.Fatalf("read after the killed run: %d %v, want 423", re.StatusCode, re.Errors)
	}

	again := e.mustWriteAs(sec.client, "tokens/revoke-all", nil)
	if again.Data["complete"] != true {
		t.Fatalf("the second run did not finish: %v", again.Data)
	}
	noSecretsIn(t, e, "the revoke-all answer", again)
	for name, tok := range map[string]string{"tracked": own, "cached": shared} {
		if !e.tenant.emu.Revoked(tok) {
			t.Errorf("the %s token is still valid at the tenant after revoke-all", name)
		}
	}
	_, err = alice.client.Logical().ReadWithContext(e.ctx, mountPath+"/token/app")
	if re := responseError(t, err); re.StatusCode != http.StatusLocked {
		t.Fatalf("read while frozen: %d, want 423", re.StatusCode)
	}
	e.mustWriteAs(sec.client, "tokens/unfreeze", nil)
	if next := accessToken(t, e.readTokenAs(alice.client, "token/shared", nil)); next == shared {
		t.Error("the revoked shared token was handed out again")
	}
}

// auditHashRunbook: with tracking off, tokens/lookup knows nothing, and the runbook's
// way (sys/audit-hash of the leaked token, then the audit entry whose response holds
// that hash) finds the role's path, the entity and the request.
func (e *env) auditHashRunbook(alice, sec userLogin) {
	t := e.t
	data := e.tenant.configData()
	data["track_tokens"] = false
	e.mustWriteAs(e.client, "config", data)
	leaked := e.readTokenAs(alice.client, "token/app", nil)
	tok := accessToken(t, leaked)
	_, err := e.writeAs(sec.client, "tokens/lookup", map[string]any{"token": tok})
	if re := responseError(t, err); re.StatusCode != http.StatusNotFound {
		t.Fatalf("lookup with tracking off: %d, want 404", re.StatusCode)
	}

	hashed, err := sec.client.Sys().AuditHashWithContext(e.ctx, "file", tok)
	if err != nil {
		t.Fatalf("sys/audit-hash: %v", err)
	}
	sum := sha256.Sum256([]byte(tok))
	var found []auditResponse
	waitFor(t, 10*time.Second, "the read's response in the audit log", func() bool {
		found = auditResponses(t, e, "access_token", hashed)
		return len(found) == 1
	})
	if got := found[0]; got.Request.Path != mountPath+"/token/app" || got.Auth.EntityID != alice.entityID || got.Request.ID != leaked.RequestID {
		t.Errorf("audit entry: path %s entity %s request %s; want %s/token/app, %s, %s",
			got.Request.Path, got.Auth.EntityID, got.Request.ID, mountPath, alice.entityID, leaked.RequestID)
	}
	// token_sha256 is HMAC-ed too unless the mount lists it in
	// audit_non_hmac_response_keys: then it is the plain hash.
	if found[0].Response.Data["token_sha256"] == hex.EncodeToString(sum[:]) {
		t.Error("token_sha256 reached the audit log unhashed with Vault's default settings")
	}
}
