//go:build unix

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

const (
	mountPath = "cyberark"

	// The emulated tenant: one app the config names, a second one a role can pick, and
	// a client whose login name has the "@" that real service users have.
	appID      = "vault-e2e"
	otherAppID = "vault-e2e-other"
	clientID   = "svc-vault@e2e.cyberark.cloud"
	// rotationScope is the scope of the config's app whose tokens may call
	// UserMgmt/ChangeUserPassword, and the config's rotation_scopes.
	rotationScope = "rotate"

	// How long a test may take to talk to Vault, start to end.
	testTimeout = 3 * time.Minute
)

// env is one test's world: a tenant emulator over HTTPS, a Vault dev server with the
// plugin registered and mounted, and a guard that checks the processes' logs for secrets
// when the test ends.
type env struct {
	t      *testing.T
	ctx    context.Context
	guard  *logGuard
	tenant *tenant
	vault  *vaultServer
	client *api.Client
}

// envOptions are the settings a test may change from newEnv's defaults.
type envOptions struct {
	// logLevel is the Vault server's -log-level; trace unless a test asks otherwise, so
	// that every line the plugin writes (it logs at trace) reaches the log the guard
	// scans.
	logLevel string
	// tenant, when set, changes the emulator's config before the emulator starts.
	tenant func(*emulator.Config)
	// audit enables a file audit device, with Vault's default HMAC settings, before the
	// plugin is mounted; the log guard checks its log as it checks the others.
	audit bool
	// tenantHandler, when set, wraps the emulator's handler, to answer some requests as
	// another tenant would.
	tenantHandler func(http.Handler) http.Handler
	// pluginVersion is the build to register and mount; versionV1 unless a test asks
	// for another, such as the race-detector build.
	pluginVersion string
}

type envOption func(*envOptions)

// withLogLevel runs the Vault server at level instead of trace, as an operator would.
func withLogLevel(level string) envOption {
	return func(o *envOptions) { o.logLevel = level }
}

// withTenantConfig lets f change the emulator's config (password policy, history...)
// before the emulator starts.
func withTenantConfig(f func(*emulator.Config)) envOption {
	return func(o *envOptions) { o.tenant = f }
}

// withTenantHandler puts wrap in front of the emulator: wrap gets the emulator's
// handler and returns the one the tenant's server runs.
func withTenantHandler(wrap func(http.Handler) http.Handler) envOption {
	return func(o *envOptions) { o.tenantHandler = wrap }
}

// withPluginVersion mounts the plugin build of version (see plugin) instead of
// versionV1.
func withPluginVersion(version string) envOption {
	return func(o *envOptions) { o.pluginVersion = version }
}

// withAuditLog runs Vault with a file audit device, as production does: the audit log
// is one more log that must hold no secret.
func withAuditLog() envOption {
	return func(o *envOptions) { o.audit = true }
}

// newEnv starts everything a test needs and registers its teardown. Teardown runs in
// reverse: processes stop first, then the emulator, then the log checks, so the checks
// see complete logs and every token the tenant issued.
func newEnv(t *testing.T, expiresIn int, opts ...envOption) *env {
	t.Helper()
	o := envOptions{logLevel: "trace", pluginVersion: versionV1}
	for _, opt := range opts {
		opt(&o)
	}
	bin := vaultBin(t)
	// The temporary directory is created first so that it is removed last, after the
	// log checks have read the logs in it.
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx}
	e.guard = newLogGuard(t)
	e.tenant = startTenant(t, expiresIn, o.tenant, o.tenantHandler)
	e.guard.addSecrets(e.tenant.secrets)
	b := plugin(t, o.pluginVersion)
	// The first test to get here builds the plugin while the others wait; their time
	// limit starts when it is built.
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	e.ctx = ctx
	e.vault = startVault(ctx, t, bin, dir, o.logLevel, e.guard)
	e.client = e.vault.client
	if o.audit {
		e.vault.enableAudit(t, filepath.Join(dir, "audit.log"), e.guard)
	}
	e.vault.register(t, b)
	e.vault.mount(t, mountPath, b)
	return e
}

