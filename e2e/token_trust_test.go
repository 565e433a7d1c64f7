//go:build unix

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// The engine's token trust (trust.go, path_token.go) in a real Vault against the tenant
// emulator: no way found by the adversarial review (F1, F2) to get a token carrying the
// rotation scope works, a token the tenant forged or swapped is never handed out, and a
// leaked token can be traced to the read that handed it out in the audit log.

// teamOwnerPolicy is the adversarial review's "team-owner": it may write its team's
// roles and read their tokens, nothing else of the engine.
const teamOwnerPolicy = `
path "cyberark/roles/team-*" { capabilities = ["create", "update", "read", "delete", "list"] }
path "cyberark/token/team-*" { capabilities = ["read"] }
`

// protectedWords is how a refusal names the rotation scope: as a rotation scope, or as
// one of the protected (rotation or denied) scopes.
const protectedWords = "rotation scope|protected scope|denied scope"

// trustAttempt is one attempt and the engine's answer, for the table a test logs.
type trustAttempt struct {
	who, what string
	status    int
	msg       string // first 100 characters of the error, or what was handed out
}

// trustLog collects the attempts of one test and logs them as one block.
type trustLog struct {
	t    *testing.T
	e    *env
	rows []trustAttempt
}

// outcome turns a Vault API call's result into a status and a message, failing the test
// if an error message holds a secret. A success without a secret is a 204.
func (l *trustLog) outcome(sec *api.Secret, err error) (int, string) {
	l.t.Helper()
	if err == nil {
		if sec == nil {
			return http.StatusNoContent, ""
		}
		return http.StatusOK, ""
	}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		l.t.Fatalf("error %v is not a Vault response error", err)
	}
	msg := strings.Join(re.Errors, "; ")
	noSecretsIn(l.t, l.e, "an error answer", msg)
	// Vault wraps a plugin's coded error as "1 error occurred:\n\t* ...".
	msg = strings.TrimPrefix(strings.TrimSpace(msg), "1 error occurred:")
	return re.StatusCode, strings.Join(strings.Fields(strings.TrimPrefix(strings.TrimSpace(msg), "* ")), " ")
}

// expect records an attempt and checks its status and that its error holds every one of
// want (case-insensitively; "a|b" is either).
func (l *trustLog) expect(who, what string, sec *api.Secret, err error, status int, want ...string) (int, string) {
	l.t.Helper()
	got, msg := l.outcome(sec, err)
	short := msg
	if len(short) > 100 {
		short = short[:100]
	}
	if i := strings.Index(msg, "token check:"); i >= 0 {
		// The check's name comes after a common preamble: show it too.
		short += " […] " + msg[i:min(len(msg), i+90)]
	}
	if got == http.StatusOK && sec != nil {
		if s, ok := sec.Data["scope"].(string); ok {
			short = fmt.Sprintf("handed out, scope %q", s)
		}
	}
	l.rows = append(l.rows, trustAttempt{who, what, got, short})
	if got != status {
		l.t.Errorf("%s, by %s: %d %q, want %d", what, who, got, msg, status)
		return got, msg
	}
	for _, w := range want {
		found := false
		for _, alt := range strings.Split(w, "|") {
			found = found || strings.Contains(strings.ToLower(msg), strings.ToLower(alt))
		}
		if !found {
			l.t.Errorf("%s, by %s: %d %q, want it to say %q", what, who, got, msg, w)
		}
	}
	return got, msg
}

func (l *trustLog) log(title string) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d attempts):\n", title, len(l.rows))
	fmt.Fprintf(&b, "  %-3s | %-10s | %-72s | %s\n", "#", "who", "attempt", "answer")
	for i, r := range l.rows {
		fmt.Fprintf(&b, "  %-3d | %-10s | %-72s | %d %s\n", i+1, r.who, r.what, r.status, r.msg)
	}
	l.t.Log(b.String())
}

// teamOwner is a Vault client holding only teamOwnerPolicy.
func teamOwner(t *testing.T, e *env) *api.Client {
	t.Helper()
	if err := e.client.Sys().PutPolicyWithContext(e.ctx, "team-owner", teamOwnerPolicy); err != nil {
		t.Fatalf("writing the team-owner policy: %v", err)
	}
	created, err := e.client.Auth().Token().CreateWithContext(e.ctx, &api.TokenCreateRequest{
		Policies: []string{"team-owner"}, TTL: "1h",
	})
	if err != nil || created == nil || created.Auth == nil {
		t.Fatalf("creating the team-owner token: %v", err)
	}
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"the team-owner policy's Vault token", created.Auth.ClientToken}}
	})
	return newClient(t, e.vault.addr, created.Auth.ClientToken)
}

