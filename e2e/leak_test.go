//go:build unix

package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestLeakHunt drives the engine's whole API through a real Vault, every error path
// included, with the tenant failing in every way it can and, worst of all, reflecting
// the request (the client's credentials, the token being revoked, the passwords of a
// rotation) back in its error answers. Vault runs at -log-level=trace, so every line
// the plugin writes reaches Vault's log, with a file audit device at Vault's default
// (HMAC) settings. Then every Vault log line, plugin line, audit entry, HTTP response
// body and error text is searched for every form (secretForms) of every client secret
// (the original, those that verification refused, and those root rotation set) and of
// every access token the tenant issued. A token may appear only in the response of the
// read that returned it, and in the audit log only HMAC-ed.
func TestLeakHunt(t *testing.T) {
	t.Parallel()
	refl := &reflector{}
	e := newEnv(t, 3600, withAuditLog(), withTenantHandler(refl.wrap))
	rec := recordClient(t, e)
	e.guard.addTexts(rec.texts)
	e.guard.addSecrets(refl.secrets)
	l := &leakRun{t: t, e: e, rec: rec}
	secret := e.tenant.secret
	c := e.client

	// Config writes the engine must refuse, several carrying the secret where an error
	// message could quote it.
	wrong := "Wrong:%40-" + randomHex(t, 16)
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"a client secret the tenant refuses", wrong}}
	})
	for _, tc := range []struct {
		name string
		set  map[string]any
	}{
		{"an unknown field holding the secret", map[string]any{"client_secert": secret}},
		{"the secret with a trailing newline", map[string]any{"client_secret": secret + "\n"}},
		{"the secret with a control character", map[string]any{"client_secret": secret + "\x07x"}},
		{"the secret with a zero-width space", map[string]any{"client_secret": "\u200b" + secret}},
		{"a secret of 1025 characters", map[string]any{"client_secret": strings.Repeat(secret, 26)[:1025]}},
		{"the secret in tenant_url's user information", map[string]any{"tenant_url": "https://" + clientID + ":" + url.QueryEscape(secret) + "@" + strings.TrimPrefix(e.tenant.url, "https://")}},
		{"the secret in tenant_url's query", map[string]any{"tenant_url": e.tenant.url + "/?client_secret=" + url.QueryEscape(secret)}},
		{"the secret in token_url's path, with white space", map[string]any{"token_url": e.tenant.url + "/oauth2/token/ " + url.PathEscape(secret)}},
		{"a bad scope", map[string]any{"scopes": "read,a b"}},
		{"the secret in a CA bundle", map[string]any{"ca_cert": "-----BEGIN CERTIFICATE-----\n" + base64.StdEncoding.EncodeToString([]byte(secret)) + "\n-----END CERTIFICATE-----\n"}},
		{"a bad request_timeout", map[string]any{"request_timeout": "forever"}},
		{"a bad max_retries", map[string]any{"max_retries": 99}},
		{"no client_id", map[string]any{"client_id": ""}},
	} {
		data := e.tenant.configData()
		for k, v := range tc.set {
			data[k] = v
		}
		l.refused("config write with "+tc.name, func() error {
			_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", data)
			return err
		}, http.StatusBadRequest)
	}
	// Verification refused by the tenant, and a write without verification it would
	// refuse: both store nothing the next reads use.
	bad := e.tenant.configData()
	bad["client_secret"] = wrong
	l.refused("config write with a refused secret", func() error {
		_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", bad)
		return err
	}, http.StatusBadRequest)
	l.refused("token read without a config", func() error {
		_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		return err
	}, http.StatusBadRequest)

	// Create, read, update. The hunt makes the tenant refuse the engine's credentials
	// dozens of times on purpose (a 400 invalid_client, a 401, a redirect: each may be
	// a failed login), which the default failed-login budget of 3 per 30 minutes would
	// soon answer without asking the tenant. The budget is not what this test is about,
	// so the config allows the most an operator may set.
	cfg := e.tenant.configData()
	cfg["max_failed_logins"] = 100
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", cfg); err != nil {
		t.Fatalf("writing the config: %v", err)
	}
	l.read("config")
	l.write("config", map[string]any{"scopes": "read,write", "max_retries": 0})
	// Moving the endpoint without the secret is refused.
	for _, field := range []map[string]any{
		{"tenant_url": "https://127.0.0.1:1"},
		{"token_url": e.tenant.url + "/oauth2/token/" + otherAppID},
		{"client_auth": "post"},
	} {
		l.refused(fmt.Sprintf("config update of %v without the secret", keys(field)), func() error {
			_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", field)
			return err
		}, http.StatusBadRequest)
	}

	// The tenant fails in every way, with the secret in every form in its answer.
	forms := secretForms(clientID, secret)
	for _, f := range forms {
		for _, fault := range tenantFaults(f.value) {
			l.faulted(fmt.Sprintf("token read, tenant answers %s with the secret %s", fault.name, f.label), fault.fault, func() error {
				_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
				return err
			})
		}
		for _, fault := range tenantFaults(f.value)[:2] {
			l.faulted(fmt.Sprintf("verified config write, tenant answers %s with the secret %s", fault.name, f.label), fault.fault, func() error {
				_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"scopes": "read,write"})
				return err
			})
		}
	}
	// One retried failure, so an error that tells of several attempts is checked too.
	l.write("config", map[string]any{"max_retries": 1})
	l.faulted("token read, tenant answers 500 twice with the secret", emulator.Fault{
		Endpoint: "token", Times: 2, Status: http.StatusInternalServerError, Body: "<html><body>upstream said " + secret + "</body></html>",
	}, func() error {
		_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		return err
	})
	l.write("config", map[string]any{"max_retries": 0})

	// A tenant that reflects the request: the Authorization header, the credentials it
	// carries and the form body.
	for _, auth := range []string{"basic", "post"} {
		if auth == "post" {
			data := e.tenant.configData()
			data["client_auth"] = "post"
			data["max_retries"] = 0
			refl.arm("/oauth2/token/", http.StatusBadRequest, "json", 1)
			l.refused("verified config write with client_auth=post, tenant reflects the request", func() error {
				_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", data)
				return err
			}, http.StatusBadRequest)
			l.write("config", data)
		}
		for _, style := range reflectionStyles {
			refl.arm("/oauth2/token/", style.status, style.kind, 1)
			l.refused(fmt.Sprintf("token read (client_auth=%s), tenant reflects the request as %s", auth, style.name), func() error {
				_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
				return err
			}, style.want)
		}
	}
	if n := refl.reflected(); n != 1+2*len(reflectionStyles) {
		t.Errorf("the tenant reflected %d requests, want %d", n, 1+2*len(reflectionStyles))
	}

	// Roles: create, read, list, update, delete, and refusals.
	l.write("roles/reader", map[string]any{"scopes": "read", "allowed_scopes": "read,write", "ttl": "30m"})
	l.write("roles/other", map[string]any{"scopes": "read", "app_id": otherAppID})
	l.write("roles/shared", map[string]any{"scopes": "write", "token_reuse": true})
	l.write("roles/doomed", map[string]any{"scopes": "read"})
	l.read("roles/reader")
	l.list("roles")
	l.write("roles/reader", map[string]any{"scopes": "read", "allowed_scopes": "read,write", "ttl": "20m"})
	l.delete("roles/doomed")
	for name, data := range map[string]map[string]any{
		"roles/reader with an unknown field holding the secret": {"scopes": "read", "sopes": secret},
		"roles/Reader":                           {"scopes": "read"},
		"roles/reader with a bad scope":          {"scopes": `"quoted"`},
		"roles/reader outside its allowed scope": {"scopes": "write", "allowed_scopes": "read"},
	} {
		path, _, _ := strings.Cut(name, " ")
		l.refused("write of "+name, func() error {
			_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/"+path, data)
			return err
		}, http.StatusBadRequest)
	}

	// Token reads of every kind, and reads the engine refuses.
	plain := e.readToken("token", nil)
	role := e.readToken("token/reader", nil)
	e.readToken("token/reader", map[string][]string{"scope": {"write"}})
	e.readToken("token/other", nil)
	if a, b := e.readToken("token/shared", nil), e.readToken("token/shared", nil); accessToken(t, a) != accessToken(t, b) {
		t.Error("two reads of the reuse role got two tokens")
	}
	for name, params := range map[string]map[string][]string{
		"token/reader": {"scope": {"admin"}},
		"token/other":  {"scope": {"write"}},
		"token/nobody": nil,
		"token/READER": nil,
	} {
		l.refused(fmt.Sprintf("read of %s with %d parameters", name, len(params)), func() error {
			_, err := c.Logical().ReadWithDataWithContext(e.ctx, mountPath+"/"+name, params)
			return err
		}, http.StatusBadRequest)
	}

	// Leases: renew is refused, revocation reaches the tenant, and revocations the
	// tenant fails or answers with the client secret in every form.
	l.refused("renewal of a token lease", func() error {
		_, err := c.Sys().RenewWithContext(e.ctx, plain.LeaseID, 0)
		return err
	}, http.StatusBadRequest)
	if _, err := c.Sys().LookupWithContext(e.ctx, role.LeaseID); err != nil {
		t.Errorf("lease lookup: %v", err)
	}
	if err := c.Sys().RevokeWithContext(e.ctx, plain.LeaseID); err != nil {
		t.Errorf("revoking a lease: %v", err)
	}
	if !e.tenant.emu.Revoked(accessToken(t, plain)) {
		t.Error("the revoked lease's token was not revoked at the tenant")
	}
	for _, f := range forms {
		for _, fault := range []struct {
			name   string
			fault  emulator.Fault
			failed bool // the revocation fails, and the lease stays until revoked again
		}{
			{"400", emulator.Fault{Endpoint: "revoke", Times: 1, Status: http.StatusBadRequest, Body: `{"error":"invalid_request","error_description":"cannot revoke for ` + f.value + `"}`}, false},
			{"503", emulator.Fault{Endpoint: "revoke", Times: 1, Status: http.StatusServiceUnavailable, Body: "service unavailable for " + f.value}, true},
		} {
			s := e.readToken("token/reader", nil)
			e.tenant.emu.AddFaults(fault.fault)
			err := c.Sys().RevokeWithContext(e.ctx, s.LeaseID)
			l.noteErr(err)
			if (err != nil) != fault.failed {
				t.Errorf("revocation answered %s with the secret %s: error %v, want one: %t", fault.name, f.label, err, fault.failed)
			}
			if fault.failed {
				if err := c.Sys().RevokeWithContext(e.ctx, s.LeaseID); err != nil {
					t.Errorf("revoking again after a %s: %v", fault.name, err)
				}
			}
		}
	}
	// The revoke endpoint reflects the request, the token in it. Its 400 is an OAuth
	// invalid_client, a refusal of the engine's credentials: the revocation fails, and
	// Vault keeps the lease to revoke again, as after a 503.
	for _, style := range []struct {
		status int
		kind   string
		failed bool
	}{{http.StatusBadRequest, "json", true}, {http.StatusServiceUnavailable, "text", true}} {
		s := e.readToken("token/reader", nil)
		refl.arm("/oauth2/revoke/", style.status, style.kind, 1)
		err := c.Sys().RevokeWithContext(e.ctx, s.LeaseID)
		l.noteErr(err)
		if (err != nil) != style.failed {
			t.Errorf("revocation reflected as %d %s: error %v, want one: %t", style.status, style.kind, err, style.failed)
		}
		if style.failed {
			if err := c.Sys().RevokeWithContext(e.ctx, s.LeaseID); err != nil {
				t.Errorf("revoking again after a reflected %d: %v", style.status, err)
			}
		}
	}

	// Root rotation: one that succeeds, and refusals that quote the secrets.
	l.write("config", map[string]any{"client_auth": "basic", "client_secret": secret, "max_retries": 0})
	if _, err := e.rotateRoot(e.ctx); err != nil {
		t.Fatalf("config/rotate-root: %v", err)
	}
	current := lastNewPassword(t, e)
	for _, f := range secretForms(clientID, current) {
		msg := "password rejected: " + f.value
		envelope, _ := json.Marshal(map[string]any{"success": false, "Result": nil, "Message": msg, "MessageID": "_I18NPasswordRejected", "ErrorID": "e2e"})
		l.faulted("rotate-root, tenant refuses with the current secret "+f.label, emulator.Fault{
			Endpoint: "change_password", Times: 1, Status: http.StatusOK, Body: string(envelope),
		}, func() error {
			_, err := e.rotateRoot(e.ctx)
			return err
		})
	}
	refl.arm("/usermgmt/changeuserpassword", http.StatusOK, "envelope", 1)
	l.refused("rotate-root, tenant reflects the password change", func() error {
		_, err := e.rotateRoot(e.ctx)
		return err
	}, http.StatusBadRequest)
	if !e.tenant.emu.ClientSecretIs(clientID, current) {
		t.Error("after the refused rotations the tenant no longer accepts the secret the successful one set")
	}
	e.readToken("token", nil)

	// What is left to read: the config after all this, every path's help, and the
	// OpenAPI document, which describes the config's fields.
	l.read("config")
	for _, p := range []string{"config", "config/rotate-root", "roles", "roles/reader", "token", "token/reader"} {
		if _, err := c.Help(mountPath + "/" + p); err != nil {
			t.Errorf("path-help %s: %v", p, err)
		}
	}
	if resp, err := c.Logical().ReadRawWithContext(e.ctx, "sys/internal/specs/openapi"); err != nil {
		t.Errorf("reading the OpenAPI document: %v", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Contains(body, []byte(mountPath+"/config")) {
			t.Errorf("the OpenAPI document (%d bytes) does not describe %s/config", len(body), mountPath)
		}
	}
	l.delete("config")
	l.refused("token read after the config was deleted", func() error {
		_, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		return err
	}, http.StatusBadRequest)

	// The audit log saw the token reads, and holds each token only as an HMAC.
	checkAuditHMACs(t, e)

	// The hunt. The guard checks the logs again when the processes have stopped.
	stats := e.guard.scan(t)
	t.Logf("leak hunt: %d secrets (%d passwords the tenant saw, %d access tokens) in %d distinct forms; %d bytes scanned in %d logs and %d responses and error texts; %d findings",
		stats.secrets, len(e.tenant.passwords()), len(e.tenant.emu.Issued()), stats.forms, stats.bytes, stats.logs, stats.texts, stats.findings)
	if got := len(e.tenant.passwords()); got < 2 {
		t.Errorf("the tenant's password API saw %d passwords, want the original and the rotated one at least", got)
	}
	if stats.texts < 100 {
		t.Errorf("only %d responses and error texts were captured", stats.texts)
	}
}