// configure writes a working config for the tenant, with verification on (the default).
func (e *env) configure() {
	e.t.Helper()
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", e.tenant.configData()); err != nil {
		e.t.Fatalf("writing the config: %v", err)
	}
}

func (e *env) writeRole(name string, data map[string]any) {
	e.t.Helper()
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/roles/"+name, data); err != nil {
		e.t.Fatalf("writing role %s: %v", name, err)
	}
}

// readToken reads path under the mount and checks that the access token it returns is
// one the tenant issued.
func (e *env) readToken(path string, params map[string][]string) *api.Secret {
	e.t.Helper()
	return e.readTokenAs(e.client, path, params)
}

// readTokenAs is readToken through c, which may hold a token other than root.
func (e *env) readTokenAs(c *api.Client, path string, params map[string][]string) *api.Secret {
	e.t.Helper()
	s, err := c.Logical().ReadWithDataWithContext(e.ctx, mountPath+"/"+path, params)
	if err != nil {
		e.t.Fatalf("reading %s: %v", path, err)
	}
	if s == nil {
		e.t.Fatalf("reading %s: no secret returned", path)
	}
	e.tenant.mustHaveIssued(e.t, accessToken(e.t, s))
	return s
}

// logGuard knows every log file a test's processes write, every other text a test
// wants checked (HTTP responses, error messages), and every secret the test handles.
// When the test ends it fails the test if any log or text holds any form of a secret
// (secretForms: raw, URL-encoded, JSON-escaped, base64, Basic credentials), and dumps
// the logs, secrets redacted, if the test failed.
type logGuard struct {
	mu      sync.Mutex
	logs    []namedLog
	texts   []func() []checkedText
	secrets []func() []namedSecret
	// reported are the findings already reported, so that a scan during the test and
	// the check at its end report each once.
	reported map[string]bool
}

type namedLog struct{ name, path string }

type namedSecret struct{ label, value string }

// checkedText is text to check like a log. allowed names secrets (by value) that may
// appear in it, in any form: a token read's response holds its own token.
type checkedText struct {
	name    string
	data    []byte
	allowed map[string]bool
}

func newLogGuard(t *testing.T) *logGuard {
	g := &logGuard{}
	t.Cleanup(func() { g.check(t) })
	return g
}

func (g *logGuard) addLog(name, path string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.logs = append(g.logs, namedLog{name, path})
}

// addTexts adds a source of texts to check; it is called at the end of the test.
func (g *logGuard) addTexts(f func() []checkedText) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.texts = append(g.texts, f)
}

// addSecrets adds a source of secrets; it is called at the end of the test, so it can
// name tokens issued at any time during it.
func (g *logGuard) addSecrets(f func() []namedSecret) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.secrets = append(g.secrets, f)
}

// maxFindingsShown bounds the errors one check reports, so that a leak of thousands of
// tokens stays readable; the count of the rest is reported.
const maxFindingsShown = 20

// guardStats says what one scan covered.
type guardStats struct {
	secrets, forms, logs, texts, findings int
	bytes                                 int64
}

// check scans when the test ends, and dumps the logs, redacted, if the test failed.
func (g *logGuard) check(t *testing.T) {
	st, sc, contents := g.scanAll(t)
	t.Logf("log guard: %d logs and %d other texts, %d bytes, checked for %d distinct forms of %d secrets: %d findings",
		st.logs, st.texts, st.bytes, st.forms, st.secrets, st.findings)
	if !t.Failed() {
		return
	}
	for i, l := range g.logList() {
		if i >= len(contents) {
			break
		}
		data := sc.redact(contents[i])
		const limit = 128 << 10
		if len(data) > limit {
			data = append([]byte("[... earlier output cut ...]\n"), data[len(data)-limit:]...)
		}
		t.Logf("---- %s log (%s), secrets redacted ----\n%s\n---- end of %s log ----", l.name, l.path, data, l.name)
	}
}

// scan checks every log and text now, failing the test for each finding, and says what
// it covered; check does it again when the test ends.
func (g *logGuard) scan(t *testing.T) guardStats {
	st, _, _ := g.scanAll(t)
	return st
}

