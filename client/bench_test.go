package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// benchJWT is shaped like a CyberArk Identity access token: a JSON header and claims,
// and an RS256 signature (256 bytes), base64url-encoded, about 1 KB in all.
func benchJWT(tb testing.TB) string {
	tb.Helper()
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": strings.Repeat("k", 40)})
	claims, _ := json.Marshal(map[string]any{
		"iss": "https://aaa1234.id.cyberark.cloud/vault-e2e/", "aud": "vault-e2e", "sub": "svc-vault@tenant.example",
		"scope": "read write", "iat": 1700000000, "exp": 1700003600, "unique_name": "svc-vault@tenant.example",
		"app_id": "vault-e2e", "auth_time": 1700000000, "jti": strings.Repeat("j", 32),
	})
	sig := make([]byte, 256)
	for i := range sig {
		sig[i] = byte(i * 7)
	}
	return enc.EncodeToString(header) + "." + enc.EncodeToString(claims) + "." + enc.EncodeToString(sig)
}

func benchTokenBody(tb testing.TB) []byte {
	tb.Helper()
	body, err := json.Marshal(map[string]any{
		"access_token": benchJWT(tb), "token_type": "Bearer", "expires_in": 3600, "scope": "read write",
	})
	if err != nil {
		tb.Fatal(err)
	}
	return body
}

func benchClient(tb testing.TB, tokenURL string, style AuthStyle, caPEM string) *Client {
	tb.Helper()
	c, err := New(Config{
		TokenURL: tokenURL, ClientID: testClientID, ClientSecret: testClientSecret,
		AuthStyle: style, UserAgent: "bench", CACert: caPEM,
		Retry: RetryPolicy{MaxRetries: 2, WaitMin: 10 * time.Millisecond, WaitMax: 100 * time.Millisecond, Budget: 10 * time.Second},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// BenchmarkNewRequest measures building one grant request, the form and headers.
func BenchmarkNewRequest(b *testing.B) {
	for _, tc := range []struct {
		name  string
		style AuthStyle
	}{{"basic", AuthBasic}, {"post", AuthPost}} {
		b.Run(tc.name, func(b *testing.B) {
			c := benchClient(b, "https://tenant.example/oauth2/token/app", tc.style, "")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"}}
				if _, err := c.newRequest(ctx, c.cfg.TokenURL, form); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseToken measures reading a JWT-sized token response.
func BenchmarkParseToken(b *testing.B) {
	body := benchTokenBody(b)
	c := benchClient(b, "https://tenant.example/oauth2/token/app", AuthBasic, "")
	now := time.Now()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseToken(body, now, c.secrets); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkToken measures a whole grant through the client, retry layer included,
// against a local TLS endpoint that answers a fixed JWT-sized token over a kept-alive
// connection: the client's own cost per grant, plus loopback TLS.
func BenchmarkToken(b *testing.B) {
	c := benchTenant(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Token(ctx, []string{"read", "write"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBarePost is BenchmarkToken's request made with net/http alone on the
// client's own transport: the floor that BenchmarkToken's extra cost is read against.
func BenchmarkBarePost(b *testing.B) {
	c := benchTenant(b)
	hc := &http.Client{Transport: c.transport}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		req, err := c.newRequest(ctx, c.cfg.TokenURL, url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"}})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			b.Fatal(err)
		}
		_ = resp.Body.Close()
	}
}

// benchTenant is a client of a local TLS endpoint that answers every request with a
// fixed JWT-sized token, over a kept-alive connection.
func benchTenant(b *testing.B) *Client {
	b.Helper()
	body := benchTokenBody(b)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return benchClient(b, srv.URL+"/oauth2/token/app", AuthBasic, string(caPEM))
}