// leakRun is one leak hunt's calls: the error of every call is kept as text to scan.
type leakRun struct {
	t   *testing.T
	e   *env
	rec *recorder
}

func (l *leakRun) noteErr(err error) {
	if err != nil {
		l.rec.note("error text", err.Error())
	}
}

func (l *leakRun) write(path string, data map[string]any) {
	l.t.Helper()
	_, err := l.e.client.Logical().WriteWithContext(l.e.ctx, mountPath+"/"+path, data)
	l.noteErr(err)
	if err != nil {
		l.t.Fatalf("writing %s: %v", path, err)
	}
}

func (l *leakRun) read(path string) {
	l.t.Helper()
	s, err := l.e.client.Logical().ReadWithContext(l.e.ctx, mountPath+"/"+path)
	l.noteErr(err)
	if err != nil || s == nil {
		l.t.Fatalf("reading %s: %v", path, err)
	}
}

func (l *leakRun) list(path string) {
	l.t.Helper()
	s, err := l.e.client.Logical().ListWithContext(l.e.ctx, mountPath+"/"+path)
	l.noteErr(err)
	if err != nil || s == nil {
		l.t.Fatalf("listing %s: %v", path, err)
	}
}

func (l *leakRun) delete(path string) {
	l.t.Helper()
	_, err := l.e.client.Logical().DeleteWithContext(l.e.ctx, mountPath+"/"+path)
	l.noteErr(err)
	if err != nil {
		l.t.Fatalf("deleting %s: %v", path, err)
	}
}