func (g *logGuard) logList() []namedLog {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]namedLog(nil), g.logs...)
}

func (g *logGuard) scanAll(t *testing.T) (guardStats, *scanner, [][]byte) {
	g.mu.Lock()
	logs := append([]namedLog(nil), g.logs...)
	var secrets []namedSecret
	for _, f := range g.secrets {
		secrets = append(secrets, f()...)
	}
	var texts []checkedText
	for _, f := range g.texts {
		texts = append(texts, f()...)
	}
	g.mu.Unlock()

	sc := newScanner(secrets)
	st := guardStats{secrets: len(secrets), forms: sc.formCount(), logs: len(logs), texts: len(texts)}
	contents := make([][]byte, len(logs))
	shown := 0
	report := func(where string, fs []finding) {
		for _, f := range fs {
			st.findings++
			key := where + "\x00" + f.secret + "\x00" + f.form
			g.mu.Lock()
			seen := g.reported[key]
			if g.reported == nil {
				g.reported = map[string]bool{}
			}
			g.reported[key] = true
			g.mu.Unlock()
			if seen || shown >= maxFindingsShown {
				continue
			}
			shown++
			// Never the secret itself: its length and a hash prefix identify it.
			t.Errorf("%s contains %s, %s (%d times, first at byte %d; length %d, sha256 %s)",
				where, f.secret, f.form, f.count, f.firstAt, f.length, f.hash)
		}
	}
	for i, l := range logs {
		data, err := os.ReadFile(l.path)
		if err != nil {
			t.Errorf("reading the %s log: %v", l.name, err)
			continue
		}
		contents[i] = data
		st.bytes += int64(len(data))
		report("the "+l.name+" log", sc.findings(data, nil))
	}
	for _, x := range texts {
		st.bytes += int64(len(x.data))
		report(x.name, sc.findings(x.data, x.allowed))
	}
	if st.findings > maxFindingsShown && shown == maxFindingsShown {
		t.Errorf("... and %d more findings", st.findings-shown)
	}
	return st, sc, contents
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

// tenant is a tenant emulator served over HTTPS with a CA of its own.
type tenant struct {
	emu    *emulator.Emulator
	srv    *httptest.Server
	url    string
	caPEM  string
	secret string
	// conns counts the connections clients opened; abandoned, the TLS handshakes they
	// gave up on.
	conns, abandoned atomic.Int64
}

// serverErrors is the tenant server's error log: abandoned TLS handshakes are counted,
// anything else is printed.
type serverErrors struct{ abandoned *atomic.Int64 }

func (w serverErrors) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("TLS handshake error")) {
		w.abandoned.Add(1)
		return len(p), nil
	}
	return os.Stderr.Write(p)
}

// startTenant starts the emulator. The config's app defines a scope, rotationScope,
// whose tokens may change the client's password, as root rotation needs; tweak, when
// set, changes the config before the emulator starts.
func startTenant(t *testing.T, expiresIn int, tweak func(*emulator.Config), wrap func(http.Handler) http.Handler) *tenant {
	t.Helper()
	// A ":" and "%" in the secret are what clients that URL-encode Basic credentials,
	// or split them at the last colon, get wrong.
	secret := "E2e:%40-" + randomHex(t, 16)
	client := emulator.Client{ID: clientID, Secret: secret, AllowedScopes: []string{"read", "write"}}
	rotator := client
	rotator.AllowedScopes = []string{"read", "write", rotationScope}
	cfg := emulator.Config{
		ExpiresIn: expiresIn,
		Apps: []emulator.App{
			{
				ID: appID, Scopes: []string{"read", "write", "admin", rotationScope},
				ScopeAPIs: map[string][]string{rotationScope: {"UserMgmt/ChangeUserPassword"}},
				Clients:   []emulator.Client{rotator},
			},
			{ID: otherAppID, Scopes: []string{"read", "write"}, Clients: []emulator.Client{client}},
		},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	emu, err := emulator.New(cfg)
	if err != nil {
		t.Fatalf("emulator: %v", err)
	}
	ca, err := emulator.NewCA()
	if err != nil {
		t.Fatalf("emulator CA: %v", err)
	}
	var h http.Handler = emu
	if wrap != nil {
		h = wrap(emu)
	}
	tn := &tenant{emu: emu, caPEM: string(ca.CertPEM()), secret: secret}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = ca.ServerTLSConfig()
	// Connections are counted, and handshakes that clients abandon are counted rather
	// than printed one by one: under load they say how well the engine pools its
	// connections.
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			tn.conns.Add(1)
		}
	}
	srv.Config.ErrorLog = log.New(serverErrors{&tn.abandoned}, "", log.LstdFlags)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tn.srv, tn.url = srv, srv.URL
	return tn
}

