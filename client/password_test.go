package client

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const newTestSecret = "N3w-Secret-For-The-Test-9x"

// passwordTenant answers the grant with okBody and the change with change.
func passwordTenant(t *testing.T, change func(w http.ResponseWriter, r *http.Request)) *tenant {
	t.Helper()
	return newTenant(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		if strings.HasPrefix(r.URL.Path, "/oauth2/token/") {
			jsonAnswer(200, okBody)(w, r, 0)
			return
		}
		change(w, r)
	})
}

func changeURL(tn *tenant) string { return tn.srv.URL + "/UserMgmt/ChangeUserPassword" }

func TestChangePasswordOnTheWire(t *testing.T) {
	t.Parallel()
	tn := passwordTenant(t, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"success":true,"Result":null,"Message":null}`)
	})
	c := newTestClient(t, tn, nil)
	if _, err := c.ChangePassword(t.Context(), changeURL(tn), []string{"rotate"}, newTestSecret); err != nil {
		t.Fatal(err)
	}
	reqs := tn.got()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want the grant and the change", len(reqs))
	}
	if got := reqs[0].body; got != "grant_type=client_credentials&scope=rotate" {
		t.Errorf("the grant asked %q, want the rotation scope", got)
	}
	change := reqs[1]
	if change.method != http.MethodPost || change.path != "/UserMgmt/ChangeUserPassword" {
		t.Errorf("change went to %s %s", change.method, change.path)
	}
	if got := change.header.Get("Authorization"); got != "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln" {
		t.Error("the change did not carry the granted token as its bearer")
	}
	if ct := change.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var body map[string]string
	if err := json.Unmarshal([]byte(change.body), &body); err != nil {
		t.Fatalf("the change body is not JSON: %v", err)
	}
	if body["oldPassword"] != testClientSecret || body["newPassword"] != newTestSecret || len(body) != 2 {
		t.Error("the change body is not {oldPassword: current secret, newPassword: new secret}")
	}
}

// TestChangePasswordOutcomes: what the caller may conclude from each failure. A refusal
// the tenant answered, or a failure before the change was sent, leaves the password as
// it was; anything else might have changed it. The change is never sent twice.
func TestChangePasswordOutcomes(t *testing.T) {
	t.Parallel()
	reflect := `{"success":false,"Result":null,"Message":"Password ` + newTestSecret + ` was used recently (old ` + testClientSecret + `)","MessageID":"_I18N_PasswordHistory","ErrorID":"E1"}`
	cases := []struct {
		name     string
		change   func(w http.ResponseWriter, r *http.Request)
		unknown  bool
		want     string
		envelope bool
	}{
		{"refused in the envelope", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, reflect) }, false, "was used recently", true},
		{"refused, texts of other types", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, `{"success":false,"Message":["must differ from `+newTestSecret+`"],"MessageID":7}`)
		}, false, `["must differ from [redacted]"] (7)`, true},
		{"unauthorised", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"success":false,"Message":"Not authorized"}`)
		}, false, "Not authorized", true},
		{"forbidden without an envelope", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, "<html>denied</html>")
		}, false, "HTTP 403", false},
		{"server error", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>bad gateway</html>")
		}, true, "HTTP 502", false},
		{"connection dropped", func(w http.ResponseWriter, _ *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}, true, "contacting tenant", false},
		{"200 without an envelope", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }, true, "without a management envelope", false},
		// A throttled change was turned away before it was acted on: retrying later is
		// safe, and the caller must not go hunting for a password that never changed.
		{"rate limited", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, "Too Many Requests")
		}, false, "HTTP 429", false},
		// The bearer token can change the password until it expires, so an answer
		// that echoes it is redacted like one that echoes a password.
		{"bearer token reflected in the envelope", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
			msg, _ := json.Marshal("Authorization " + r.Header.Get("Authorization") + " is not valid for UserMgmt")
			_, _ = io.WriteString(w, `{"success":false,"Message":`+string(msg)+`}`)
		}, false, "is not valid for UserMgmt", true},
		{"bearer token reflected in a proxy page", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "<html>bad header: Authorization: "+r.Header.Get("Authorization")+"</html>") //nolint:gosec // a proxy page that reflects the header, on purpose
		}, false, "HTTP 400", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := passwordTenant(t, tc.change)
			c := newTestClient(t, tn, func(cfg *Config) {
				cfg.Retry = RetryPolicy{MaxRetries: 3, WaitMin: time.Millisecond, WaitMax: time.Millisecond}
			})
			_, err := c.ChangePassword(t.Context(), changeURL(tn), nil, newTestSecret)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, ErrOutcomeUnknown); got != tc.unknown {
				t.Errorf("outcome unknown = %t, want %t (%s)", got, tc.unknown, shown(err))
			}
			var me *ManagementError
			if got := errors.As(err, &me); got != tc.envelope {
				t.Errorf("management error = %t, want %t", got, tc.envelope)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", shown(err), tc.want)
			}
			for name, secret := range outcomeSecrets {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows the %s", name)
				}
			}
			changes := 0
			for _, r := range tn.got() {
				if r.path == "/UserMgmt/ChangeUserPassword" {
					changes++
				}
			}
			if changes != 1 {
				t.Errorf("the change was sent %d times, want exactly once", changes)
			}
		})
	}
}