// refused runs call, which must fail with status want.
func (l *leakRun) refused(what string, call func() error, want int) {
	l.t.Helper()
	err := call()
	l.noteErr(err)
	var re *api.ResponseError
	switch {
	case err == nil:
		l.t.Errorf("%s succeeded; want a %d", what, want)
	case !errors.As(err, &re):
		l.t.Errorf("%s: %v; want a %d from Vault", what, err, want)
	case re.StatusCode != want:
		l.t.Errorf("%s: %d %q; want a %d", what, re.StatusCode, re.Errors, want)
	}
}

// faulted runs call with fault queued at the tenant: call must fail, and the fault
// must be used up by it.
func (l *leakRun) faulted(what string, fault emulator.Fault, call func() error) {
	l.t.Helper()
	before := l.e.tenant.emu.Stats().FaultsServed
	l.e.tenant.emu.AddFaults(fault)
	err := call()
	l.noteErr(err)
	if err == nil {
		l.t.Errorf("%s succeeded; want an error", what)
	}
	if got := l.e.tenant.emu.Stats().FaultsServed - before; got != int64(max(fault.Times, 1)) {
		l.t.Errorf("%s: the tenant served %d faults, want %d", what, got, max(fault.Times, 1))
		l.e.tenant.emu.ClearFaults()
	}
}