// configData is a complete config for this tenant.
func (tn *tenant) configData() map[string]any {
	return map[string]any{
		"tenant_url":    tn.url,
		"app_id":        appID,
		"client_id":     clientID,
		"client_secret": tn.secret,
		"ca_cert":       tn.caPEM,
		"scopes":        "read,write",
		// Root rotation asks for this scope only, in the grant that changes the password.
		"rotation_scopes": rotationScope,
	}
}

// basicCredentials is the Authorization header value a correct client sends.
func (tn *tenant) basicCredentials() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(clientID+":"+tn.secret))
}

// secrets lists what must never reach a log (the guard looks for each in every form
// secretForms lists): the client secret, every password the tenant was asked to change
// from or to (root rotation's secrets, which the test never otherwise sees), and every
// issued access token, whole and its signature.
func (tn *tenant) secrets() []namedSecret {
	s := []namedSecret{{"the client secret", tn.secret}}
	for i, pw := range tn.passwords() {
		if pw == tn.secret {
			continue
		}
		s = append(s, namedSecret{fmt.Sprintf("password #%d sent to the tenant's password API", i+1), pw})
	}
	for i, tok := range tn.emu.Issued() {
		s = append(s, namedSecret{fmt.Sprintf("access token #%d", i+1), tok})
		if j := strings.LastIndexByte(tok, '.'); j >= 0 && len(tok)-j > 16 {
			s = append(s, namedSecret{fmt.Sprintf("the signature of access token #%d", i+1), tok[j+1:]})
		}
	}
	return s
}

// passwords are the distinct old and new passwords of every password-management call
// the tenant received, in the order first seen. The emulator records the bodies of those
// calls; no other API tells what secret a rotation set.
func (tn *tenant) passwords() []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range tn.emu.Requests() {
		if !strings.HasPrefix(strings.ToLower(r.Path), "/usermgmt/") {
			continue
		}
		var body map[string]any
		if json.Unmarshal(r.Body, &body) != nil {
			continue
		}
		for _, k := range []string{"oldPassword", "newPassword"} {
			if pw, _ := body[k].(string); pw != "" && !seen[pw] {
				seen[pw] = true
				out = append(out, pw)
			}
		}
	}
	return out
}

func (tn *tenant) mustHaveIssued(t testing.TB, token string) {
	t.Helper()
	for _, tok := range tn.emu.Issued() {
		if tok == token {
			return
		}
	}
	t.Fatalf("access token (length %d, sha256 %s) is not one the tenant issued", len(token), shortHash(token))
}

// lastTokenRequest is the last request the tenant's token endpoint received.
func (tn *tenant) lastTokenRequest(t testing.TB) emulator.Request {
	t.Helper()
	return tn.lastRequest(t, "/oauth2/token/")
}

// lastRequest is the last request the tenant received on a path under prefix.
func (tn *tenant) lastRequest(t testing.TB, prefix string) emulator.Request {
	t.Helper()
	reqs := tn.emu.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if strings.HasPrefix(strings.ToLower(reqs[i].Path), prefix) {
			return reqs[i]
		}
	}
	t.Fatalf("the tenant received no request under %s", prefix)
	return emulator.Request{}
}

// vaultServer is a Vault dev server on a loopback port. At the trace level that most
// tests use, its log includes all of the plugin's own log lines.
type vaultServer struct {
	addr   string
	token  string
	client *api.Client
	proc   *vaultproc.Process
	// auditPath is the file audit device's log, when one is enabled.
	auditPath string
}

