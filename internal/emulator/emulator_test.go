package emulator

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testApp    = "VaultApp"
	testClient = "svc-vault@example.cyberark.cloud"
	// The secret has what breaks naive clients: a colon (Basic splits at the first one)
	// and percent signs that URL-decoding would mangle.
	testSecret     = "pa:ss%40w%rd:x"
	testUUID       = "c2c7bcc6-9560-44e0-8dff-5be221cd37ee"
	limitedClient  = "svc-limited@example.cyberark.cloud"
	limitedSecret  = "Limited-Secret-1"
	postOnlyApp    = "PostOnly"
	basicOnlyApp   = "BasicOnly"
	overrideApp    = "ShortLived"
	overrideExpiry = 60
)

func testConfig() Config {
	clients := func() []Client {
		return []Client{
			{ID: testClient, Secret: testSecret, UUID: testUUID},
			{ID: limitedClient, Secret: limitedSecret, AllowedScopes: []string{"read"}},
		}
	}
	return Config{Apps: []App{
		{ID: testApp, Scopes: []string{"all", "read", "write"}, Clients: clients()},
		{ID: postOnlyApp, Scopes: []string{"all"}, Clients: clients()[:1], AuthModes: []string{"post"}},
		{ID: basicOnlyApp, Scopes: []string{"all"}, Clients: clients()[:1], AuthModes: []string{"basic"}},
		{ID: overrideApp, Scopes: []string{"all"}, Clients: clients()[:1], ExpiresIn: overrideExpiry},
	}}
}

// fakeClock lets tests move time forward without sleeping.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fixture struct {
	emu   *Emulator
	srv   *httptest.Server
	clock *fakeClock
}

// newFixture serves a new emulator over plain HTTP with a fake clock. mutate, if not nil,
// adjusts the test config first.
func newFixture(t *testing.T, mutate func(*Config)) *fixture {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	emu, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	clock := &fakeClock{now: time.Unix(1_750_000_000, 0)}
	emu.SetClock(clock.Now)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return &fixture{emu: emu, srv: srv, clock: clock}
}

func basicHeader(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

// post sends a form to path with an optional Authorization header and returns the
// status, headers and body.
func (f *fixture) post(t *testing.T, path, auth string, form url.Values) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return do(t, f.srv.Client(), req)
}

func (f *fixture) get(t *testing.T, path string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, f.srv.Client(), req)
}

func do(t *testing.T, c *http.Client, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, resp.Header, body
}

// token gets a token for the main client and returns the decoded response.
func (f *fixture) token(t *testing.T, form url.Values) map[string]any {
	t.Helper()
	if form == nil {
		form = url.Values{}
	}
	form.Set("grant_type", "client_credentials")
	status, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, testSecret), form)
	if status != http.StatusOK {
		t.Fatalf("token: status %d, body %s", status, body)
	}
	var resp map[string]any
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatalf("token: %v in %s", err, body)
	}
	return resp
}

func oauthBody(code, desc string) string {
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	return string(b)
}

