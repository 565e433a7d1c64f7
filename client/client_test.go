package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// The credentials a CyberArk tenant is known to receive badly from clients that
// URL-encode: an "@" in the login name, and ":" and "%" in the password.
const (
	testClientID     = "svc-vault@tenant.example"
	testClientSecret = "p:ss%41w:rd%"
)

// recorded is what crossed the wire in one request.
type recorded struct {
	at                     time.Time
	method, path, rawQuery string
	header                 http.Header
	body                   string
}

// tenant is a scripted token endpoint that records every request.
type tenant struct {
	mu       sync.Mutex
	requests []recorded
	conns    int // connections accepted
	handler  func(w http.ResponseWriter, r *http.Request, n int)
	srv      *httptest.Server
}

func newTenant(t *testing.T, handler func(w http.ResponseWriter, r *http.Request, n int)) *tenant {
	t.Helper()
	tn := &tenant{handler: handler}
	tn.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		tn.mu.Lock()
		tn.requests = append(tn.requests, recorded{time.Now(), r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), string(body)})
		n := len(tn.requests)
		tn.mu.Unlock()
		tn.handler(w, r, n)
	}))
	tn.srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			tn.mu.Lock()
			tn.conns++
			tn.mu.Unlock()
		}
	}
	tn.srv.Start()
	t.Cleanup(tn.srv.Close)
	return tn
}

func (tn *tenant) got() []recorded {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return append([]recorded(nil), tn.requests...)
}

func jsonAnswer(status int, body string) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

const okBody = `{"access_token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln","token_type":"Bearer","expires_in":18000,"scope":"read write"}`

func newTestClient(t *testing.T, tn *tenant, mutate func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		TokenURL:       tn.srv.URL + "/oauth2/token/vaultapp",
		RevokeURL:      tn.srv.URL + "/oauth2/revoke/vaultapp",
		ClientID:       testClientID,
		ClientSecret:   testClientSecret,
		UserAgent:      "vault-plugin-secrets-cyberark/v9.9.9-test",
		RequestTimeout: 5 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestTokenRequestOnTheWire(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(200, okBody))
	c := newTestClient(t, tn, nil)

	tok, err := c.Token(context.Background(), []string{"read", "write"})
	if err != nil {
		t.Fatal(err)
	}
	reqs := tn.got()
	if len(reqs) != 1 {
		t.Fatalf("tenant got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.method != http.MethodPost || r.path != "/oauth2/token/vaultapp" || r.rawQuery != "" {
		t.Errorf("request line = %s %s?%s, want POST /oauth2/token/vaultapp", r.method, r.path, r.rawQuery)
	}
	// Raw, not URL-encoded: base64 of exactly "svc-vault@tenant.example:p:ss%41w:rd%".
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(testClientID+":"+testClientSecret))
	if got := r.header.Get("Authorization"); got != wantAuth {
		t.Errorf("Authorization header differs from raw Basic of the ID and secret (got %d bytes, want %d)", len(got), len(wantAuth))
	}
	decoded, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.header.Get("Authorization"), "Basic "))
	if id, _, _ := strings.Cut(string(decoded), ":"); id != testClientID {
		t.Errorf("client ID in Basic header = %q, want %q", id, testClientID)
	}
	if got := r.header.Get("Content-Type"); got != "application/x-www-form-urlencoded" {
		t.Errorf("Content-Type = %q", got)
	}
	if got := r.header.Get("Accept"); got != "application/json" {
		t.Errorf("Accept = %q", got)
	}
	if got := r.header.Get("User-Agent"); got != "vault-plugin-secrets-cyberark/v9.9.9-test" {
		t.Errorf("User-Agent = %q", got)
	}
	if r.body != "grant_type=client_credentials&scope=read+write" {
		t.Errorf("body = %q, want grant_type=client_credentials&scope=read+write", r.body)
	}
	if strings.Contains(r.body, "client_secret") {
		t.Error("Basic mode must not also send the secret in the body")
	}
	if tok.AccessToken != "eyJhbGciOiJSUzI1NiJ9.e30.c2ln" || tok.TokenType != "Bearer" || tok.ExpiresIn != 18000 || tok.Scope != "read write" {
		t.Errorf("token = %v", tok)
	}
	if d := tok.Expiry.Sub(tok.IssuedAt); d != 18000*time.Second {
		t.Errorf("expiry - issued = %s, want 5h", d)
	}
}

func TestTokenWithoutScopesSendsNoScope(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(200, okBody))
	c := newTestClient(t, tn, nil)
	if _, err := c.Token(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if body := tn.got()[0].body; body != "grant_type=client_credentials" {
		t.Errorf("body = %q, want only grant_type", body)
	}
}