// setQuirks replaces the app's token quirks through the emulator's control endpoint.
func setQuirks(t *testing.T, e *env, quirks map[string]any) {
	t.Helper()
	var now map[string]any
	e.tenant.control(t, http.MethodPost, "/_emulator/token_quirks", map[string]any{"app_id": appID, "quirks": quirks}, &now)
}

// introspectActive asks the tenant's introspection endpoint, with the client's own
// credentials, whether token is active.
func introspectActive(t *testing.T, e *env, token string) bool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(e.tenant.caPEM)) {
		t.Fatal("the tenant's CA certificate does not parse")
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer transport.CloseIdleConnections()
	hc := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, e.tenant.url+"/oauth2/introspect/"+appID,
		strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", e.tenant.basicCredentials())
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("introspection: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		Active *bool  `json:"active"`
		Scope  string `json:"scope"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || out.Active == nil {
		t.Fatalf("introspection: %d %s", resp.StatusCode, body)
	}
	return *out.Active
}

// newlyIssued is what the tenant issued since it had issued before tokens.
func newlyIssued(e *env, before int) []string {
	return e.tenant.emu.Issued()[before:]
}

// mustBeRevoked checks that every token the tenant issued since before is revoked: the
// emulator's own record, and introspection as a client of the tenant sees it. It
// returns how many it checked.
func mustBeRevoked(t *testing.T, e *env, what string, before int) int {
	t.Helper()
	toks := newlyIssued(e, before)
	if len(toks) == 0 {
		t.Errorf("%s: the tenant issued no token, want the refused one", what)
	}
	for i, tok := range toks {
		if !e.tenant.emu.Revoked(tok) {
			t.Errorf("%s: token #%d issued for it (sha256 %s) is not revoked at the tenant", what, i+1, shortHash(tok))
		}
		if introspectActive(t, e, tok) {
			t.Errorf("%s: token #%d issued for it (sha256 %s) is still active by introspection", what, i+1, shortHash(tok))
		}
	}
	return len(toks)
}

// TestRotationScopeNeverHandedOut: every way the adversarial review (F1, F2) found to
// get a token carrying the engine's rotation scope, by a role owner (the review's
// team-owner policy) or by root, is refused with an error that says why: the rotation
// scope in a role's scopes or allowed_scopes, in a reader's scope, in the config's
// scopes, a config with rotation_scopes and no scopes, a role written before
// rotation_scopes was set, a tenant that widens a grant with it (in the answer, the JWT
// or both, under verify_scope enforce and warn, for a reused token too), and a tenant
// that grants "all" (empty_scope_as_all, reachable only on a config with neither scopes
// nor rotation_scopes; or widened with it under verify_scope=warn). A refused grant is
// answered 409 and revoked at the tenant. Nothing the test reads carries either scope.
func TestRotationScopeNeverHandedOut(t *testing.T) {
	t.Parallel()
	start := time.Now()
	e := newEnv(t, 3600)
	c := e.client
	e.configure() // scopes=read,write rotation_scopes=rotate
	owner := teamOwner(t, e)
	l := &trustLog{t: t, e: e}
	write := func(cl *api.Client, path string, data map[string]any) (*api.Secret, error) {
		return cl.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, data)
	}
	read := func(cl *api.Client, path string, params map[string][]string) (*api.Secret, error) {
		return cl.Logical().ReadWithDataWithContext(e.ctx, mountPath+"/"+path, params)
	}
	var handedOut []*api.Secret
	keep := func(s *api.Secret, err error) (*api.Secret, error) {
		if err == nil && s != nil {
			handedOut = append(handedOut, s)
		}
		return s, err
	}

	// F1: the role owner puts the rotation scope in a role, or asks for it as a reader.
	s, err := write(owner, "roles/team-x", map[string]any{"scopes": "rotate"})
	l.expect("team-owner", "write roles/team-x scopes=rotate", s, err, http.StatusBadRequest, protectedWords, "scopes")
	s, err = write(owner, "roles/team-x", map[string]any{"scopes": "ROTATE"})
	l.expect("team-owner", "write roles/team-x scopes=ROTATE", s, err, http.StatusBadRequest, protectedWords)
	s, err = write(owner, "roles/team-y", map[string]any{"scopes": "read", "allowed_scopes": "read,rotate"})
	l.expect("team-owner", "write roles/team-y scopes=read allowed_scopes=read,rotate", s, err, http.StatusBadRequest, protectedWords, "allowed_scopes")
	s, err = write(owner, "roles/team-r", map[string]any{"scopes": "read"})
	l.expect("team-owner", "write roles/team-r scopes=read (set-up)", s, err, http.StatusNoContent)
	s, err = keep(read(owner, "token/team-r", map[string][]string{"scope": {"rotate"}}))
	l.expect("team-owner", "read token/team-r scope=rotate (role allows read only)", s, err, http.StatusBadRequest, protectedWords, "scope")
	s, err = keep(read(owner, "token/team-r", map[string][]string{"scope": {"read,rotate"}}))
	l.expect("team-owner", "read token/team-r scope=read,rotate", s, err, http.StatusBadRequest, protectedWords)
	s, err = keep(read(c, "token", map[string][]string{"scope": {"Rotate"}}))
	l.expect("root", "read token scope=Rotate (config's token path)", s, err, http.StatusBadRequest, protectedWords)

	// The config: the role owner cannot write it, and root cannot give workloads the
	// rotation scope (F1) or leave their scopes to the tenant's default (F2).
	s, err = write(owner, "config", map[string]any{"scopes": "read,rotate"})
	l.expect("team-owner", "write config scopes=read,rotate", s, err, http.StatusForbidden, "permission denied")
	s, err = write(c, "config", map[string]any{"scopes": "read,rotate"})
	l.expect("root", "write config scopes=read,rotate", s, err, http.StatusBadRequest, protectedWords, "scopes")
	s, err = write(c, "config", map[string]any{"scopes": ""})
	l.expect("root", "write config scopes=\"\" (rotation_scopes=rotate kept)", s, err, http.StatusBadRequest, "scopes", "required while rotation_scopes")
	s, err = write(c, "config", map[string]any{"rotation_scopes": "read"})
	l.expect("root", "write config rotation_scopes=read (a workload scope)", s, err, http.StatusBadRequest, protectedWords)
	if got := readConfig(t, e); fmt.Sprint(got["scopes"]) != "[read write]" || fmt.Sprint(got["rotation_scopes"]) != "[rotate]" {
		t.Errorf("refused config writes changed scopes to %v and rotation_scopes to %v", got["scopes"], got["rotation_scopes"])
	}

	// F2: a tenant that answers a grant without scope with "all". While rotation_scopes
	// is set, scopes are required (the 400 above), so the engine always asks for its
	// scopes and gets them.
	setQuirks(t, e, map[string]any{"empty_scope_as_all": true})
	s, err = keep(read(c, "token", nil))
	l.expect("root", "read token, tenant grants \"all\" to a grant without scope", s, err, http.StatusOK)
	if s != nil {
		if got := s.Data["scope"]; got != "read write" {
			t.Errorf("token read with empty_scope_as_all: scope %q, want the config's %q", got, "read write")
		}
	}
	// It is reachable only on a config without rotation_scopes and without scopes:
	// there the engine asks for nothing, and the tenant's "all" must not be handed out.
	setQuirks(t, e, map[string]any{})
	s, err = write(c, "config", map[string]any{"rotation_scopes": "", "scopes": ""})
	l.expect("root", "write config rotation_scopes=\"\" scopes=\"\" (set-up)", s, err, http.StatusNoContent)
	// A role written while the config has no rotation_scopes: refused at its read once
	// rotation_scopes is set again (below).
	s, err = write(owner, "roles/team-legacy", map[string]any{"scopes": "rotate"})
	l.expect("team-owner", "write roles/team-legacy scopes=rotate, no rotation_scopes (set-up)", s, err, http.StatusNoContent)
	setQuirks(t, e, map[string]any{"empty_scope_as_all": true})
	before := len(e.tenant.emu.Issued())
	s, err = keep(read(c, "token", nil))
	l.expect("root", "read token, no scopes nor rotation_scopes, tenant grants \"all\"", s, err, http.StatusConflict, "\"all\"", "revoked")
	if err != nil {
		mustBeRevoked(t, e, "the \"all\" grant", before)
	}
	setQuirks(t, e, map[string]any{})
	s, err = write(c, "config", map[string]any{"rotation_scopes": "rotate", "scopes": "read,write"})
	l.expect("root", "write config rotation_scopes=rotate scopes=read,write again (set-up)", s, err, http.StatusNoContent)
	s, err = keep(read(owner, "token/team-legacy", nil))
	l.expect("team-owner", "read token/team-legacy (role scopes=rotate predates rotation_scopes)", s, err, http.StatusBadRequest, protectedWords)

	// A tenant that widens a read grant with the rotation scope: 409, revoked.
	widened := []struct {
		who, what string
		cl        *api.Client
		path      string
		quirks    map[string]any
		want      string
	}{
		{"team-owner", "read token/team-r, tenant widens read with rotate (answer and JWT)", owner, "token/team-r",
			map[string]any{"widen_scope": []string{"rotate"}}, protectedWords},
		{"team-owner", "read token/team-r, tenant widens with rotate in the answer only", owner, "token/team-r",
			map[string]any{"widen_scope": []string{"rotate"}, "widen_scope_in": "answer"}, protectedWords},
		{"team-owner", "read token/team-r, tenant widens with rotate in the JWT only", owner, "token/team-r",
			map[string]any{"widen_scope": []string{"rotate"}, "widen_scope_in": "claim"}, protectedWords},
		{"root", "read token (config scopes), tenant widens with ROTATE", c, "token",
			map[string]any{"widen_scope": []string{"ROTATE"}}, protectedWords},
	}
	for _, w := range widened {
		setQuirks(t, e, w.quirks)
		before := len(e.tenant.emu.Issued())
		s, err := keep(read(w.cl, w.path, nil))
		l.expect(w.who, w.what, s, err, http.StatusConflict, w.want, "revoked")
		mustBeRevoked(t, e, w.what, before)
	}

	// Under verify_scope=warn, and for a reused token, the rotation scope is refused all
	// the same, and the refused token never reaches the reuse cache.
	setQuirks(t, e, map[string]any{})
	s, err = write(c, "config", map[string]any{"verify_scope": "warn"})
	l.expect("root", "write config verify_scope=warn (set-up)", s, err, http.StatusNoContent)
	s, err = write(owner, "roles/team-shared", map[string]any{"scopes": "read", "token_reuse": true, "lease_free": true})
	l.expect("team-owner", "write roles/team-shared scopes=read token_reuse lease_free (set-up)", s, err, http.StatusNoContent)
	var refusedShared []string // what the tenant issued for the refused team-shared reads
	for _, w := range []struct{ path, widen string }{
		{"token/team-r", "rotate"}, {"token/team-shared", "rotate"}, {"token/team-r", "all"},
	} {
		setQuirks(t, e, map[string]any{"widen_scope": []string{w.widen}})
		what := "read " + w.path + " under verify_scope=warn, tenant widens with " + w.widen
		before := len(e.tenant.emu.Issued())
		s, err := keep(read(owner, w.path, nil))
		l.expect("team-owner", what, s, err, http.StatusConflict, protectedWords, "revoked")
		mustBeRevoked(t, e, what, before)
		if w.path == "token/team-shared" {
			refusedShared = append(refusedShared, newlyIssued(e, before)...)
		}
	}
	setQuirks(t, e, map[string]any{})
	s, err = keep(read(owner, "token/team-shared", nil))
	l.expect("team-owner", "read token/team-shared, tenant back to documented tokens", s, err, http.StatusOK)
	if s != nil {
		if tok := accessToken(t, s); slices.Contains(refusedShared, tok) {
			t.Error("the reuse cache handed out the token refused for its rotation scope")
		} else if !introspectActive(t, e, tok) {
			t.Error("the token handed out after the refusals is not active at the tenant")
		}
	}

	// Nothing handed out in this test carries the rotation scope or "all", in the answer
	// or in the JWT.
	for i, s := range handedOut {
		tok := accessToken(t, s)
		e.tenant.mustHaveIssued(t, tok)
		claims := parseClaims(t, tok)
		for _, sc := range append(strings.Fields(fmt.Sprint(s.Data["scope"])), strings.Fields(claims.Scope)...) {
			if strings.EqualFold(sc, rotationScope) || strings.EqualFold(sc, "all") {
				t.Errorf("token read #%d handed out a token with the scope %q (answer %q, claim %q)", i+1, sc, s.Data["scope"], claims.Scope)
			}
		}
	}
	l.log("rotation-scope attempts")
	t.Logf("%d tokens handed out, none with the rotation scope or \"all\"; %d issued by the tenant in all; took %s",
		len(handedOut), len(e.tenant.emu.Issued()), time.Since(start).Round(time.Millisecond))
}

// TestForgedTokenNeverHandedOut: under the default verify_tokens=auto, a token signed by
// a key the tenant does not publish (under its own kid or the published key's), with a
// foreign issuer or audience, or for another user than the one the verified config
// write pinned, is never handed out: the read is a 409 that names the failed check, and
// the token is revoked at the tenant. A token whose issuer lacks the trailing slash,
// which CyberArk writes both ways, is handed out.
func TestForgedTokenNeverHandedOut(t *testing.T) {
	t.Parallel()
	start := time.Now()
	e := newEnv(t, 3600)
	e.configure()
	cfg := readConfig(t, e)
	if cfg["verify_tokens"] != "auto" {
		t.Errorf("verify_tokens = %v, want the default auto", cfg["verify_tokens"])
	}
	pinned, _ := cfg["pinned_sub"].(string)
	if pinned == "" {
		t.Fatal("the verified config write pinned no sub")
	}
	good := e.readToken("token", nil)
	if got := good.Data["sub"]; got != pinned {
		t.Errorf("a token read says sub %v, want the pinned %q", got, pinned)
	}

	l := &trustLog{t: t, e: e}
	for _, tc := range []struct {
		what   string
		quirks map[string]any
		want   []string
	}{
		{"signed by an unknown key under its own kid", map[string]any{"unknown_key": "own_kid"},
			[]string{"signature", "does not publish"}},
		{"signed by an unknown key under the published key's kid", map[string]any{"unknown_key": "real_kid"},
			[]string{"signature"}},
		{"issuer https://evil.example/" + appID + "/", map[string]any{"issuer": "https://evil.example/" + appID + "/"},
			[]string{"iss:", "evil.example"}},
		{"audience svc-other@e2e.cyberark.cloud", map[string]any{"audience": "svc-other@e2e.cyberark.cloud"},
			[]string{"aud:", "svc-other"}},
		{"subject 00000000-0000-4000-8000-000000000000", map[string]any{"subject": "00000000-0000-4000-8000-000000000000"},
			[]string{"sub:", "pinned"}},
	} {
		setQuirks(t, e, tc.quirks)
		before := len(e.tenant.emu.Issued())
		s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		l.expect("root", "read token, tenant's token "+tc.what, s, err, http.StatusConflict, append(tc.want, "failed a check", "revoked")...)
		mustBeRevoked(t, e, tc.what, before)
	}
	setQuirks(t, e, map[string]any{"issuer_no_trailing_slash": true})
	s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	l.expect("root", "read token, tenant's issuer without the trailing slash", s, err, http.StatusOK)
	setQuirks(t, e, map[string]any{})
	s, err = e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	l.expect("root", "read token, documented tokens again", s, err, http.StatusOK)
	if s != nil && !introspectActive(t, e, accessToken(t, s)) {
		t.Error("the token handed out after the refusals is not active at the tenant")
	}
	l.log("forged-token attempts (verify_tokens=auto)")
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// auditResponse is the part of a file audit device's response entry the test reads.
type auditResponse struct {
	Type string `json:"type"`
	Auth struct {
		EntityID string `json:"entity_id"`
	} `json:"auth"`
	Request struct {
		ID   string `json:"id"`
		Path string `json:"path"`
	} `json:"request"`
	Response struct {
		Data map[string]any `json:"data"`
	} `json:"response"`
}

// auditResponses are the response entries of the audit log whose response data field
// equals value.
func auditResponses(t *testing.T, e *env, field, value string) []auditResponse {
	t.Helper()
	f, err := os.Open(e.vault.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	var out []auditResponse
	for sc.Scan() {
		if !bytes.Contains(sc.Bytes(), []byte(value)) {
			continue
		}
		var entry auditResponse
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Errorf("audit log line is not JSON: %v", err)
			continue
		}
		if entry.Type == "response" && entry.Response.Data[field] == value {
			out = append(out, entry)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the audit log: %v", err)
	}
	return out
}

// auditRequestID finds the one audit response entry whose response data field equals
// value, waiting briefly for it, and returns its request ID.
func auditRequestID(t *testing.T, e *env, how, field, value string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		entries := auditResponses(t, e, field, value)
		switch {
		case len(entries) == 1:
			return entries[0].Request.ID
		case len(entries) > 1:
			ids := make([]string, 0, len(entries))
			for _, en := range entries {
				ids = append(ids, en.Request.ID)
			}
			t.Errorf("%s: %d audit response entries have that %s: %v, want one", how, len(entries), field, ids)
			return entries[0].Request.ID
		case time.Now().After(deadline):
			t.Errorf("%s: no audit response entry has response.data.%s = %q", how, field, value)
			return ""
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestLeakedTokenTracedInAuditLog: a leaked access token leads to the read that handed
// it out, in a file audit device's log at Vault's default (HMAC) settings, two ways:
// (a) sys/audit-hash of the token gives the HMAC that the read's response entry holds
// as access_token; (b) with the mount tuned to keep token_sha256 in clear
// (audit_non_hmac_response_keys), the token's SHA-256 is in the entry as it is. Both
// find the same request, the one whose ID the read returned. Before the tune,
// token_sha256 is HMAC-ed like every other string.
func TestLeakedTokenTracedInAuditLog(t *testing.T) {
	t.Parallel()
	start := time.Now()
	e := newEnv(t, 3600, withAuditLog())
	c := e.client
	e.configure()
	const device = "file" // the path enableAudit mounts the device at

	hashOf := func(input string) string {
		t.Helper()
		h, err := c.Sys().AuditHashWithContext(e.ctx, device, input)
		if err != nil || !strings.HasPrefix(h, "hmac-sha256:") {
			t.Fatalf("sys/audit-hash/%s: %q, %v", device, h, err)
		}
		return h
	}

	// (a) at the defaults.
	first := e.readToken("token", nil)
	tok1 := accessToken(t, first)
	if got := first.Data["token_sha256"]; got != sha256Hex(tok1) {
		t.Errorf("token_sha256 = %v, want the token's SHA-256", got)
	}
	idA1 := auditRequestID(t, e, "(a) audit-hash, defaults", "access_token", hashOf(tok1))
	if idA1 != first.RequestID {
		t.Errorf("(a) at the defaults found request %q, the read's ID is %q", idA1, first.RequestID)
	}
	if n := len(auditResponses(t, e, "token_sha256", sha256Hex(tok1))); n != 0 {
		t.Errorf("before the tune, %d audit entries hold token_sha256 in clear", n)
	}
	if id := auditRequestID(t, e, "token_sha256 HMAC-ed, defaults", "token_sha256", hashOf(sha256Hex(tok1))); id != first.RequestID {
		t.Errorf("the HMAC of token_sha256 at the defaults found request %q, the read's ID is %q", id, first.RequestID)
	}

	// (b) with token_sha256 kept in clear.
	if _, err := c.Logical().WriteWithContext(e.ctx, "sys/mounts/"+mountPath+"/tune", map[string]any{
		"audit_non_hmac_response_keys": []string{"token_sha256"},
	}); err != nil {
		t.Fatalf("tuning the mount: %v", err)
	}
	if got := e.vault.mountInfo(t, mountPath).Config.AuditNonHMACResponseKeys; !slices.Equal(got, []string{"token_sha256"}) {
		t.Errorf("after the tune audit_non_hmac_response_keys = %v", got)
	}
	second := e.readToken("token", nil)
	tok2 := accessToken(t, second)
	sum2 := sha256Hex(tok2)
	if got := second.Data["token_sha256"]; got != sum2 {
		t.Errorf("token_sha256 = %v, want the token's SHA-256", got)
	}
	idA := auditRequestID(t, e, "(a) audit-hash, tuned", "access_token", hashOf(tok2))
	idB := auditRequestID(t, e, "(b) sha256 in clear, tuned", "token_sha256", sum2)
	switch {
	case idA == "" || idB == "":
	case idA != idB:
		t.Errorf("(a) found request %q, (b) found %q: want the same", idA, idB)
	case idA != second.RequestID:
		t.Errorf("(a) and (b) found request %q, the read's ID is %q", idA, second.RequestID)
	}
	// The access token itself stays HMAC-ed after the tune.
	for _, en := range auditResponses(t, e, "token_sha256", sum2) {
		if v, _ := en.Response.Data["access_token"].(string); !strings.HasPrefix(v, "hmac-sha256:") {
			t.Errorf("after the tune the audit entry of %s holds an access_token that is not HMAC-ed (length %d)", en.Request.Path, len(v))
		}
	}
	t.Logf("read 1: request %s found by (a); read 2: request %s found by (a) %s and (b) %s; took %s",
		first.RequestID, second.RequestID, idA, idB, time.Since(start).Round(time.Millisecond))
}