func TestTokenErrorsAndAuth(t *testing.T) {
	t.Parallel()
	grant := url.Values{"grant_type": {"client_credentials"}}
	withForm := func(extra url.Values) url.Values {
		v := url.Values{"grant_type": {"client_credentials"}}
		for k, vs := range extra {
			v[k] = vs
		}
		return v
	}
	good := basicHeader(testClient, testSecret)
	tests := []struct {
		name        string
		errorStatus int // Config.ErrorStatus
		method      string
		path        string
		auth        string
		form        url.Values
		wantStatus  int
		wantBody    string // exact; empty means a successful grant
	}{
		{name: "basic with raw @, colon and percent", path: "/oauth2/token/" + testApp, auth: good, form: grant, wantStatus: 200},
		{name: "post", path: "/oauth2/token/" + testApp,
			form: withForm(url.Values{"client_id": {testClient}, "client_secret": {testSecret}}), wantStatus: 200},
		{name: "basic scheme in lower case", path: "/oauth2/token/" + testApp,
			auth: "basic " + strings.TrimPrefix(good, "Basic "), form: grant, wantStatus: 200},
		{name: "basic wins over form", path: "/oauth2/token/" + testApp, auth: good,
			form: withForm(url.Values{"client_id": {"nobody"}}), wantStatus: 200},
		{name: "URL-encoded basic ID is not decoded", path: "/oauth2/token/" + testApp,
			auth: basicHeader(url.QueryEscape(testClient), url.QueryEscape(testSecret)), form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "URL-encoded basic secret is not decoded", path: "/oauth2/token/" + testApp,
			auth: basicHeader(testClient, url.QueryEscape(testSecret)), form: grant,
			wantStatus: 400, wantBody: oauthBody("access_denied", "invalid client creds or client not allowed")},
		{name: "GET", method: http.MethodGet, path: "/oauth2/token/" + testApp, auth: good,
			wantStatus: 405, wantBody: oauthBody("invalid_request", "method not allowed")},
		{name: "unknown app, as sent", path: "/oauth2/token/NoSuchApp", auth: good, form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_request", "unknown app NoSuchApp")},
		{name: "unknown app stays 400 with error_status 401", errorStatus: 401, path: "/oauth2/token/nope", auth: good, form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_request", "unknown app nope")},
		{name: "basic on post-only app", path: "/oauth2/token/" + postOnlyApp, auth: good, form: grant,
			wantStatus: 400, wantBody: oauthBody("access_denied", "auth mode not allowed")},
		{name: "post on basic-only app", path: "/oauth2/token/" + basicOnlyApp,
			form:       withForm(url.Values{"client_id": {testClient}, "client_secret": {testSecret}}),
			wantStatus: 400, wantBody: oauthBody("access_denied", "auth mode not allowed")},
		{name: "auth mode with error_status 401", errorStatus: 401, path: "/oauth2/token/" + postOnlyApp, auth: good, form: grant,
			wantStatus: 401, wantBody: oauthBody("access_denied", "auth mode not allowed")},
		{name: "post on post-only app", path: "/oauth2/token/" + postOnlyApp,
			form: withForm(url.Values{"client_id": {testClient}, "client_secret": {testSecret}}), wantStatus: 200},
		{name: "no credentials", path: "/oauth2/token/" + testApp, form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "no credentials with error_status 401", errorStatus: 401, path: "/oauth2/token/" + testApp, form: grant,
			wantStatus: 401, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "unknown client", path: "/oauth2/token/" + testApp, auth: basicHeader("svc-other@example", testSecret), form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "client ID is case-sensitive", path: "/oauth2/token/" + testApp, auth: basicHeader(strings.ToUpper(testClient), testSecret), form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "basic without colon", path: "/oauth2/token/" + testApp,
			auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(testClient)), form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "basic not base64", path: "/oauth2/token/" + testApp, auth: "Basic !!!", form: grant,
			wantStatus: 400, wantBody: oauthBody("invalid_client", "wrong clientid")},
		{name: "wrong secret", path: "/oauth2/token/" + testApp, auth: basicHeader(testClient, "wrong"), form: grant,
			wantStatus: 400, wantBody: oauthBody("access_denied", "invalid client creds or client not allowed")},
		{name: "wrong secret with error_status 401", errorStatus: 401, path: "/oauth2/token/" + testApp, auth: basicHeader(testClient, "wrong"), form: grant,
			wantStatus: 401, wantBody: oauthBody("access_denied", "invalid client creds or client not allowed")},
		{name: "post wrong secret", path: "/oauth2/token/" + testApp,
			form:       withForm(url.Values{"client_id": {testClient}, "client_secret": {"nope"}}),
			wantStatus: 400, wantBody: oauthBody("access_denied", "invalid client creds or client not allowed")},
		{name: "grant_type missing", path: "/oauth2/token/" + testApp, auth: good, form: url.Values{},
			wantStatus: 400, wantBody: oauthBody("invalid_grant", "invalid grant type")},
		{name: "grant_type password", path: "/oauth2/token/" + testApp, auth: good, form: url.Values{"grant_type": {"password"}},
			wantStatus: 400, wantBody: oauthBody("invalid_grant", "invalid grant type")},
		{name: "grant_type stays 400 with error_status 401", errorStatus: 401, path: "/oauth2/token/" + testApp, auth: good, form: url.Values{},
			wantStatus: 400, wantBody: oauthBody("invalid_grant", "invalid grant type")},
		{name: "unknown scope", path: "/oauth2/token/" + testApp, auth: good, form: withForm(url.Values{"scope": {"read admin"}}),
			wantStatus: 400, wantBody: oauthBody("invalid_scope", "unknown scope requested")},
		{name: "scope not allowed for client", path: "/oauth2/token/" + testApp, auth: basicHeader(limitedClient, limitedSecret),
			form: withForm(url.Values{"scope": {"write"}}), wantStatus: 400, wantBody: oauthBody("invalid_scope", "scope not allowed for client")},
		{name: "unknown scope reported before forbidden", path: "/oauth2/token/" + testApp, auth: basicHeader(limitedClient, limitedSecret),
			form: withForm(url.Values{"scope": {"write bogus"}}), wantStatus: 400, wantBody: oauthBody("invalid_scope", "unknown scope requested")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) { c.ErrorStatus = tc.errorStatus })
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+tc.path, strings.NewReader(tc.form.Encode()))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			status, hdr, body := do(t, f.srv.Client(), req)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", status, tc.wantStatus, body)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			st := f.emu.Stats()
			if tc.wantBody == "" {
				var resp map[string]any
				if err := json.Unmarshal(body, &resp); err != nil || resp["access_token"] == "" {
					t.Fatalf("no token in %s (%v)", body, err)
				}
				if st.Grants != 1 || st.TokenErrors != 0 {
					t.Errorf("stats %+v, want 1 grant, no errors", st)
				}
				return
			}
			if string(body) != tc.wantBody {
				t.Errorf("body %s\nwant %s", body, tc.wantBody)
			}
			if st.Grants != 0 || st.TokenErrors != 1 || st.TokenRequests != 1 {
				t.Errorf("stats %+v, want 1 request, 1 error, no grant", st)
			}
			if len(f.emu.Issued()) != 0 {
				t.Error("a failed request issued a token")
			}
		})
	}
}