func TestTokenClientSecretPost(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(200, okBody))
	c := newTestClient(t, tn, func(cfg *Config) { cfg.AuthStyle = AuthPost })
	if _, err := c.Token(context.Background(), []string{"read"}); err != nil {
		t.Fatal(err)
	}
	r := tn.got()[0]
	if h := r.header.Get("Authorization"); h != "" {
		t.Errorf("post mode sent an Authorization header (%d bytes)", len(h))
	}
	form, err := url.ParseQuery(r.body)
	if err != nil {
		t.Fatal(err)
	}
	if form.Get("client_id") != testClientID || form.Get("client_secret") != testClientSecret {
		t.Error("post mode: client_id/client_secret form fields do not round-trip byte for byte")
	}
	if form.Get("grant_type") != "client_credentials" || form.Get("scope") != "read" {
		t.Errorf("post mode: grant_type=%q scope=%q", form.Get("grant_type"), form.Get("scope"))
	}
}

func fakeJWT(exp int64) string {
	payload := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"exp":%d}`, exp)))
	return "eyJhbGciOiJSUzI1NiJ9." + payload + ".c2ln"
}

func TestTokenExpiresInForms(t *testing.T) {
	t.Parallel()
	now := time.Now()
	maxSecs := int64(MaxTokenLifetime / time.Second)
	notDecimal := "must be a decimal number of seconds"
	cases := []struct {
		name     string
		body     string
		want     int64
		wantErr  string
		notInErr string
	}{
		{"integer", `{"access_token":"x","expires_in":3600}`, 3600, "", ""},
		{"numeric string", `{"access_token":"x","expires_in":"3600"}`, 3600, "", ""},
		{"padded numeric string", `{"access_token":"x","expires_in":" 3600 "}`, 3600, "", ""},
		{"float", `{"access_token":"x","expires_in":3600.0}`, 3600, "", ""},
		{"exponent", `{"access_token":"x","expires_in":3.6e3}`, 3600, "", ""},
		{"exponent string", `{"access_token":"x","expires_in":"36E+2"}`, 3600, "", ""},
		{"absent, JWT exp", fmt.Sprintf(`{"access_token":%q}`, fakeJWT(now.Add(time.Hour).Unix())), 3600, "", ""},
		{"absent, no exp", `{"access_token":"opaque"}`, 0, "without expires_in", ""},
		{"zero", `{"access_token":"x","expires_in":0}`, 0, "already expired", ""},
		{"half a second", `{"access_token":"x","expires_in":0.5}`, 0, "already expired", ""},
		{"negative", `{"access_token":"x","expires_in":-5}`, 0, "already expired", ""},
		{"garbage", `{"access_token":"x","expires_in":"soon"}`, 0, notDecimal, ""},
		// strconv.ParseFloat takes all of these.
		{"hex float", `{"access_token":"x","expires_in":"0x1p12"}`, 0, notDecimal, ""},
		{"hex float with underscore", `{"access_token":"x","expires_in":"0x1_0p0"}`, 0, notDecimal, ""},
		{"plus sign", `{"access_token":"x","expires_in":"+5"}`, 0, notDecimal, ""},
		{"hex integer", `{"access_token":"x","expires_in":"0x10"}`, 0, notDecimal, ""},
		{"underscore", `{"access_token":"x","expires_in":"1_000"}`, 0, notDecimal, ""},
		{"infinity", `{"access_token":"x","expires_in":"Inf"}`, 0, notDecimal, ""},
		{"NaN", `{"access_token":"x","expires_in":"NaN"}`, 0, notDecimal, ""},
		{"long garbage is cut", `{"access_token":"x","expires_in":"` + strings.Repeat("9x", 100) + `"}`, 0, notDecimal, strings.Repeat("9x", 21)},
		{"at the limit", fmt.Sprintf(`{"access_token":"x","expires_in":%d}`, maxSecs), maxSecs, "", ""},
		{"over the limit", fmt.Sprintf(`{"access_token":"x","expires_in":%d}`, maxSecs+1), 0, fmt.Sprintf("out of range: the limit is %d seconds", maxSecs), ""},
		{"huge", `{"access_token":"x","expires_in":1e999}`, 0, "out of range", ""},
		{"long huge number is cut", `{"access_token":"x","expires_in":` + strings.Repeat("9", 100) + `}`, 0, "out of range", strings.Repeat("9", 41)},
		{"absent, JWT exp within the limit", fmt.Sprintf(`{"access_token":%q}`, fakeJWT(now.Add(MaxTokenLifetime-time.Hour).Unix())), maxSecs - 3600, "", ""},
		{"absent, JWT exp beyond the limit", fmt.Sprintf(`{"access_token":%q}`, fakeJWT(now.Add(MaxTokenLifetime+time.Hour).Unix())), 0, fmt.Sprintf("more than %d seconds", maxSecs), ""},
		{"absent, JWT exp absurd", fmt.Sprintf(`{"access_token":%q}`, "eyJhbGciOiJSUzI1NiJ9."+base64.RawURLEncoding.EncodeToString([]byte(`{"exp":1e300}`))+".c2ln"), 0, "MaxTokenLifetime", ""},
		{"no token", `{"expires_in":60}`, 0, "without an access_token", ""},
		{"not json", `<html>maintenance</html>`, 0, "not a JSON token response", ""},
		{"truncated", `{"access_token":"secret-part`, 0, "not a JSON token response", ""},
		{"scope list", `{"access_token":"x","expires_in":60,"scope":["a","b"]}`, 60, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := newTenant(t, jsonAnswer(200, tc.body))
			c := newTestClient(t, tn, nil)
			tok, err := c.Token(context.Background(), nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				if tc.wantErr == notDecimal && !strings.Contains(err.Error(), "expires_in") {
					t.Errorf("error %q does not name expires_in", err)
				}
				if strings.Contains(err.Error(), "secret-part") {
					t.Error("error quotes the response body")
				}
				if tc.notInErr != "" && strings.Contains(err.Error(), tc.notInErr) {
					t.Errorf("error quotes more than 40 characters of expires_in: %.100s", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tok.ExpiresIn < tc.want-5 || tok.ExpiresIn > tc.want { // the JWT case loses the seconds the test took
				t.Errorf("ExpiresIn = %d, want %d", tok.ExpiresIn, tc.want)
			}
			if tok.TokenType != "Bearer" {
				t.Errorf("TokenType = %q, want the Bearer default", tok.TokenType)
			}
		})
	}
}

func TestTenantErrorsAreReadable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		status      int
		contentType string
		body        string
		wantCode    string
		wantDesc    string
		wantInMsg   []string
	}{
		{"wrong client id", 400, "application/json", `{"error":"invalid_client","error_description":"wrong clientid"}`,
			"invalid_client", "wrong clientid", []string{"HTTP 400", "invalid_client: wrong clientid"}},
		{"wrong secret as 401", 401, "application/json", `{"error":"access_denied","error_description":"invalid client creds or client not allowed"}`,
			"access_denied", "invalid client creds or client not allowed", []string{"HTTP 401", "access_denied"}},
		{"unknown app", 400, "application/json", `{"error":"invalid_request","error_description":"unknown app vaultapp"}`,
			"invalid_request", "unknown app vaultapp", []string{"unknown app vaultapp"}},
		{"management envelope", 400, "application/json", `{"success":false,"Message":"Authentication (login or challenge) has failed."}`,
			"", "Authentication (login or challenge) has failed.", []string{"has failed"}},
		{"proxy html", 403, "text/html; charset=utf-8", "<html>\n<body>Forbidden\x1b[31m by proxy</body></html>",
			"", "", []string{"HTTP 403", "text/html", "<body>Forbidden[31m by proxy"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := newTenant(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.Header().Set("Content-Type", tc.contentType)
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			c := newTestClient(t, tn, nil)
			_, err := c.Token(context.Background(), nil)
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is not a *client.Error", err)
			}
			if te.StatusCode != tc.status || te.Code != tc.wantCode || te.Description != tc.wantDesc {
				t.Errorf("got status=%d code=%q desc=%q", te.StatusCode, te.Code, te.Description)
			}
			for _, s := range tc.wantInMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			if strings.ContainsAny(err.Error(), "\n\x1b") {
				t.Errorf("error %q carries control characters from the body", err)
			}
			if len(tn.got()) != 1 {
				t.Errorf("a %d refusal was retried: %d requests", tc.status, len(tn.got()))
			}
		})
	}
}