type namedFault struct {
	name  string
	fault emulator.Fault
}

// tenantFaults are the ways a tenant answers a token request badly, each with text in
// its answer; the first two are what a verified config write is also tried with.
func tenantFaults(text string) []namedFault {
	return []namedFault{
		{"400 OAuth error", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusBadRequest,
			Body: `{"error":"invalid_client","error_description":"bad credentials ` + text + `"}`}},
		{"500 HTML", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusInternalServerError,
			Body: "<html><body><h1>500</h1><p>" + text + "</p></body></html>"}},
		{"401 text", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusUnauthorized,
			Body: "unauthorized: " + text, ContentType: "text/plain"}},
		{"429 with Retry-After", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusTooManyRequests, RetryAfter: "1",
			Body: `{"error":"temporarily_unavailable","error_description":"slow down ` + text + `"}`}},
		{"200 malformed JSON", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusOK,
			Body: `{"token_type":"Bearer","error_description":"` + text + `","access_token":"eyJ`}},
		{"200 HTML login page", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusOK,
			Body: "<html><form action=/login><input name=p value=" + text + "></form></html>"}},
		{"302 redirect", emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusFound,
			Location: "https://login.example.com/sso#" + text}},
	}
}

// reflectionStyles are how a reflecting tenant answers, and the status a token read
// then gets from Vault.
var reflectionStyles = []struct {
	name   string
	status int
	kind   string
	want   int
}{
	{"a 400 OAuth error", http.StatusBadRequest, "json", http.StatusBadRequest},
	{"a 401 text", http.StatusUnauthorized, "text", http.StatusBadRequest},
	{"a 500 HTML page", http.StatusInternalServerError, "html", http.StatusBadGateway},
	{"a 302 redirect", http.StatusFound, "redirect", http.StatusBadRequest},
	{"a 200 that is not a token", http.StatusOK, "json", http.StatusBadGateway},
}