func TestTokenPathCaseInsensitive(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, path := range []string{
		"/oauth2/token/" + testApp,
		"/OAuth2/Token/" + testApp,
		"/OAUTH2/TOKEN/vaultapp",
		"/oauth2/token/VAULTAPP/",
	} {
		status, _, body := f.post(t, path, basicHeader(testClient, testSecret), url.Values{"grant_type": {"client_credentials"}})
		if status != http.StatusOK {
			t.Errorf("%s: status %d, body %s", path, status, body)
		}
	}
	// The issuer carries the app ID as configured, whatever case the client used.
	claims := decodeClaims(t, f.emu.Issued()[2])
	if want := f.srv.URL + "/" + testApp + "/"; claims["iss"] != want {
		t.Errorf("iss %v, want %s", claims["iss"], want)
	}
	reqs := f.emu.Requests()
	if len(reqs) != 4 || reqs[1].Path != "/OAuth2/Token/"+testApp {
		paths := make([]string, len(reqs))
		for i, r := range reqs {
			paths[i] = r.Path
		}
		t.Errorf("recorded paths lose the original case: %q", paths) // not the requests: they hold the secret
	}
	for _, path := range []string{"/oauth2/token/", "/oauth2/token/a/b", "/oauth2/other/" + testApp, "/"} {
		if status, _, _ := f.post(t, path, "", nil); status != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", path, status)
		}
	}
}

func TestScopes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	tests := []struct {
		name, client, secret, ask, want string
	}{
		{"no scope gets all the app's", testClient, testSecret, "", "all read write"},
		{"no scope gets the client's allowed", limitedClient, limitedSecret, "", "read"},
		{"one asked", testClient, testSecret, "write", "write"},
		{"duplicates and spacing", testClient, testSecret, " read  write read ", "read write"},
		{"allowed scope for limited client", limitedClient, limitedSecret, "read", "read"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			form := url.Values{"grant_type": {"client_credentials"}}
			if tc.ask != "" {
				form.Set("scope", tc.ask)
			}
			status, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(tc.client, tc.secret), form)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			var resp struct {
				AccessToken string `json:"access_token"`
				Scope       string `json:"scope"`
			}
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.Scope != tc.want {
				t.Errorf("response scope %q, want %q", resp.Scope, tc.want)
			}
			if got := decodeClaims(t, resp.AccessToken)["scope"]; got != tc.want {
				t.Errorf("claim scope %q, want %q", got, tc.want)
			}
		})
	}
}

// decodeClaims returns a JWT's payload without checking the signature.
func decodeClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestJWTVerifiesWithJWKS(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	resp := f.token(t, url.Values{"scope": {"read write"}})
	token := resp["access_token"].(string)

	status, _, body := f.get(t, "/OAuth2/Keys/vaultapp")
	if status != http.StatusOK {
		t.Fatalf("keys: %d %s", status, body)
	}
	var set struct {
		Keys []struct{ Kty, Use, Alg, Kid, N, E string }
	}
	if err := json.Unmarshal(body, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("JWKS %s: %v", body, err)
	}
	k := set.Keys[0]
	if k.Kty != "RSA" || k.Alg != "RS256" || k.Use != "sig" {
		t.Errorf("JWK %+v", k)
	}
	n, err1 := base64.RawURLEncoding.DecodeString(k.N)
	e, err2 := base64.RawURLEncoding.DecodeString(k.E)
	if err1 != nil || err2 != nil {
		t.Fatalf("JWK encoding: %v %v", err1, err2)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if pub.N.BitLen() != 2048 {
		t.Errorf("key is %d bits, want 2048", pub.N.BitLen())
	}

	parts := strings.Split(token, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
		t.Fatalf("signature does not verify with the JWKS key: %v", err)
	}
	tampered := parts[0] + "." + parts[1] + "x"
	digest = sha256.Sum256([]byte(tampered))
	if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) == nil {
		t.Fatal("signature verifies over other content")
	}

	headerJSON, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var header map[string]string
	if err := json.Unmarshal(headerJSON, &header); err != nil {
		t.Fatal(err)
	}
	if header["alg"] != "RS256" || header["typ"] != "JWT" || header["kid"] != k.Kid || k.Kid == "" {
		t.Errorf("header %v, JWK kid %q", header, k.Kid)
	}

	claims := decodeClaims(t, token)
	iat := f.clock.Now().Unix()
	want := map[string]any{
		"iss":         f.srv.URL + "/" + testApp + "/",
		"aud":         testClient,
		"sub":         testUUID,
		"unique_name": testClient,
		"scope":       "read write",
		"iat":         float64(iat),
		"auth_time":   float64(iat),
		"exp":         float64(iat + DefaultExpiresIn),
	}
	for name, v := range want {
		if claims[name] != v {
			t.Errorf("claim %s = %v, want %v", name, claims[name], v)
		}
	}
	if jti, _ := claims["jti"].(string); jti == "" {
		t.Error("no jti")
	}

	// Same client, same second: the tokens must still differ.
	second := f.token(t, url.Values{"scope": {"read write"}})["access_token"].(string)
	if second == token || decodeClaims(t, second)["jti"] == claims["jti"] {
		t.Error("two tokens issued in the same second are identical")
	}

	if status, _, body := f.get(t, "/oauth2/keys/nope"); status != 400 || string(body) != oauthBody("invalid_request", "unknown app nope") {
		t.Errorf("keys for unknown app: %d %s", status, body)
	}
}

