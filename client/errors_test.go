package client

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestErrorRefused(t *testing.T) {
	t.Parallel()
	for status, refused := range map[int]bool{
		301: true, 302: true, 307: true, 308: true,
		400: true, 401: true, 403: true, 404: true, 409: true, 422: true,
		408: false, 429: false,
		500: false, 501: false, 502: false, 503: false, 504: false,
	} {
		e := &Error{StatusCode: status}
		if e.Refused() != refused {
			t.Errorf("HTTP %d: Refused() = %v, want %v", status, e.Refused(), refused)
		}
		if e.Refused() && e.Temporary() {
			t.Errorf("HTTP %d is both refused and temporary", status)
		}
	}
}

// fingerprint names a secret in a failure message without printing it.
func fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return fmt.Sprintf("%d bytes, sha256 %x", len(secret), sum[:4])
}

// leakedPrefix is the length of the longest prefix of secret, of at least 8 bytes,
// that s contains; 0 if none.
func leakedPrefix(s, secret string) int {
	for n := len(secret); n >= 8; n-- {
		if strings.Contains(s, secret[:n]) {
			return n
		}
	}
	return 0
}

// padTo writes filler so that the text which follows starts at rune offset 190 of the
// body: a secret longer than 10 bytes then straddles the 200-rune excerpt cut.
func padTo(w io.Writer, before int) {
	_, _ = io.WriteString(w, strings.Repeat("x", 190-before))
}

func TestRedactionPrecedesExcerpts(t *testing.T) {
	t.Parallel()
	const (
		straddling = "Str4ddle:the@cut secret-0123456789"
		spaced     = "correct  horse\t\tbattery   staple-42"
		escaped    = "esc&ped/secret<value>-0123456789"
		bareJSON   = "escapedsecret&more-0123456789"
		token      = "eyJ.revoke/me+please=.sig-0123456789"
	)
	basic := func(secret string) string {
		return base64.StdEncoding.EncodeToString([]byte(testClientID + ":" + secret))
	}
	jsonEscape := strings.NewReplacer("&", `\u0026`, "/", `\/`, "<", `\u003c`, ">", `\u003e`)
	cases := []struct {
		name   string
		secret string
		style  AuthStyle
		revoke bool
		tenant func(w http.ResponseWriter, r *http.Request, n int)
		// leaks are the forms that must not appear, not even a prefix of 8 bytes.
		leaks map[string]string
	}{
		{
			name: "raw secret across the cut", secret: straddling, style: AuthPost,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				w.WriteHeader(400)
				padTo(w, 0)
				_, _ = io.WriteString(w, r.PostFormValue("client_secret")+" was refused")
			},
			leaks: map[string]string{"raw secret": straddling},
		},
		{
			name: "form-encoded secret across the cut", secret: straddling, style: AuthPost,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				body, _ := io.ReadAll(r.Body)
				i := strings.Index(string(body), "client_secret=") + len("client_secret=")
				w.WriteHeader(400)
				padTo(w, i)
				_, _ = w.Write(body)
			},
			leaks: map[string]string{"form-encoded secret": url.QueryEscape(straddling)},
		},
		{
			name: "Basic credentials across the cut", secret: straddling, style: AuthBasic,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				w.WriteHeader(401)
				padTo(w, len("Basic "))
				_, _ = io.WriteString(w, r.Header.Get("Authorization")) //nolint:gosec // a fake tenant echoes the credentials on purpose, to test the client's redaction
			},
			leaks: map[string]string{"Basic credentials": basic(straddling)},
		},
		{
			name: "white-space runs in an HTML page", secret: spaced, style: AuthPost,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(403)
				_, _ = io.WriteString(w, "<html><body>Login failed with password "+r.PostFormValue("client_secret")+"</body></html>")
			},
			leaks: map[string]string{"raw secret": spaced, "folded secret": strings.Join(strings.Fields(spaced), " ")},
		},
		{
			name: "JSON-escaped secret in error_description across the cut", secret: escaped, style: AuthPost,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(400)
				_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"`)
				padTo(w, 0)
				_, _ = io.WriteString(w, jsonEscape.Replace(r.PostFormValue("client_secret"))+`"}`)
			},
			leaks: map[string]string{"raw secret": escaped},
		},
		{
			name: "JSON-escaped secret in a body without OAuth fields", secret: bareJSON, style: AuthPost,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(400)
				_, _ = io.WriteString(w, `{"detail":"`+jsonEscape.Replace(r.PostFormValue("client_secret"))+`"}`)
			},
			leaks: map[string]string{"raw secret": bareJSON},
		},
		{
			name: "secret in a redirect", secret: straddling, style: AuthPost,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				w.Header().Set("Location", "https://elsewhere.example/login?p="+url.QueryEscape(r.PostFormValue("client_secret")))
				w.WriteHeader(http.StatusTemporaryRedirect)
			},
			leaks: map[string]string{"form-encoded secret": url.QueryEscape(straddling)},
		},
		{
			name: "revoked token, form-encoded, across the cut", secret: testClientSecret, revoke: true,
			tenant: func(w http.ResponseWriter, r *http.Request, _ int) {
				body, _ := io.ReadAll(r.Body)
				i := strings.Index(string(body), "token=") + len("token=")
				w.WriteHeader(400)
				padTo(w, i)
				_, _ = w.Write(body)
			},
			leaks: map[string]string{"access token": token, "form-encoded access token": url.QueryEscape(token)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := newTenant(t, tc.tenant)
			c := newTestClient(t, tn, func(cfg *Config) {
				cfg.ClientSecret = tc.secret
				cfg.AuthStyle = tc.style
			})
			var err error
			if tc.revoke {
				err = c.Revoke(context.Background(), token)
			} else {
				_, err = c.Token(context.Background(), nil)
			}
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("want a *client.Error, got %T", err)
			}
			msg := err.Error()
			for name, secret := range tc.leaks {
				if n := leakedPrefix(msg, secret); n > 0 {
					t.Errorf("error text carries %d bytes of the %s (%s)", n, name, fingerprint(secret))
				}
			}
			if !strings.Contains(msg, "[redacted]") {
				t.Errorf("want the reflected secret replaced by [redacted]; error has %d bytes", len(msg))
			}
		})
	}
}