// reflector stands in front of the emulator and, when armed, answers requests with an
// error that reflects what they carried: the Authorization header and the credentials
// in it, and the body, raw, URL-decoded and in base64. This is what a careless tenant,
// or a proxy in front of it, might do; an engine that quotes the answer must redact it.
type reflector struct {
	mu     sync.Mutex
	next   http.Handler
	armed  []reflection
	bodies [][]byte // every body reflected, for the secrets in it
	count  int
}

type reflection struct {
	prefix string // lower-case path prefix
	status int
	kind   string // json, text, html, redirect or envelope
	times  int
}

func (rf *reflector) wrap(next http.Handler) http.Handler {
	rf.next = next
	return rf
}

func (rf *reflector) arm(prefix string, status int, kind string, times int) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	rf.armed = append(rf.armed, reflection{prefix, status, kind, times})
}

func (rf *reflector) reflected() int {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	return rf.count
}

func (rf *reflector) take(path string) (reflection, bool) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	for i, a := range rf.armed {
		if strings.HasPrefix(strings.ToLower(path), a.prefix) {
			if rf.armed[i].times--; rf.armed[i].times <= 0 {
				rf.armed = append(rf.armed[:i], rf.armed[i+1:]...)
			}
			return a, true
		}
	}
	return reflection{}, false
}