func TestGeneratedUUID(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	form := url.Values{"grant_type": {"client_credentials"}}
	_, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(limitedClient, limitedSecret), form)
	var resp map[string]any
	_ = json.Unmarshal(body, &resp)
	sub, _ := decodeClaims(t, resp["access_token"].(string))["sub"].(string)
	if len(sub) != 36 || strings.Count(sub, "-") != 4 {
		t.Errorf("generated sub %q is not a UUID", sub)
	}
	_, _, body = f.post(t, "/oauth2/token/"+testApp, basicHeader(limitedClient, limitedSecret), form)
	_ = json.Unmarshal(body, &resp)
	if again := decodeClaims(t, resp["access_token"].(string))["sub"]; again != sub {
		t.Errorf("sub changed between tokens: %v, %v", sub, again)
	}
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	status, _, body := f.get(t, "/vaultapp/.well-known/openid-configuration")
	if status != http.StatusOK {
		t.Fatalf("%d %s", status, body)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["issuer"] != f.srv.URL+"/"+testApp+"/" || doc["token_endpoint"] != f.srv.URL+"/oauth2/token/"+testApp {
		t.Errorf("discovery %s", body)
	}
}

func TestExpiresInVariants(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		mutate     func(*Config)
		app        string
		set        int // SetExpiresIn before the request, when not 0
		wantExpiry any
		wantScope  bool
	}{
		{name: "default", app: testApp, wantExpiry: float64(DefaultExpiresIn), wantScope: true},
		{name: "config", mutate: func(c *Config) { c.ExpiresIn = 3600 }, app: testApp, wantExpiry: float64(3600), wantScope: true},
		{name: "per-app override", mutate: func(c *Config) { c.ExpiresIn = 3600 }, app: overrideApp, wantExpiry: float64(overrideExpiry), wantScope: true},
		{name: "SetExpiresIn", app: testApp, set: 5, wantExpiry: float64(5), wantScope: true},
		{name: "SetExpiresIn leaves an override", app: overrideApp, set: 5, wantExpiry: float64(overrideExpiry), wantScope: true},
		{name: "as string", mutate: func(c *Config) { c.ExpiresIn = 3600; c.ExpiresInAsString = true }, app: testApp, wantExpiry: "3600", wantScope: true},
		{name: "omit scope", mutate: func(c *Config) { c.OmitScope = true }, app: testApp, wantExpiry: float64(DefaultExpiresIn)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, tc.mutate)
			if tc.set != 0 {
				f.emu.SetExpiresIn(tc.set)
			}
			status, hdr, body := f.post(t, "/oauth2/token/"+tc.app, basicHeader(testClient, testSecret),
				url.Values{"grant_type": {"client_credentials"}})
			if status != http.StatusOK {
				t.Fatalf("%d %s", status, body)
			}
			if hdr.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q", hdr.Get("Cache-Control"))
			}
			var resp map[string]any
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatal(err)
			}
			if resp["expires_in"] != tc.wantExpiry {
				t.Errorf("expires_in %#v, want %#v", resp["expires_in"], tc.wantExpiry)
			}
			if resp["token_type"] != "Bearer" {
				t.Errorf("token_type %v", resp["token_type"])
			}
			if _, has := resp["scope"]; has != tc.wantScope {
				t.Errorf("scope present %v, want %v: %s", has, tc.wantScope, body)
			}
			claims := decodeClaims(t, resp["access_token"].(string))
			exp, iat := claims["exp"].(float64), claims["iat"].(float64)
			var secs float64
			switch v := tc.wantExpiry.(type) {
			case float64:
				secs = v
			case string:
				secs = 3600
			}
			if exp-iat != secs {
				t.Errorf("exp - iat = %v, want %v", exp-iat, secs)
			}
		})
	}
}

