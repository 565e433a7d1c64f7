package cyberark

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

func TestConfigCreateReadNeverReturnsSecret(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read,write"
	e.mustRequest(t, logical.CreateOperation, "config", data)

	resp := e.mustRequest(t, logical.ReadOperation, "config", nil)
	raw, _ := json.Marshal(resp)
	if strings.Contains(string(raw), testClientSecret) {
		t.Fatal("config read response contains the client secret")
	}
	if _, ok := resp.Data["client_secret"]; ok {
		t.Error("config read has a client_secret key")
	}
	want := map[string]any{
		"tenant_url":        e.url,
		"app_id":            testAppID,
		"client_id":         testClientID,
		"client_secret_set": true,
		"client_auth":       "basic",
		"token_endpoint":    e.url + "/oauth2/token/" + testAppID,
		"request_timeout":   int64(30),
	}
	for k, v := range want {
		if resp.Data[k] != v {
			t.Errorf("%s = %v, want %v", k, resp.Data[k], v)
		}
	}
	if s := resp.Data["scopes"].([]string); strings.Join(s, " ") != "read write" {
		t.Errorf("scopes = %v", s)
	}
	// verify_connection fetched exactly one token before storing, and revoked it.
	if got := e.emu.Stats().Grants; got != 1 {
		t.Errorf("verification grants = %d, want 1", got)
	}
	if issued := e.emu.Issued(); len(issued) != 1 || !e.emu.Revoked(issued[0]) {
		t.Error("the verification token was not revoked")
	}
}

func TestConfigTrailingSlashTolerated(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["tenant_url"] = e.url + "/"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	if got := e.mustRequest(t, logical.ReadOperation, "config", nil).Data["token_endpoint"]; got != e.url+"/oauth2/token/"+testAppID {
		t.Errorf("token_endpoint = %v", got)
	}
}

func TestConfigPartialUpdateKeepsSecret(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"scopes": "write", "request_timeout": "10s"})

	cfg, _ := readConfig(t.Context(), e.storage)
	if cfg.ClientSecret != testClientSecret {
		t.Fatal("a partial update lost the stored client secret")
	}
	if cfg.RequestTimeout.Seconds() != 10 || cfg.TenantURL != e.url || len(cfg.Scopes) != 1 {
		t.Errorf("partial update merged wrongly: timeout=%s tenant=%s scopes=%v", cfg.RequestTimeout, cfg.TenantURL, cfg.Scopes)
	}
	// The secret still works: the update's own verification and a token read pass.
	e.mustRequest(t, logical.ReadOperation, "token", nil)
}

func TestConfigRotateOnlySecret(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	const newSecret = "N3w:secret%99"
	if err := e.emu.SetClientSecret(testAppID, testClientID, newSecret); err != nil {
		t.Fatal(err)
	}
	// The cached client holds the old secret until the config is written.
	if _, err := e.request(t, logical.ReadOperation, "token", nil); err == nil {
		t.Fatal("the old secret still worked after the tenant changed it")
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_secret": newSecret})
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	if strings.Contains(e.logs.String(), newSecret) {
		t.Error("the new secret appears in the log")
	}
}

func TestConfigVerifyConnectionRefusesBadCredentials(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		mutate map[string]any
		tenant string
	}{
		{"wrong secret", map[string]any{"client_secret": "wrong"}, "access_denied: invalid client creds or client not allowed"},
		{"wrong client", map[string]any{"client_id": "nobody@tenant.example"}, "invalid_client: wrong clientid"},
		{"unknown app", map[string]any{"app_id": "NoSuchApp"}, "unknown app NoSuchApp"},
		{"unknown scope", map[string]any{"scopes": "nope"}, "unknown scope requested"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			data := e.configData()
			for k, v := range tc.mutate {
				data[k] = v
			}
			resp, err := e.request(t, logical.CreateOperation, "config", data)
			assertBadRequest(t, resp, err, "verify_connection")
			if msg := resp.Error().Error(); !strings.Contains(msg, tc.tenant) {
				t.Errorf("error %q does not quote the tenant's %q", msg, tc.tenant)
			}
			if strings.Contains(resp.Error().Error(), testClientSecret) {
				t.Error("error carries the secret")
			}
			if got := storedJSON(t, e.storage, "config"); got != "" {
				t.Error("a refused config was stored")
			}
		})
	}
}