func (rf *reflector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := rf.take(r.URL.Path)
	if !ok {
		rf.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	rf.mu.Lock()
	rf.bodies = append(rf.bodies, body)
	rf.count++
	rf.mu.Unlock()

	// What the request carried, shortest and most revealing first, so that it falls
	// within any excerpt the engine quotes.
	var parts []string
	auth := r.Header.Get("Authorization")
	if scheme, cred, ok := strings.Cut(auth, " "); ok && strings.EqualFold(scheme, "Basic") {
		if raw, err := base64.StdEncoding.DecodeString(cred); err == nil {
			parts = append(parts, "you are "+string(raw))
		}
	}
	if form, err := url.ParseQuery(string(body)); err == nil && strings.Contains(r.Header.Get("Content-Type"), "form") {
		for _, k := range []string{"client_secret", "token"} {
			if v := form.Get(k); v != "" {
				parts = append(parts, k+" "+v)
			}
		}
	}
	parts = append(parts, "body "+string(body), "authorization "+auth,
		"body64 "+base64.StdEncoding.EncodeToString(body))
	text := strings.Join(parts, "; ")

	switch a.kind {
	case "json":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": text})
	case "envelope":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		_ = json.NewEncoder(w).Encode(map[string]any{"success": false, "Result": nil, "Message": text, "MessageID": "_I18NReflected", "ErrorID": "e2e"})
	case "html":
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, "<html><body><pre>"+text+"</pre></body></html>") //nolint:gosec // a fake tenant reflects the request on purpose: the test looks for leaks
	case "redirect":
		w.Header().Set("Location", "https://login.example.com/sso?"+url.Values{"req": {text}}.Encode())
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, "<html><body>moved: "+text+"</body></html>") //nolint:gosec // a fake tenant reflects the request on purpose: the test looks for leaks
	default:
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, text) //nolint:gosec // a fake tenant reflects the request on purpose: the test looks for leaks
	}
}

// secrets are the values in the reflected bodies that the emulator never saw: the
// passwords of a reflected password change.
func (rf *reflector) secrets() []namedSecret {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	var out []namedSecret
	for i, b := range rf.bodies {
		var change map[string]string
		if json.Unmarshal(b, &change) != nil {
			continue
		}
		for _, k := range []string{"oldPassword", "newPassword"} {
			if v := change[k]; v != "" {
				out = append(out, namedSecret{fmt.Sprintf("the %s of reflected request #%d", k, i+1), v})
			}
		}
	}
	return out
}