func TestSetExpiresInZeroRestoresDefault(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.ExpiresIn = 100 })
	f.emu.SetExpiresIn(7)
	if got := f.token(t, nil)["expires_in"]; got != float64(7) {
		t.Fatalf("expires_in %v, want 7", got)
	}
	f.emu.SetExpiresIn(0)
	if got := f.token(t, nil)["expires_in"]; got != float64(DefaultExpiresIn) {
		t.Fatalf("expires_in %v, want %d", got, DefaultExpiresIn)
	}
}

func TestRevokeAndIntrospect(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.ExpiresIn = 600 })
	auth := basicHeader(testClient, testSecret)
	token := f.token(t, url.Values{"scope": {"read"}})["access_token"].(string)
	other := f.token(t, nil)["access_token"].(string)

	introspect := func(tok string) map[string]any {
		t.Helper()
		status, _, body := f.post(t, "/oauth2/introspect/"+testApp, auth, url.Values{"token": {tok}})
		if status != http.StatusOK {
			t.Fatalf("introspect: %d %s", status, body)
		}
		var resp map[string]any
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}

	active := introspect(token)
	iat := f.clock.Now().Unix()
	for k, v := range map[string]any{
		"active": true, "scope": "read", "exp": float64(iat + 600), "sub": testUUID,
		"aud": testClient, "client_id": testClient,
	} {
		if active[k] != v {
			t.Errorf("introspect %s = %v, want %v", k, active[k], v)
		}
	}
	// A token is only active at the app it was issued for.
	if status, _, body := f.post(t, "/oauth2/introspect/"+postOnlyApp, "",
		url.Values{"token": {token}, "client_id": {testClient}, "client_secret": {testSecret}}); status != 200 || string(body) != `{"active":false}` {
		t.Errorf("introspect at another app: %d %s", status, body)
	}

	revokeTests := []struct {
		name       string
		auth       string
		form       url.Values
		wantStatus int
		wantBody   string
	}{
		{"revoke", auth, url.Values{"token": {token}}, 200, "{}"},
		{"again", auth, url.Values{"token": {token}}, 200, "{}"},
		{"unknown token", auth, url.Values{"token": {"not-a-token"}}, 200, "{}"},
		{"post auth", "", url.Values{"token": {"x"}, "client_id": {testClient}, "client_secret": {testSecret}}, 200, "{}"},
		{"missing token", auth, url.Values{}, 400, oauthBody("invalid_request", "missing token")},
		{"wrong secret", basicHeader(testClient, "nope"), url.Values{"token": {other}}, 400,
			oauthBody("access_denied", "invalid client creds or client not allowed")},
		{"no credentials", "", url.Values{"token": {other}}, 400, oauthBody("invalid_client", "wrong clientid")},
	}
	for _, tc := range revokeTests {
		status, _, body := f.post(t, "/OAuth2/Revoke/"+testApp, tc.auth, tc.form)
		if status != tc.wantStatus || string(body) != tc.wantBody {
			t.Errorf("%s: %d %s, want %d %s", tc.name, status, body, tc.wantStatus, tc.wantBody)
		}
	}
	if !f.emu.Revoked(token) {
		t.Error("Revoked(token) = false after revoke")
	}
	if f.emu.Revoked(other) {
		t.Error("a revoke with bad credentials revoked the token")
	}
	if got := introspect(token); !reflect.DeepEqual(got, map[string]any{"active": false}) {
		t.Errorf("revoked token introspects as %v", got)
	}
	if got := introspect("garbage"); got["active"] != false {
		t.Errorf("unknown token introspects as %v", got)
	}
	if got := introspect(other); got["active"] != true {
		t.Errorf("unrevoked token introspects as %v", got)
	}
	f.clock.Advance(600 * time.Second)
	if got := introspect(other); got["active"] != false {
		t.Errorf("expired token introspects as %v", got)
	}
	if status, _, body := f.post(t, "/oauth2/introspect/"+testApp, auth, url.Values{}); status != 400 ||
		string(body) != oauthBody("invalid_request", "missing token") {
		t.Errorf("introspect without token: %d %s", status, body)
	}
	if status, _, body := f.post(t, "/oauth2/introspect/"+testApp, basicHeader(testClient, "x"), url.Values{"token": {other}}); status != 400 ||
		string(body) != oauthBody("access_denied", "invalid client creds or client not allowed") {
		t.Errorf("introspect with wrong secret: %d %s", status, body)
	}

	st := f.emu.Stats()
	// The wrong secrets at revoke and introspect are failed logins too.
	want := Stats{TokenRequests: 2, Grants: 2, RevokeRequests: int64(len(revokeTests)), Revocations: 4, Introspections: 8, FailedLogins: 2}
	if st != want {
		t.Errorf("stats %+v\nwant  %+v", st, want)
	}
}