// outcomeSecrets are what TestChangePasswordOutcomes's errors must never show: the
// passwords and the bearer token that okBody grants.
var outcomeSecrets = map[string]string{"new secret": newTestSecret, "old secret": testClientSecret, "bearer token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}

// shown is err's text fit for a failure message: each of outcomeSecrets it still holds
// is replaced by its fingerprint.
func shown(err error) string {
	s := err.Error()
	for _, secret := range outcomeSecrets {
		s = strings.ReplaceAll(s, secret, "<"+fingerprint(secret)+">")
	}
	return s
}

func TestChangePasswordGrantRefusedChangesNothing(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(400, `{"error":"invalid_client","error_description":"invalid client creds or client not allowed"}`))
	c := newTestClient(t, tn, nil)
	_, err := c.ChangePassword(t.Context(), changeURL(tn), nil, newTestSecret)
	var te *Error
	if !errors.As(err, &te) || !te.Refused() || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("err = %v, want the grant's refusal, with the outcome known", err)
	}
	if n := len(tn.got()); n != 1 {
		t.Errorf("%d requests, want only the grant", n)
	}
}

func TestChangePasswordRefusesNoChange(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, jsonAnswer(200, okBody))
	c := newTestClient(t, tn, nil)
	if _, err := c.ChangePassword(t.Context(), changeURL(tn), nil, testClientSecret); err == nil {
		t.Error("changing the password to itself was accepted")
	}
	if _, err := c.ChangePassword(t.Context(), "", nil, newTestSecret); err == nil {
		t.Error("a change without an endpoint was accepted")
	}
	if n := len(tn.got()); n != 0 {
		t.Errorf("%d requests reached the tenant", n)
	}
}

// An error's text is more than its redacted fields: Go quoting of an excerpt adds
// backslashes, and so can complete a secret that holds one from a reflection that lost
// it. Every error ChangePassword returns is redacted as a whole.
func TestChangePasswordErrorTextIsRedactedAsAWhole(t *testing.T) {
	t.Parallel()
	const quoted = `Quot\"ed-Secret-42`
	for _, status := range []int{http.StatusForbidden, http.StatusBadGateway} {
		tn := passwordTenant(t, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, `<p>`+strings.ReplaceAll(quoted, `\`, ``)+`</p>`)
		})
		c := newTestClient(t, tn, nil)
		_, err := c.ChangePassword(t.Context(), changeURL(tn), nil, quoted)
		var te *Error
		if !errors.As(err, &te) || te.StatusCode != status {
			t.Fatalf("HTTP %d: err = %v, want the *client.Error", status, err)
		}
		if strings.Contains(err.Error(), quoted) {
			t.Errorf("HTTP %d: the error text carries the new password (%s)", status, fingerprint(quoted))
		}
	}
}

// TestChangePasswordBoundedByTotalBudget: total_timeout (Retry.Budget) bounds the change
// too, not only request_timeout: a tenant that holds the answer leaves the outcome
// unknown once the budget is spent.
func TestChangePasswordBoundedByTotalBudget(t *testing.T) {
	t.Parallel()
	tn := passwordTenant(t, func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	c := newTestClient(t, tn, func(cfg *Config) { cfg.RequestTimeout = 30 * time.Second; cfg.Retry.Budget = 300 * time.Millisecond })
	done := make(chan error, 1)
	go func() {
		_, err := c.ChangePassword(t.Context(), changeURL(tn), []string{"rotate"}, newTestSecret)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrOutcomeUnknown) {
			t.Errorf("err = %v, want ErrOutcomeUnknown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the change outlived its total budget of 300ms by seconds")
	}
}