// recorder keeps the body of every HTTP response the test's Vault client received, and
// the text of every error, for the guard.
type recorder struct {
	mu       sync.Mutex
	captured []checkedText
}

// recordClient replaces e.client with a root client whose transport records every
// response.
func recordClient(t *testing.T, e *env) *recorder {
	t.Helper()
	rec := &recorder{}
	e.client = newClient(t, e.vault.addr, e.vault.token, func(cfg *api.Config) {
		cfg.HttpClient.Transport = &recordingTransport{next: cfg.HttpClient.Transport, rec: rec}
	})
	return rec
}

func (r *recorder) note(name, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.captured = append(r.captured, checkedText{name: name, data: []byte(text)})
}

func (r *recorder) texts() []checkedText {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]checkedText(nil), r.captured...)
}

type recordingTransport struct {
	next http.RoundTripper
	rec  *recorder
}

func (rt *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.next.RoundTrip(req)
	name := "the response to " + req.Method + " " + req.URL.Path
	if err != nil {
		rt.rec.note(name+" (transport error)", err.Error())
		return resp, err
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return resp, rerr
	}
	ct := checkedText{name: fmt.Sprintf("%s (%d)", name, resp.StatusCode), data: body}
	// A token read's response holds its own token, which is what it is for.
	if strings.HasPrefix(req.URL.Path, "/v1/"+mountPath+"/token") && resp.StatusCode == http.StatusOK {
		var s struct {
			Data struct {
				AccessToken string `json:"access_token"`
			} `json:"data"`
		}
		if json.Unmarshal(body, &s) == nil && s.Data.AccessToken != "" {
			ct.allowed = map[string]bool{s.Data.AccessToken: true}
		}
	}
	rt.rec.mu.Lock()
	rt.rec.captured = append(rt.rec.captured, ct)
	rt.rec.mu.Unlock()
	return resp, nil
}

// lastNewPassword is the newPassword of the last password change the tenant received.
func lastNewPassword(t *testing.T, e *env) string {
	t.Helper()
	changes := passwordChanges(e.tenant.emu.Requests())
	if len(changes) == 0 {
		t.Fatal("the tenant received no password change")
	}
	return changes[len(changes)-1].new
}

// checkAuditHMACs reads the audit log: each token read's response is there, with its
// access token HMAC-ed, and each config write's client_secret likewise.
func checkAuditHMACs(t *testing.T, e *env) {
	t.Helper()
	f, err := os.Open(e.vault.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	tokens, secrets := 0, 0
	for sc.Scan() {
		var entry struct {
			Type    string `json:"type"`
			Request struct {
				Path string         `json:"path"`
				Data map[string]any `json:"data"`
			} `json:"request"`
			Response struct {
				Data map[string]any `json:"data"`
			} `json:"response"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Errorf("audit log line is not JSON: %v", err)
			continue
		}
		for field, count := range map[string]*int{"access_token": &tokens, "client_secret": &secrets} {
			data := entry.Request.Data
			if field == "access_token" {
				data = entry.Response.Data
			}
			v, ok := data[field].(string)
			if !ok {
				continue
			}
			*count++
			if !strings.HasPrefix(v, "hmac-sha256:") {
				t.Errorf("the audit entry (%s) of %s holds a %s that is not HMAC-ed (length %d)", entry.Type, entry.Request.Path, field, len(v))
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the audit log: %v", err)
	}
	if tokens == 0 || secrets == 0 {
		t.Errorf("the audit log holds %d access tokens and %d client secrets, HMAC-ed; want some of each", tokens, secrets)
	}
	t.Logf("audit log: %d access tokens and %d client secrets, each checked to be HMAC-ed", tokens, secrets)
}