func TestRequestsRecorded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	auth := basicHeader(testClient, testSecret)
	f.post(t, "/OAuth2/Token/"+testApp, auth, url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}})
	f.get(t, "/_emulator/stats") // control traffic is not the tenant's
	reqs := f.emu.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests recorded, want 1", len(reqs))
	}
	r := reqs[0]
	if want := strings.TrimPrefix(strings.TrimPrefix(f.srv.URL, "https://"), "http://"); r.Host != want {
		t.Errorf("recorded host %q, want %q, the one the request was sent to", r.Host, want)
	}
	if r.Method != http.MethodPost || r.Path != "/OAuth2/Token/"+testApp || r.Header.Get("Authorization") != auth ||
		r.Form.Get("scope") != "read" || string(r.Body) != "grant_type=client_credentials&scope=read" || r.Time.IsZero() {
		t.Errorf("recorded %s %s at %v, form scope %q, Authorization as sent: %v, body as sent: %v",
			r.Method, r.Path, r.Time, r.Form.Get("scope"), r.Header.Get("Authorization") == auth,
			string(r.Body) == "grant_type=client_credentials&scope=read")
	}
	// Callers get copies: changing one must not change the record.
	r.Header.Set("Authorization", "x")
	r.Form.Set("scope", "x")
	r.Body[0] = 'X'
	again := f.emu.Requests()[0]
	if again.Header.Get("Authorization") != auth || again.Form.Get("scope") != "read" || again.Body[0] != 'g' {
		t.Error("Requests returned shared data")
	}
}