func startVault(ctx context.Context, t *testing.T, bin, dir, logLevel string, guard *logGuard) *vaultServer {
	t.Helper()
	logPath := filepath.Join(dir, "vault.log")
	guard.addLog("vault server", logPath)
	d, err := vaultproc.StartDev(ctx, vaultproc.DevConfig{
		Bin:       bin,
		Dir:       dir,
		PluginDir: pluginDir,
		LogPath:   logPath,
		LogLevel:  logLevel,
		Token:     "e2e-root-" + randomHex(t, 8),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(20*time.Second, t.Logf) })
	return &vaultServer{addr: d.Addr, token: d.Token, client: d.Client, proc: d.Proc}
}

// newClient is a Vault client for addr with token; tweaks change its config first.
func newClient(t testing.TB, addr, token string, tweaks ...func(*api.Config)) *api.Client {
	t.Helper()
	c, err := vaultproc.NewClient(addr, token, tweaks...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// enableAudit turns on a file audit device writing to path, with Vault's default
// settings (every string HMAC-ed), and hands its log to guard.
func (v *vaultServer) enableAudit(t testing.TB, path string, guard *logGuard) {
	t.Helper()
	guard.addLog("vault audit", path)
	v.auditPath = path
	err := v.client.Sys().EnableAuditWithOptions("file", &api.EnableAuditOptions{
		Type:    "file",
		Options: map[string]string{"file_path": path},
	})
	if err != nil {
		t.Fatalf("enabling the file audit device: %v", err)
	}
}

// register adds b to the catalog by SHA-256 and version, as an operator would.
func (v *vaultServer) register(t testing.TB, b *pluginBuild) {
	t.Helper()
	if err := b.Register(context.Background(), v.client); err != nil {
		t.Fatal(err)
	}
}

func (v *vaultServer) mount(t testing.TB, path string, b *pluginBuild) {
	t.Helper()
	if err := b.Mount(context.Background(), v.client, path); err != nil {
		t.Fatal(err)
	}
}

// mountInfo is the sys/mounts entry of path.
func (v *vaultServer) mountInfo(t testing.TB, path string) *api.MountOutput {
	t.Helper()
	mounts, err := v.client.Sys().ListMounts()
	if err != nil {
		t.Fatalf("listing mounts: %v", err)
	}
	m, ok := mounts[strings.TrimSuffix(path, "/")+"/"]
	if !ok {
		t.Fatalf("sys/mounts has no %s/", path)
	}
	return m
}

// logText is the server's log so far.
func (v *vaultServer) logText(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(v.proc.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// responseError unwraps the error of a Vault API call into its status and messages.
func responseError(t testing.TB, err error) *api.ResponseError {
	t.Helper()
	if err == nil {
		t.Fatal("the call succeeded; want an error")
	}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a Vault response error", err)
	}
	return re
}

// accessToken is the access_token field of a token read.
func accessToken(t testing.TB, s *api.Secret) string {
	t.Helper()
	tok, _ := s.Data["access_token"].(string)
	if tok == "" {
		t.Fatalf("the response has no access_token; fields: %v", keys(s.Data))
	}
	return tok
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// jwtClaims are the claims of an access token that the tests look at.
type jwtClaims struct {
	Iss   string `json:"iss"`
	Aud   string `json:"aud"`
	Sub   string `json:"sub"`
	Scope string `json:"scope"`
	Iat   int64  `json:"iat"`
	Exp   int64  `json:"exp"`
}

// parseClaims decodes a JWT's claims without checking its signature: the tests check
// that the token is one the emulator issued instead.
func parseClaims(t testing.TB, token string) jwtClaims {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("access token has %d parts, want a JWT's 3", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("access token payload: %v", err)
	}
	var c jwtClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatalf("access token claims: %v", err)
	}
	return c
}

// intField reads a JSON number field of a Vault response.
func intField(t testing.TB, data map[string]any, name string) int64 {
	t.Helper()
	n, ok := data[name].(json.Number)
	if !ok {
		t.Fatalf("field %s = %#v, want a number", name, data[name])
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatalf("field %s: %v", name, err)
	}
	return i
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
