package client

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fuzz targets run their seed corpus (testdata/fuzz/<name>) as ordinary tests;
// go test -fuzz explores from there.

// fuzzSentAt is the request time the token parser counts lifetimes from. It is fixed,
// so that the JWT exp claims in the seed corpus mean the same on every run.
var fuzzSentAt = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func FuzzParseToken(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := parseToken(body, fuzzSentAt, nil)
		if err != nil {
			if tok != nil {
				t.Error("an error and a token")
			}
			return
		}
		if tok.AccessToken == "" {
			t.Error("a token without an access token")
		}
		if tok.ExpiresIn < 1 || tok.ExpiresIn > int64(MaxTokenLifetime/time.Second) {
			t.Errorf("ExpiresIn %d is outside [1, %d]", tok.ExpiresIn, int64(MaxTokenLifetime/time.Second))
		}
		if !tok.IssuedAt.Equal(fuzzSentAt) || tok.Expiry.Sub(tok.IssuedAt) != time.Duration(tok.ExpiresIn)*time.Second {
			t.Errorf("IssuedAt %s and Expiry %s do not match ExpiresIn %d", tok.IssuedAt, tok.Expiry, tok.ExpiresIn)
		}
		if tok.TokenType == "" {
			t.Error("no token type")
		}
	})
}

// plant inserts v into s at a position chosen by at.
func plant(s, v string, at uint) string {
	i := int(at % uint(len(s)+1))
	return s[:i] + v + s[i:]
}

// jsonEscapeAll escapes every byte of an ASCII string as \u00XX: the most a JSON
// encoder could disguise it while it still decodes to the same string.
func jsonEscapeAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	return b.String()
}

// leaked names the first secret s carries, for a failure message that does not show it.
func leaked(s string, secrets []string) (string, bool) {
	for _, secret := range secrets {
		if strings.Contains(s, secret) {
			return fingerprint(secret), true
		}
	}
	return "", false
}

// FuzzErrorBody plants the client secret in a tenant's error answer in each form it
// could come back in (raw, escaped inside a JSON string, form encoded, and inside the
// Basic credentials), in the body and in the Location header, and reads the answer as
// the client does.
func FuzzErrorBody(f *testing.F) {
	f.Fuzz(func(t *testing.T, status int, contentType, location string, body []byte, secret string, at uint) {
		if len(secret) < 8 {
			return
		}
		c, err := New(Config{TokenURL: "https://tenant.example/oauth2/token/a", ClientID: testClientID, ClientSecret: secret})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		secrets := c.sensitive()
		basic := base64.StdEncoding.EncodeToString([]byte(testClientID + ":" + secret))
		forms := []string{secret, jsonEscapeAll(secret), url.QueryEscape(secret), basic}
		if enc, err := json.Marshal(secret); err == nil {
			forms = append(forms, string(enc[1:len(enc)-1]))
		}
		status = 300 + int(uint(status)%300)
		for _, form := range forms {
			resp := &http.Response{StatusCode: status, Header: http.Header{}}
			resp.Header.Set("Content-Type", contentType)
			resp.Header.Set("Location", plant(location, form, at))
			e := newError(resp, []byte(plant(string(body), form, at)), fuzzSentAt, secrets)
			// What leaves the package is the redacted error, as post returns it; the
			// fields are checked one by one too, since callers may read them.
			for name, text := range map[string]string{
				"error text":  redact(e, secrets).Error(),
				"Code":        e.Code,
				"Description": e.Description,
				"Body":        e.Body,
				"ContentType": e.ContentType,
				"Location":    e.Location,
			} {
				if fp, ok := leaked(text, secrets); ok {
					t.Errorf("%s carries a secret (%s)", name, fp)
				}
			}
		}
	})
}

// FuzzRedact: for any secret of 8 bytes or more and any text that holds it, redaction
// leaves no trace of it, in any of the forms the client redacts.
func FuzzRedact(f *testing.F) {
	f.Fuzz(func(t *testing.T, secret, text string, at uint) {
		if len(secret) < 8 {
			return
		}
		text = plant(text, secret, at)
		secrets := sensitiveForms(secret)
		for name, out := range map[string]string{
			"redactString": redactString(text, secrets),
			"redact":       redact(errors.New(text), secrets).Error(),
			"excerpt":      excerpt(text, secrets),
		} {
			if fp, ok := leaked(out, secrets); ok {
				t.Errorf("%s left a secret in its output (%s)", name, fp)
			}
		}
	})
}