func TestRedactString(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, text string
		secrets    []string
		want       string
	}{
		{"none", "nothing to hide", []string{"s3cret-value"}, "nothing to hide"},
		{"twice", "a s3cret-value b s3cret-value", []string{"s3cret-value"}, "a [redacted] b [redacted]"},
		{"overlapping occurrences", "xabababababx", []string{"abababab"}, "x[redacted]x"},
		// Replaced one after the other, the first would leave "ZZZZ" of the second.
		{"secrets that overlap", "<XXXXYYYYZZZZ>", []string{"XXXXYYYY", "YYYYZZZZ"}, "<[redacted]>"},
		{"one secret inside another", "<ab-secret-cd>", []string{"secret-c", "ab-secret-cd"}, "<[redacted]>"},
		// "[redacted]" followed by "bababab" would read "]bababab" again.
		{"a secret that runs into the mark", "000]bababab" + "bababab", []string{"]bababab"}, "000***bababab"},
		{"a secret inside the mark", "was redacted", []string{"redacted"}, "was ***"},
		{"a secret that runs into both marks", "redacted**", []string{"redacted", "**"}, ""},
	}
	for _, tc := range cases {
		if got := redactString(tc.text, tc.secrets); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	const forever = time.Duration(math.MaxInt64)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"0":                             0,
		"120":                           2 * time.Minute,
		" 7 ":                           7 * time.Second,
		"9223372036":                    9223372036 * time.Second,
		"9223372037":                    forever, // one more second than a time.Duration holds
		"9300000000":                    forever,
		"99999999999999999999999":       forever, // beyond uint64 too
		"-5":                            0,
		"+5":                            0, // not delay-seconds, nor a date
		"1.5":                           0,
		"Sun, 01 Jun 2025 12:01:00 GMT": time.Minute,
		"Sun, 01 Jun 2025 11:00:00 GMT": 0, // past
		"soon":                          0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %s, want %s", v, got, want)
		}
	}
}

// TestCredentialsRefused: which refusals may count as failed logins at the tenant.
func TestCredentialsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		e    Error
		want bool
	}{
		{Error{StatusCode: 400, Code: "access_denied"}, true},
		{Error{StatusCode: 400, Code: "invalid_client"}, true},
		{Error{StatusCode: 401}, true},
		{Error{StatusCode: 403, Body: "<html>"}, true},
		{Error{StatusCode: 302}, true},
		{Error{StatusCode: 400, Code: "invalid_scope"}, false},
		{Error{StatusCode: 400, Code: "invalid_request"}, false},
		{Error{StatusCode: 400, Code: "unsupported_grant_type"}, false},
		{Error{StatusCode: 429}, false},
		{Error{StatusCode: 503}, false},
	} {
		if got := tc.e.CredentialsRefused(); got != tc.want {
			t.Errorf("%d %q: CredentialsRefused() = %t, want %t", tc.e.StatusCode, tc.e.Code, got, tc.want)
		}
	}
}