func TestErrorsNeverCarryTheSecret(t *testing.T) {
	t.Parallel()
	basic := base64.StdEncoding.EncodeToString([]byte(testClientID + ":" + testClientSecret))
	const token = "eyJ.revoke-me/+=.sig"
	cases := []struct {
		name   string
		style  AuthStyle
		revoke bool
		// forms are what the fake must echo and the error must not carry.
		forms map[string]string
	}{
		{"grant, Basic", AuthBasic, false, map[string]string{"raw secret": testClientSecret, "Basic credentials": basic}},
		{"grant, client_secret_post", AuthPost, false, map[string]string{"raw secret": testClientSecret, "form-encoded secret": url.QueryEscape(testClientSecret)}},
		{"revoke, Basic", AuthBasic, true, map[string]string{"raw secret": testClientSecret, "raw access token": token, "form-encoded access token": url.QueryEscape(token), "Basic credentials": basic}},
		{"revoke, client_secret_post", AuthPost, true, map[string]string{"raw secret": testClientSecret, "raw access token": token, "form-encoded access token": url.QueryEscape(token), "form-encoded secret": url.QueryEscape(testClientSecret)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A broken proxy that reflects the request back in its error page: the
			// Authorization header, the body as sent, and the credentials in both decoded.
			// It keeps what it echoed, so that a redacted echo cannot be mistaken for a
			// missing one.
			var mu sync.Mutex
			var echoed string
			tn := newTenant(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				body, _ := io.ReadAll(r.Body)
				form, _ := url.ParseQuery(string(body))
				_, password, _ := r.BasicAuth()
				text := fmt.Sprintf("bad request %s %s %s %s %s", r.Header.Get("Authorization"), password, body, form.Get("client_secret"), form.Get("token"))
				mu.Lock()
				echoed = text
				mu.Unlock()
				desc, _ := json.Marshal(text)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(400)
				fmt.Fprintf(w, `{"error":"invalid_request","error_description":%s}`, desc)
			})
			c := newTestClient(t, tn, func(cfg *Config) { cfg.AuthStyle = tc.style })
			var err error
			if tc.revoke {
				err = c.Revoke(context.Background(), token)
			} else {
				_, err = c.Token(context.Background(), nil)
			}
			mu.Lock()
			defer mu.Unlock()
			for name, secret := range tc.forms {
				if !strings.Contains(echoed, secret) {
					t.Fatalf("the fake never echoed the %s, so the test cannot see it leak", name)
				}
			}
			if err == nil {
				t.Fatal("want an error")
			}
			msg := err.Error()
			for name, secret := range tc.forms {
				if strings.Contains(msg, secret) {
					t.Errorf("error text carries the %s (%s)", name, fingerprint(secret))
				}
			}
			if !strings.Contains(msg, "[redacted]") {
				t.Error("want the reflected credentials replaced by [redacted]")
			}
			var te *Error
			if !errors.As(err, &te) || te.StatusCode != 400 || te.Code != "invalid_request" {
				t.Error("redaction lost the *Error")
			}
		})
	}
}