func TestConfigVerifyFailureKeepsOldConfig(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	before := storedJSON(t, e.storage, "config")
	resp, err := e.request(t, logical.UpdateOperation, "config", map[string]any{"client_secret": "wrong"})
	assertBadRequest(t, resp, err, "verify_connection")
	if after := storedJSON(t, e.storage, "config"); after != before {
		t.Error("a refused update changed the stored config")
	}
	e.mustRequest(t, logical.ReadOperation, "token", nil)
}

func TestConfigWithoutVerification(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["client_secret"] = "wrong"
	data["verify_connection"] = false
	e.mustRequest(t, logical.CreateOperation, "config", data)
	if e.emu.Stats().TokenRequests != 0 {
		t.Error("verify_connection=false still called the tenant")
	}
	if _, ok := storedConfigField(t, e, "verify_connection"); ok {
		t.Error("verify_connection was stored; it is a per-write option")
	}
}

func storedConfigField(t *testing.T, e *testEnv, key string) (any, bool) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(storedJSON(t, e.storage, "config")), &m); err != nil {
		t.Fatal(err)
	}
	v, ok := m[key]
	return v, ok
}

func TestConfigUnreachableTenantIsNotABadRequest(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503})
	data := e.configData()
	data["max_retries"] = 0
	_, err := e.request(t, logical.CreateOperation, "config", data)
	var coded logical.HTTPCodedError
	if !errors.As(err, &coded) || coded.Code() != http.StatusBadGateway {
		t.Fatalf("err = %v, want a 502 coded error", err)
	}
	if !strings.Contains(err.Error(), "HTTP 503") || !strings.Contains(err.Error(), "verify_connection=false") {
		t.Errorf("error %q should say what the tenant answered and how to skip verification", err)
	}
	if storedJSON(t, e.storage, "config") != "" {
		t.Error("config stored although verification failed")
	}
}