// fuzzNewSecret is the password FuzzManagementEnvelope changes to: it holds characters
// that every encoding the client meets (JSON, forms, Go quoting) writes differently.
const fuzzNewSecret = `N3w"Pa\ss&w/<rd>%41+`

// fuzzBearer is the access token okBody grants.
const fuzzBearer = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"

// FuzzManagementEnvelope answers a password change with a fuzzed status and body, in
// which the markers {{old}}, {{new}}, {{bearer}}, {{old-json}}, {{new-json}} and
// {{new-form}} stand for the passwords and the bearer token, raw, escaped in a JSON
// string, or form encoded. Whatever the answer, the error must not carry them, and what
// it says about the outcome must follow ChangePassword's rules.
func FuzzManagementEnvelope(f *testing.F) {
	var (
		mu      sync.Mutex
		status  int
		answer  []byte
		changes int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if strings.HasPrefix(r.URL.Path, "/oauth2/token/") {
			_, _ = io.WriteString(w, okBody)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		changes++
		w.WriteHeader(status)
		_, _ = w.Write(answer)
	}))
	f.Cleanup(srv.Close)
	c, err := New(Config{
		TokenURL:       srv.URL + "/oauth2/token/a",
		ClientID:       testClientID,
		ClientSecret:   testClientSecret,
		RequestTimeout: 10 * time.Second,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(c.Close)
	markers := strings.NewReplacer(
		"{{old}}", testClientSecret,
		"{{new}}", fuzzNewSecret,
		"{{bearer}}", fuzzBearer,
		"{{old-json}}", jsonEscapeAll(testClientSecret),
		"{{new-json}}", jsonEscapeAll(fuzzNewSecret),
		"{{new-form}}", url.QueryEscape(fuzzNewSecret),
	)
	secrets := append(append(sensitiveForms(testClientSecret), sensitiveForms(fuzzNewSecret)...), fuzzBearer)

	f.Fuzz(func(t *testing.T, code uint16, body []byte) {
		mu.Lock()
		status = 200 + int(code)%400
		answer = []byte(markers.Replace(string(body)))
		changes = 0
		received := answer
		if status == http.StatusNoContent || status == http.StatusNotModified {
			received = nil // the server sends no body with these
		}
		mu.Unlock()

		_, err := c.ChangePassword(t.Context(), srv.URL+"/UserMgmt/ChangeUserPassword", nil, fuzzNewSecret)

		mu.Lock()
		if changes != 1 {
			t.Errorf("the change was sent %d times", changes)
		}
		mu.Unlock()
		if err != nil {
			if fp, ok := leaked(err.Error(), secrets); ok {
				t.Errorf("the error carries a password or the bearer token (%s)", fp)
			}
		}

		// The rules: the envelope's success field decides when there is one; without
		// it, a redirect, a refusal or a rate limit left the password as it was, and
		// anything else (a server error, a timeout, a 2xx without an envelope) may
		// have changed it.
		var env struct {
			Success *bool `json:"success"`
		}
		hasEnvelope := json.Unmarshal(received, &env) == nil && env.Success != nil
		unknown := errors.Is(err, ErrOutcomeUnknown)
		var me *ManagementError
		var te *Error
		switch {
		case hasEnvelope && *env.Success && status == http.StatusOK:
			if err != nil {
				t.Errorf("HTTP 200 with success true: err = %v", err)
			}
		case hasEnvelope && !*env.Success:
			if !errors.As(err, &me) || unknown || me.StatusCode != status {
				t.Errorf("HTTP %d with success false: want a *ManagementError with the outcome known, got %v", status, err)
			}
		case status >= 300 && status < 500 && status != http.StatusRequestTimeout:
			if !errors.As(err, &te) || unknown || te.StatusCode != status {
				t.Errorf("HTTP %d without success false: want a *client.Error with the outcome known, got %v", status, err)
			}
		default:
			if !unknown {
				t.Errorf("HTTP %d without an envelope that decides: want ErrOutcomeUnknown, got %v", status, err)
			}
		}
	})
}