func TestOversizeResponseIsRefused(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"x","expires_in":60,"padding":"`)
		_, _ = io.WriteString(w, strings.Repeat("A", 2<<20))
		_, _ = io.WriteString(w, `"}`)
	})
	c := newTestClient(t, tn, nil)
	_, err := c.Token(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds the 1048576 byte limit") {
		t.Fatalf("error = %v, want the 1 MiB limit", err)
	}
}

// hangingTenant never answers, until the client gives up or the test ends.
func hangingTenant(t *testing.T) *tenant {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	return newTenant(t, func(_ http.ResponseWriter, r *http.Request, _ int) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
}

func TestSlowTenantHitsTheTimeout(t *testing.T) {
	t.Parallel()
	tn := hangingTenant(t)
	c := newTestClient(t, tn, func(cfg *Config) { cfg.RequestTimeout = 300 * time.Millisecond })
	start := time.Now()
	_, err := c.Token(context.Background(), nil)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error = %v, want a timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("call returned after %s; the 300ms timeout did not apply", elapsed)
	}
}

func TestCallerContextIsHonoured(t *testing.T) {
	t.Parallel()
	tn := hangingTenant(t)
	c := newTestClient(t, tn, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	_, err := c.Token(ctx, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		http.Redirect(w, r, "https://elsewhere.example/oauth2/token/vaultapp", http.StatusTemporaryRedirect)
	})
	c := newTestClient(t, tn, nil)
	_, err := c.Token(context.Background(), nil)
	var te *Error
	if !errors.As(err, &te) || te.StatusCode != 307 || te.Location != "https://elsewhere.example/oauth2/token/vaultapp" {
		t.Fatalf("error = %v, want a 307 *Error with its Location", err)
	}
	if n := len(tn.got()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestCustomCA(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, okBody)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below is expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caPEM := pemOf(t, srv)

	c, err := New(Config{TokenURL: srv.URL + "/oauth2/token/a", ClientID: "id", ClientSecret: "s", CACert: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background(), nil); err != nil {
		t.Fatalf("with the server's CA: %v", err)
	}

	c2, err := New(Config{TokenURL: srv.URL + "/oauth2/token/a", ClientID: "id", ClientSecret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Token(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: error = %v, want a certificate error", err)
	}

	// Neither bundle holds a certificate; the second has a PEM block that does not parse
	// as one. An operator may paste the wrong thing, even a key: never quote it back.
	for _, bundle := range []string{
		"not a pem, maybe-a-secret-0123",
		"-----BEGIN CERTIFICATE-----\nbWF5YmUtYS1zZWNyZXQtMDEyMw==\n-----END CERTIFICATE-----\n",
	} {
		_, err := New(Config{TokenURL: srv.URL + "/oauth2/token/a", ClientID: "id", CACert: bundle})
		if err == nil {
			t.Errorf("a CA bundle without a parsable certificate was accepted")
			continue
		}
		if strings.Contains(err.Error(), "maybe-a-secret") || strings.Contains(err.Error(), "bWF5YmUtYS1zZWNyZXQ") {
			t.Errorf("the CA bundle error quotes the bundle: %v", err)
		}
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(200, `{}`))
	c := newTestClient(t, tn, nil)
	if err := c.Revoke(context.Background(), "the-token"); err != nil {
		t.Fatal(err)
	}
	r := tn.got()[0]
	form, _ := url.ParseQuery(r.body)
	if r.path != "/oauth2/revoke/vaultapp" || form.Get("token") != "the-token" || r.header.Get("Authorization") == "" {
		t.Errorf("revoke request: path=%s token field set=%v auth set=%v", r.path, form.Get("token") == "the-token", r.header.Get("Authorization") != "")
	}

	noRevoke := newTestClient(t, tn, func(cfg *Config) { cfg.RevokeURL = "" })
	if err := noRevoke.Revoke(context.Background(), "x"); !errors.Is(err, ErrRevokeUnsupported) {
		t.Errorf("without RevokeURL: %v", err)
	}
}

func TestTokenStringHidesTheAccessToken(t *testing.T) {
	t.Parallel()
	tok := Token{AccessToken: "eyJ.very-secret.sig", TokenType: "Bearer", ExpiresIn: 60}
	for _, s := range []string{fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v %s", tok, tok, tok, &tok)} {
		if strings.Contains(s, "very-secret") {
			t.Errorf("formatted token %q shows the access token", s)
		}
	}
}

func pemOf(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
}

func TestNewBuildsItsHTTPClient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		set, want time.Duration
	}{{0, DefaultRequestTimeout}, {2 * time.Second, 2 * time.Second}} {
		c, err := New(Config{TokenURL: "https://tenant.example/oauth2/token/a", ClientID: "id", RequestTimeout: tc.set})
		if err != nil {
			t.Fatal(err)
		}
		if c.hc.Timeout != tc.want {
			t.Errorf("RequestTimeout %s: HTTP client timeout = %s, want %s", tc.set, c.hc.Timeout, tc.want)
		}
		if v := c.transport.TLSClientConfig.MinVersion; v != tls.VersionTLS12 {
			t.Errorf("TLS minimum version = %#x, want TLS 1.2", v)
		}
		if c.transport.Proxy == nil {
			t.Error("the transport ignores proxy settings from the environment")
		}
		if c.transport.MaxIdleConnsPerHost < 2 {
			t.Errorf("MaxIdleConnsPerHost = %d: not a pooled transport", c.transport.MaxIdleConnsPerHost)
		}
	}
	if DefaultRequestTimeout != 30*time.Second {
		t.Errorf("DefaultRequestTimeout = %s", DefaultRequestTimeout)
	}
}

func TestCloseDropsIdleConnections(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(200, okBody))
	c := newTestClient(t, tn, nil)
	for i := range 2 {
		if _, err := c.Token(context.Background(), nil); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	c.Close()
	if _, err := c.Token(context.Background(), nil); err != nil {
		t.Fatalf("after Close: %v", err)
	}
	tn.mu.Lock()
	defer tn.mu.Unlock()
	if tn.conns != 2 {
		t.Errorf("%d connections, want 2: one before Close, reused once, and one after", tn.conns)
	}
}

func TestCloseLetsCallsInFlightFinish(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	release := make(chan struct{})
	tn := newTenant(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		close(started)
		<-release
		_, _ = io.WriteString(w, okBody)
	})
	c := newTestClient(t, tn, nil)
	done := make(chan error, 1)
	go func() {
		_, err := c.Token(context.Background(), nil)
		done <- err
	}()
	<-started
	c.Close()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("a call in flight during Close failed: %v", err)
	}
}