func TestConfigInvalidInput(t *testing.T) {
	t.Parallel()
	pemKey := "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
	cases := []struct {
		name  string
		set   map[string]any
		drop  []string
		field string
	}{
		{"missing tenant_url", nil, []string{"tenant_url"}, "tenant_url"},
		{"http non-loopback", map[string]any{"tenant_url": "http://abc.id.cyberark.cloud"}, nil, "tenant_url"},
		{"ftp scheme", map[string]any{"tenant_url": "ftp://127.0.0.1"}, nil, "tenant_url"},
		{"relative url", map[string]any{"tenant_url": "abc.id.cyberark.cloud"}, nil, "tenant_url"},
		{"userinfo", map[string]any{"tenant_url": "https://u:p@abc.id.cyberark.cloud"}, nil, "tenant_url"},
		{"query", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud?x=1"}, nil, "tenant_url"},
		{"fragment", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud#frag"}, nil, "tenant_url"},
		{"spaces", map[string]any{"tenant_url": " https://abc.id.cyberark.cloud"}, nil, "tenant_url"},
		{"missing app_id", nil, []string{"app_id"}, "app_id"},
		{"app_id with slash", map[string]any{"app_id": "a/b"}, nil, "app_id"},
		{"app_id with space", map[string]any{"app_id": "a b"}, nil, "app_id"},
		{"missing client_id", nil, []string{"client_id"}, "client_id"},
		{"client_id with colon", map[string]any{"client_id": "a:b"}, nil, "client_id"},
		{"client_id control char", map[string]any{"client_id": "a\nb"}, nil, "client_id"},
		{"missing client_secret", nil, []string{"client_secret"}, "client_secret"},
		{"empty client_secret", map[string]any{"client_secret": ""}, nil, "client_secret"},
		{"client_secret with newline", map[string]any{"client_secret": testClientSecret + "\n"}, nil, "client_secret"},
		{"client_secret with spaces", map[string]any{"client_secret": " " + testClientSecret}, nil, "client_secret"},
		{"client_secret with control char", map[string]any{"client_secret": "a\x00b"}, nil, "client_secret"},
		{"bad scope", map[string]any{"scopes": `read,wr"ite`}, nil, "scopes"},
		{"token_url http", map[string]any{"token_url": "http://example.com/token"}, nil, "token_url"},
		{"token_url fragment", map[string]any{"token_url": "https://example.com/token#x"}, nil, "token_url"},
		{"client_auth", map[string]any{"client_auth": "jwt"}, nil, "client_auth"},
		{"ca_cert garbage", map[string]any{"ca_cert": "hello"}, nil, "ca_cert"},
		{"ca_cert key", map[string]any{"ca_cert": pemKey}, nil, "ca_cert"},
		{"timeout zero", map[string]any{"request_timeout": 0}, nil, "request_timeout"},
		{"timeout huge", map[string]any{"request_timeout": "1h"}, nil, "request_timeout"},
		{"timeout garbage", map[string]any{"request_timeout": "soon"}, nil, "request_timeout"},
		{"total_timeout too long", map[string]any{"total_timeout": "90s"}, nil, "total_timeout"},
		{"max_retries negative", map[string]any{"max_retries": -1}, nil, "max_retries"},
		{"max_retries too many", map[string]any{"max_retries": 11}, nil, "max_retries"},
		{"revoke_url http", map[string]any{"revoke_url": "http://example.com/revoke"}, nil, "revoke_url"},
		{"revoke without endpoint", map[string]any{"token_url": "https://example.com/token", "revoke_tokens": true}, nil, "revoke_tokens"},
		{"unknown field", map[string]any{"client_secert": "typo"}, nil, "client_secert"},
		{"verify not bool", map[string]any{"verify_connection": "maybe"}, nil, "verify_connection"},
		// Gaps an outside review found: each was stored before.
		{"app_id dot", map[string]any{"app_id": "."}, nil, "app_id"},
		{"app_id dot dot", map[string]any{"app_id": ".."}, nil, "app_id"},
		{"app_id NEL", map[string]any{"app_id": "App\u0085"}, nil, "app_id"},
		{"app_id CSI", map[string]any{"app_id": "App\u009b"}, nil, "app_id"},
		{"app_id zero-width space", map[string]any{"app_id": "Vault\u200bApp"}, nil, "app_id"},
		{"app_id line separator", map[string]any{"app_id": "App\u2028"}, nil, "app_id"},
		{"app_id bidi override", map[string]any{"app_id": "\u202eppA"}, nil, "app_id"},
		{"client_id NEL", map[string]any{"client_id": "svc\u0085@x"}, nil, "client_id"},
		{"client_id CSI", map[string]any{"client_id": "svc\u009b@x"}, nil, "client_id"},
		{"client_id line separator", map[string]any{"client_id": "svc\u2028@x"}, nil, "client_id"},
		{"client_id grapheme joiner", map[string]any{"client_id": "svc\u034f@x"}, nil, "client_id"},
		{"client_id hangul filler", map[string]any{"client_id": "svc\u3164@x"}, nil, "client_id"},
		{"client_secret variation selector", map[string]any{"client_secret": "Secret\ufe0fValue"}, nil, "client_secret"},
		{"client_secret hangul choseong filler", map[string]any{"client_secret": "Secret\u115fValue"}, nil, "client_secret"},
		{"client_secret no-break space", map[string]any{"client_secret": "Secret\u00a0Value"}, nil, "client_secret"},
		{"client_auth 1 MB", map[string]any{"client_auth": strings.Repeat("x", 1<<20)}, nil, "client_auth"},
		{"client_id zero-width space", map[string]any{"client_id": "svc\u200b@x"}, nil, "client_id"},
		{"client_id bidi override", map[string]any{"client_id": "svc@x\u202e"}, nil, "client_id"},
		{"client_id leading space", map[string]any{"client_id": " " + testClientID}, nil, "client_id"},
		{"client_id replacement char", map[string]any{"client_id": "svc\ufffd@x"}, nil, "client_id"},
		{"client_id too long", map[string]any{"client_id": strings.Repeat("c", maxClientIDLength+1)}, nil, "client_id"},
		{"client_secret NEL", map[string]any{"client_secret": "Secret\u0085Value"}, nil, "client_secret"},
		{"client_secret CSI", map[string]any{"client_secret": "Secret\u009bValue"}, nil, "client_secret"},
		{"client_secret zero-width space", map[string]any{"client_secret": "Secret\u200bValue"}, nil, "client_secret"},
		{"client_secret line separator", map[string]any{"client_secret": "Secret\u2028Value"}, nil, "client_secret"},
		{"client_secret bidi override", map[string]any{"client_secret": "Secret\u202eValue"}, nil, "client_secret"},
		{"client_secret 1 MB", map[string]any{"client_secret": strings.Repeat("S", 1<<20)}, nil, "client_secret"},
		{"tenant_url port 0", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud:0"}, nil, "tenant_url"},
		{"tenant_url port 99999", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud:99999"}, nil, "tenant_url"},
		{"tenant_url empty port", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud:"}, nil, "tenant_url"},
		{"tenant_url dot segments", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud/a/../b"}, nil, "tenant_url"},
		{"tenant_url 1 MB", map[string]any{"tenant_url": "https://abc.id.cyberark.cloud/" + strings.Repeat("p", 1<<20)}, nil, "tenant_url"},
		{"token_url port 99999", map[string]any{"token_url": "https://example.com:99999/token"}, nil, "token_url"},
		{"revoke_url port 0", map[string]any{"revoke_url": "https://example.com:0/revoke"}, nil, "revoke_url"},
		{"app_id 1 MB", map[string]any{"app_id": strings.Repeat("a", 1<<20)}, nil, "app_id"},
		{"scopes 1 MB", map[string]any{"scopes": strings.Repeat("s", 1<<20)}, nil, "scopes"},
		{"ca_cert 1 MB", map[string]any{"ca_cert": strings.Repeat("A", 1<<20)}, nil, "ca_cert"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			data := e.configData()
			for k, v := range tc.set {
				data[k] = v
			}
			for _, k := range tc.drop {
				delete(data, k)
			}
			resp, err := e.request(t, logical.CreateOperation, "config", data)
			assertBadRequest(t, resp, err, tc.field)
			if n := len(resp.Error().Error()); n > 4096 {
				t.Errorf("the error message is %d bytes long: it must not grow with the input", n)
			}
			if secret, _ := data["client_secret"].(string); len(secret) >= 8 && strings.Contains(resp.Error().Error(), secret) {
				t.Error("the error message quotes the client secret")
			}
			if storedJSON(t, e.storage, "config") != "" {
				t.Error("an invalid config was stored")
			}
			if n := e.emu.Stats().TokenRequests; n != 0 {
				t.Errorf("invalid input reached the tenant (%d requests)", n)
			}
		})
	}
}

func TestConfigTokenURLAndPostAuth(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	delete(data, "app_id")
	data["token_url"] = e.url + "/OAuth2/Token/" + testAppID
	data["client_auth"] = "post"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	reqs := e.emu.Requests()
	last := reqs[len(reqs)-1]
	if last.Path != "/OAuth2/Token/"+testAppID {
		t.Errorf("path = %s, want token_url's", last.Path)
	}
	if last.Header.Get("Authorization") != "" || last.Form.Get("client_id") != testClientID || last.Form.Get("client_secret") != testClientSecret {
		t.Error("post mode did not send the credentials as form fields only")
	}
}

func TestConfigDelete(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.mustRequest(t, logical.DeleteOperation, "config", nil)
	if storedJSON(t, e.storage, "config") != "" {
		t.Fatal("config still stored")
	}
	resp, err := e.request(t, logical.ReadOperation, "token", nil)
	assertBadRequest(t, resp, err, "not configured")
	if resp := e.mustRequest(t, logical.ReadOperation, "config", nil); resp != nil {
		t.Errorf("read after delete = %v, want nothing", resp.Data)
	}
}

// TestConfigEndpointChangeNeedsSecret: a writer who may update the config but not read
// it must not be able to send the stored secret, or tokens, to a server of its choosing.
// Every change of where they go needs the secret in the same write; nothing reaches the
// capture server and nothing is stored.
func TestConfigEndpointChangeNeedsSecret(t *testing.T) {
	t.Parallel()
	var captured atomic.Int64
	capture := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		captured.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"captured","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(capture.Close)
	capturePEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: capture.Certificate().Raw}))

	cases := []struct {
		name string
		set  map[string]any
	}{
		{"tenant_url", map[string]any{"tenant_url": capture.URL, "ca_cert": capturePEM}},
		{"tenant_url unverified", map[string]any{"tenant_url": capture.URL, "ca_cert": capturePEM, "verify_connection": false}},
		{"token_url", map[string]any{"token_url": capture.URL + "/token", "ca_cert": capturePEM}},
		// Each field alone, so that no other rule refuses the write in its place.
		{"tenant_url alone", map[string]any{"tenant_url": capture.URL, "verify_connection": false}},
		{"token_url alone", map[string]any{"token_url": capture.URL + "/token", "verify_connection": false}},
		{"revoke_url", map[string]any{"revoke_url": capture.URL + "/revoke"}},
		{"client_id", map[string]any{"client_id": "svc-other@tenant.example", "verify_connection": false}},
		{"client_auth", map[string]any{"client_auth": "post"}},
		{"ca_cert", map[string]any{"ca_cert": capturePEM, "verify_connection": false}},
		{"app_id", map[string]any{"app_id": "OtherApp"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.configure(t)
			before := storedJSON(t, e.storage, "config")
			e.emu.Reset()
			start := captured.Load()
			resp, err := e.request(t, logical.UpdateOperation, "config", tc.set)
			assertBadRequest(t, resp, err, "client_secret")
			if msg := resp.Error().Error(); !strings.Contains(msg, "given again") {
				t.Errorf("the error does not say the secret must be given again: %s", msg)
			}
			if after := storedJSON(t, e.storage, "config"); after != before {
				t.Error("the stored config changed")
			}
			if n := captured.Load() - start; n != 0 {
				t.Errorf("the capture server got %d requests", n)
			}
			if n := e.emu.Stats().TokenRequests; n != 0 {
				t.Errorf("the tenant got %d token requests", n)
			}
		})
	}

	t.Run("with the secret", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		e.configure(t)
		// A change that moves nothing needs no secret.
		e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 1, "scopes": "read"})
		// The same move with a secret the writer knows is theirs to make.
		e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{
			"client_id": "svc-other@tenant.example", "client_secret": "An0ther-Secret", "verify_connection": false,
		})
	})
}