func TestFormNeedsContentType(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/oauth2/token/"+testApp, strings.NewReader("grant_type=client_credentials"))
	req.Header.Set("Authorization", basicHeader(testClient, testSecret))
	req.Header.Set("Content-Type", "application/json")
	status, _, body := do(t, f.srv.Client(), req)
	if status != 400 || string(body) != oauthBody("invalid_grant", "invalid grant type") {
		t.Errorf("non-form body: %d %s", status, body)
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/oauth2/token/"+testApp, strings.NewReader("grant_type=client_credentials"))
	req.Header.Set("Authorization", basicHeader(testClient, testSecret))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	if status, _, body := do(t, f.srv.Client(), req); status != 200 {
		t.Errorf("form with charset: %d %s", status, body)
	}
}

func TestSetClientSecret(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	old := f.token(t, nil)["access_token"].(string)
	const newSecret = "N3w:Secret%"
	if err := f.emu.SetClientSecret("vaultapp", testClient, newSecret); err != nil {
		t.Fatal(err)
	}
	grant := url.Values{"grant_type": {"client_credentials"}}
	if status, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, testSecret), grant); status != 400 ||
		string(body) != oauthBody("access_denied", "invalid client creds or client not allowed") {
		t.Errorf("old secret: %d %s", status, body)
	}
	if status, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, newSecret), grant); status != 200 {
		t.Errorf("new secret: %d %s", status, body)
	}
	// The service user has one password, whichever app lists it.
	if status, _, body := f.post(t, "/oauth2/token/"+overrideApp, basicHeader(testClient, testSecret), grant); status != 400 {
		t.Errorf("other app, old secret: %d %s", status, body)
	}
	if status, _, body := f.post(t, "/oauth2/token/"+overrideApp, basicHeader(testClient, newSecret), grant); status != 200 {
		t.Errorf("other app, new secret: %d %s", status, body)
	}
	if !f.emu.ClientSecretIs(testClient, newSecret) || f.emu.ClientSecretIs(testClient, testSecret) {
		t.Error("ClientSecretIs does not follow SetClientSecret")
	}
	_, _, body := f.post(t, "/oauth2/introspect/"+testApp, basicHeader(testClient, newSecret), url.Values{"token": {old}})
	if !strings.Contains(string(body), `"active":true`) {
		t.Errorf("token issued before the change: %s", body)
	}
	for _, tc := range []struct{ label, app, client, secret string }{
		{"unknown app", "nope", testClient, "x"},
		{"unknown client", testApp, "nobody", "x"},
		{"empty secret", testApp, testClient, ""},
		{"client not on that app", postOnlyApp, limitedClient, "x"},
	} {
		if err := f.emu.SetClientSecret(tc.app, tc.client, tc.secret); err == nil {
			t.Errorf("SetClientSecret with %s succeeded", tc.label)
		}
	}
	if st := f.emu.Stats(); st.PasswordChanges != 0 || st.ManagementRequests != 0 {
		t.Errorf("SetClientSecret counted as a management call: %+v", st)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	const secret = "Do-Not-Print-Me-1"
	const otherSecret = "Do-Not-Print-Me-2"
	client := Client{ID: "c", Secret: secret}
	app := func(id string, scopes []string, apis map[string][]string) App {
		return App{ID: id, Scopes: scopes, ScopeAPIs: apis, Clients: []Client{client}}
	}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no apps", Config{}},
		{"empty app id", Config{Apps: []App{{Clients: []Client{client}}}}},
		{"slash in app id", Config{Apps: []App{{ID: "a/b", Clients: []Client{client}}}}},
		{"duplicate app ignoring case", Config{Apps: []App{{ID: "a", Clients: []Client{client}}, {ID: "A", Clients: []Client{client}}}}},
		{"no clients", Config{Apps: []App{{ID: "a"}}}},
		{"empty client id", Config{Apps: []App{{ID: "a", Clients: []Client{{Secret: secret}}}}}},
		{"empty secret", Config{Apps: []App{{ID: "a", Clients: []Client{{ID: "c"}}}}}},
		{"duplicate client", Config{Apps: []App{{ID: "a", Clients: []Client{client, client}}}}},
		{"bad auth mode", Config{Apps: []App{{ID: "a", AuthModes: []string{"jwt"}, Clients: []Client{client}}}}},
		{"allowed scope not in app", Config{Apps: []App{{ID: "a", Scopes: []string{"x"}, Clients: []Client{{ID: "c", Secret: secret, AllowedScopes: []string{"y"}}}}}}},
		{"scope with space", Config{Apps: []App{{ID: "a", Scopes: []string{"x y"}, Clients: []Client{client}}}}},
		{"negative expiry", Config{ExpiresIn: -1, Apps: []App{{ID: "a", Clients: []Client{client}}}}},
		{"negative app expiry", Config{Apps: []App{{ID: "a", ExpiresIn: -1, Clients: []Client{client}}}}},
		{"error status 403", Config{ErrorStatus: 403, Apps: []App{{ID: "a", Clients: []Client{client}}}}},
		{"scope_apis for an undefined scope", Config{Apps: []App{app("a", []string{"x"}, map[string][]string{"y": {"UserMgmt/.*"}})}}},
		{"scope_apis with a bad expression", Config{Apps: []App{app("a", []string{"x"}, map[string][]string{"x": {"UserMgmt/("}})}}},
		{"scope_apis with an empty expression", Config{Apps: []App{app("a", []string{"x"}, map[string][]string{"x": {""}})}}},
		{"one user, two secrets", Config{Apps: []App{
			{ID: "a", Clients: []Client{{ID: "c", Secret: otherSecret}}}, {ID: "b", Clients: []Client{client}}}}},
		{"one user, two uuids", Config{Apps: []App{
			{ID: "a", Clients: []Client{{ID: "c", Secret: secret, UUID: "u-1"}}},
			{ID: "b", Clients: []Client{{ID: "c", Secret: secret, UUID: "u-2"}}}}}},
		{"two users, one uuid", Config{Apps: []App{{ID: "a", Clients: []Client{
			{ID: "c", Secret: secret, UUID: "AB-1"}, {ID: "d", Secret: otherSecret, UUID: "ab-1"}}}}}},
		{"negative min_length", Config{PasswordPolicy: &PasswordPolicy{MinLength: -1}, Apps: []App{{ID: "a", Clients: []Client{client}}}}},
		{"max_length below min_length", Config{PasswordPolicy: &PasswordPolicy{MinLength: 9, MaxLength: 8}, Apps: []App{{ID: "a", Clients: []Client{client}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.cfg)
			if err == nil {
				t.Fatal("New accepted an invalid config")
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), otherSecret) {
				t.Error("error leaks a secret")
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	const doc = `{
	  "apps": [{"id": "VaultApp", "scopes": ["all"], "auth_modes": ["basic"], "expires_in": 30,
	            "scope_apis": {"all": ["UserMgmt/.*"]},
	            "clients": [{"id": "svc@x", "secret": "s:%", "uuid": "u-1", "allowed_scopes": ["all"], "admin": true}]}],
	  "expires_in": 120, "error_status": 401, "expires_in_as_string": true, "omit_scope": true,
	  "password_policy": {"min_length": 12, "max_length": 40, "require_digit": true, "require_upper": false, "require_lower": true},
	  "password_history": 5, "revoke_tokens_on_password_change": true
	}`
	if err := os.WriteFile(good, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Apps: []App{{ID: "VaultApp", Scopes: []string{"all"}, AuthModes: []string{"basic"}, ExpiresIn: 30,
			ScopeAPIs: map[string][]string{"all": {"UserMgmt/.*"}},
			Clients:   []Client{{ID: "svc@x", Secret: "s:%", UUID: "u-1", AllowedScopes: []string{"all"}, Admin: true}}}},
		ExpiresIn: 120, ErrorStatus: 401, ExpiresInAsString: true, OmitScope: true,
		PasswordPolicy:  &PasswordPolicy{MinLength: 12, MaxLength: 40, RequireDigit: true, RequireLower: true},
		PasswordHistory: 5, RevokeTokensOnPasswordChange: true,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("loaded %+v\nwant   %+v", withoutSecrets(cfg), withoutSecrets(want))
	}
	if _, err := New(cfg); err != nil {
		t.Errorf("New(loaded): %v", err)
	}

	for name, content := range map[string]string{
		"typo.json":     `{"apps": [], "expires_inn": 5}`,
		"broken.json":   `{"apps": [`,
		"trailing.json": `{"apps": []} {}`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadConfig(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file: no error")
	}
}

// withoutSecrets copies cfg with every secret blanked, for failure messages.
func withoutSecrets(cfg Config) Config {
	apps := make([]App, len(cfg.Apps))
	for i, a := range cfg.Apps {
		a.Clients = append([]Client(nil), a.Clients...)
		for j := range a.Clients {
			if a.Clients[j].Secret != "" {
				a.Clients[j].Secret = "<redacted>"
			}
		}
		apps[i] = a
	}
	cfg.Apps = apps
	return cfg
}

func TestResetKeepsConfig(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.emu.SetExpiresIn(9)
	token := f.token(t, nil)["access_token"].(string)
	f.post(t, "/oauth2/revoke/"+testApp, basicHeader(testClient, testSecret), url.Values{"token": {token}})
	f.emu.AddFaults(Fault{Status: 500})
	f.emu.Reset()
	if st := f.emu.Stats(); st != (Stats{}) {
		t.Errorf("stats after Reset: %+v", st)
	}
	if len(f.emu.Requests()) != 0 || len(f.emu.Issued()) != 0 || f.emu.Revoked(token) {
		t.Error("Reset left requests, issued tokens or revocations")
	}
	// The fault is gone and the run-time expiry stays.
	if got := f.token(t, nil)["expires_in"]; got != float64(9) {
		t.Errorf("expires_in after Reset %v, want 9", got)
	}
}

func TestConcurrentTokens(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	const n = 200
	client := f.srv.Client()
	tokens := make([]string, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/oauth2/token/"+testApp,
				strings.NewReader("grant_type=client_credentials"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basicHeader(testClient, testSecret))
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			var body struct {
				AccessToken string `json:"access_token"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 {
				errs <- err
				return
			}
			tokens[i] = body.AccessToken
		}()
	}
	// The accessors must be safe while requests are in flight.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 50 {
			_ = f.emu.Stats()
			_ = f.emu.Requests()
			_ = f.emu.Issued()
			f.emu.SetExpiresIn(DefaultExpiresIn)
			f.emu.AddFaults(Fault{Endpoint: epRevoke, Times: 1})
			f.emu.ClearFaults()
			_ = f.emu.Revoked("x")
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request failed: %v", err)
	}
	seen := make(map[string]bool, n)
	for _, tok := range tokens {
		if tok == "" || seen[tok] {
			t.Fatalf("missing or duplicate token among %d", n)
		}
		seen[tok] = true
	}
	st := f.emu.Stats()
	if st.Grants != n || st.TokenRequests != n || st.TokenErrors != 0 {
		t.Errorf("stats %+v, want %d grants and requests", st, n)
	}
	if len(f.emu.Issued()) != n || len(f.emu.Requests()) != n {
		t.Errorf("issued %d, recorded %d, want %d", len(f.emu.Issued()), len(f.emu.Requests()), n)
	}
}

// A revocation sent to another app, or by another client, is answered 200 like any
// revocation but revokes nothing, as at the tenant.
func TestRevokeOnlyAtTheIssuingAppAndClient(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	token := f.token(t, nil)["access_token"].(string)

	wrongApp := url.Values{"token": {token}, "client_id": {testClient}, "client_secret": {testSecret}}
	if status, _, _ := f.post(t, "/oauth2/revoke/"+postOnlyApp, "", wrongApp); status != 200 {
		t.Fatalf("revoke at another app: %d, want 200", status)
	}
	if status, _, _ := f.post(t, "/oauth2/revoke/"+testApp, basicHeader(limitedClient, limitedSecret), url.Values{"token": {token}}); status != 200 {
		t.Fatalf("revoke by another client: %d, want 200", status)
	}
	if f.emu.Revoked(token) {
		t.Fatal("a revocation at the wrong app or by the wrong client revoked the token")
	}
	if status, _, _ := f.post(t, "/oauth2/revoke/"+testApp, basicHeader(testClient, testSecret), url.Values{"token": {token}}); status != 200 || !f.emu.Revoked(token) {
		t.Errorf("the issuing client at the issuing app: status %d, revoked %v", status, f.emu.Revoked(token))
	}
}