// TestConfigTokenURLWithoutTenantURL: a third-party token endpoint needs no tenant.
func TestConfigTokenURLWithoutTenantURL(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	delete(data, "tenant_url")
	delete(data, "app_id")
	data["token_url"] = e.url + "/oauth2/token/" + testAppID
	e.mustRequest(t, logical.CreateOperation, "config", data)
	if tok := e.mustRequest(t, logical.ReadOperation, "token", nil); tok.Data["access_token"] == "" {
		t.Error("no token")
	}
	got := e.mustRequest(t, logical.ReadOperation, "config", nil).Data
	if got["tenant_url"] != "" || got["revoke_tokens"] != false || got["total_timeout"] != int64(45) {
		t.Errorf("config = %v; want no tenant_url, revocation off, total_timeout 45", got)
	}
}

// TestConfigVerifyRateLimitedIsA429: a rate limit is neither the writer's mistake nor an
// outage; the writer should wait, as a 429 tells it to.
func TestConfigVerifyRateLimitedIsA429(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 429, RetryAfter: "3"})
	data := e.configData()
	data["max_retries"] = 0
	_, err := e.request(t, logical.CreateOperation, "config", data)
	var coded logical.HTTPCodedError
	if !errors.As(err, &coded) || coded.Code() != http.StatusTooManyRequests {
		t.Fatalf("err = %v, want a 429 coded error", err)
	}
	if storedJSON(t, e.storage, "config") != "" {
		t.Error("config stored although verification failed")
	}
}

// TestConfigRetryAndBudgetReachTheClient: max_retries and total_timeout are not only
// validated but govern the calls to the tenant.
func TestConfigRetryAndBudgetReachTheClient(t *testing.T) {
	t.Parallel()
	for _, retries := range []int{0, 2} {
		e := newTestEnv(t)
		e.configure(t)
		e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": retries})
		e.emu.Reset()
		e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503})
		if _, err := e.request(t, logical.ReadOperation, "token", nil); err == nil {
			t.Fatal("a read through a failing tenant succeeded")
		}
		if got := e.emu.Stats().TokenRequests; got != int64(retries+1) {
			t.Errorf("max_retries=%d made %d token requests, want %d", retries, got, retries+1)
		}
	}

	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"total_timeout": "1s", "max_retries": 10})
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Delay: 5 * time.Second})
	start := time.Now()
	_, err := e.request(t, logical.ReadOperation, "token", nil)
	if took := time.Since(start); err == nil || took > 3*time.Second {
		t.Errorf("total_timeout=1s: the read took %s (err %v); it must give up after about 1s", took, err)
	}
}
