package emulator

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	changePath  = "/UserMgmt/ChangeUserPassword"
	resetPath   = "/UserMgmt/ResetUserPassword"
	adminClient = "svc-admin@example.cyberark.cloud"
	adminSecret = "Admin-Secret-1"
	adminUUID   = "0f6c1c3e-6a39-4a4e-9d2b-6b0c0e7d7a11"
	// New passwords; each meets the default policy.
	newPass1 = "Rotated-Secret-1"
	newPass2 = "Rotated-Secret-2"
	newPass3 = "Rotated-Secret-3"
	newPass4 = "Rotated-Secret-4"
)

// knownPasswords are every password the tests use; no answer may contain one.
var knownPasswords = []string{testSecret, limitedSecret, adminSecret, newPass1, newPass2, newPass3, newPass4}

// withUserMgmt gives the test config what the management APIs need: scopes that allow
// them and a service user with user-management rights, listed on two apps.
func withUserMgmt(c *Config) {
	for i := range c.Apps {
		a := &c.Apps[i]
		switch a.ID {
		case testApp:
			a.ScopeAPIs = map[string][]string{
				"all":   {"UserMgmt/.*"},
				"write": {"usermgmt/changeuserpassword"},
			}
			a.Clients = append(a.Clients, Client{ID: adminClient, Secret: adminSecret, UUID: adminUUID, Admin: true})
		case overrideApp:
			a.ScopeAPIs = map[string][]string{"all": {"UserMgmt/(Change|Reset)UserPassword"}}
			// The admin right belongs to the user, not to this entry.
			a.Clients = append(a.Clients, Client{ID: adminClient, Secret: adminSecret})
		}
	}
}

// tokenFor gets an access token at app with Basic credentials; scope may be empty.
func (f *fixture) tokenFor(t *testing.T, app, id, secret, scope string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	if scope != "" {
		form.Set("scope", scope)
	}
	status, _, body := f.post(t, "/oauth2/token/"+app, basicHeader(id, secret), form)
	if status != http.StatusOK {
		t.Fatalf("token for %s at %s: status %d, body %s", id, app, status, body)
	}
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || resp.AccessToken == "" {
		t.Fatalf("token for %s at %s: %v in %s", id, app, err, body)
	}
	return resp.AccessToken
}

// answer is a decoded management envelope: the emulator's own type, read back.
type answer envelope

func (a answer) id() string {
	if a.MessageID == nil {
		return "<nil>"
	}
	return *a.MessageID
}

func (a answer) message() string {
	if a.Message == nil {
		return "<nil>"
	}
	return *a.Message
}

const successBody = `{"success":true,"Result":null,"Message":null,"MessageID":null,"Exception":null,` +
	`"ErrorID":null,"ErrorCode":0,"IsSoftError":false,"InnerExceptions":null}`

// manage sends a management call with a raw JSON body. It fails the test if the answer
// echoes any known password (without printing it) or lacks an envelope field.
func (f *fixture) manage(t *testing.T, method, path, bearer, body string) (int, http.Header, answer) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	status, hdr, raw := do(t, f.srv.Client(), req)
	checkNoPassword(t, raw)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object: %v", method, path, err)
	}
	for _, k := range []string{"success", "Result", "Message", "MessageID", "Exception", "ErrorID", "ErrorCode", "IsSoftError", "InnerExceptions"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("%s %s: envelope lacks %q: %s", method, path, k, raw)
		}
	}
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("%s %s: %v in %s", method, path, err, raw)
	}
	if a.Success && string(raw) != successBody {
		t.Errorf("success answer %s\nwant %s", raw, successBody)
	}
	if !a.Success && (a.Result != nil || a.Exception != nil || a.InnerExceptions != nil || a.ErrorCode != 0 ||
		a.IsSoftError || a.ErrorID == nil || *a.ErrorID == "" || a.Message == nil || a.MessageID == nil) {
		t.Errorf("failure envelope malformed: %s", raw)
	}
	return status, hdr, a
}

func checkNoPassword(t *testing.T, b []byte) {
	t.Helper()
	for i, p := range knownPasswords {
		if strings.Contains(string(b), p) {
			t.Errorf("an answer contains known password #%d", i)
		}
	}
}

// changeBody and resetBody build the JSON bodies; the tests never print them.
func changeBody(oldPW, newPW string) string {
	b, _ := json.Marshal(map[string]string{"oldPassword": oldPW, "newPassword": newPW})
	return string(b)
}

func resetBody(id, newPW string) string {
	b, _ := json.Marshal(map[string]string{"ID": id, "newPassword": newPW})
	return string(b)
}

// grantStatus asks for a token at app with a secret and returns the status only.
func (f *fixture) grantStatus(t *testing.T, app, id, secret string) int {
	t.Helper()
	status, _, _ := f.post(t, "/oauth2/token/"+app, basicHeader(id, secret), grantForm)
	return status
}

// wantSecret checks which of two secrets the tenant accepts, at every app that lists the
// main client and through ClientSecretIs. The secrets are named by label only.
func (f *fixture) wantSecret(t *testing.T, current, stale, currentLabel, staleLabel string) {
	t.Helper()
	if !f.emu.ClientSecretIs(testClient, current) || f.emu.ClientSecretIs(testClient, stale) {
		t.Errorf("ClientSecretIs: want %s current and %s not", currentLabel, staleLabel)
	}
	for _, app := range []string{testApp, overrideApp, basicOnlyApp} {
		if s := f.grantStatus(t, app, testClient, current); s != http.StatusOK {
			t.Errorf("%s: %s refused with %d", app, currentLabel, s)
		}
		if s := f.grantStatus(t, app, testClient, stale); s != http.StatusBadRequest {
			t.Errorf("%s: %s answered %d, want 400", app, staleLabel, s)
		}
	}
}

func TestChangeUserPasswordAcrossApps(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	status, hdr, a := f.manage(t, http.MethodPost, changePath, tok, changeBody(testSecret, newPass1))
	if status != http.StatusOK || !a.Success {
		t.Fatalf("change: %d %s %s", status, a.id(), a.message())
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", hdr.Get("Cache-Control"))
	}
	f.wantSecret(t, newPass1, testSecret, "new secret", "old secret")

	// The same user changes again through a token from another app: one password.
	tok = f.tokenFor(t, overrideApp, testClient, newPass1, "")
	if status, _, a := f.manage(t, http.MethodPost, changePath, tok, changeBody(newPass1, newPass2)); status != 200 || !a.Success {
		t.Fatalf("change via the other app: %d %s", status, a.id())
	}
	f.wantSecret(t, newPass2, newPass1, "second secret", "first secret")

	st := f.emu.Stats()
	if st.PasswordChanges != 2 || st.ManagementRequests != 2 {
		t.Errorf("stats %+v, want 2 password changes and 2 management requests", st)
	}
	var recorded []Request
	for _, r := range f.emu.Requests() {
		if strings.EqualFold(r.Path, changePath) {
			recorded = append(recorded, r)
		}
	}
	if len(recorded) != 2 || string(recorded[0].Body) != changeBody(testSecret, newPass1) ||
		recorded[0].Header.Get("Authorization") == "" || recorded[0].Method != http.MethodPost {
		t.Errorf("management requests not recorded as sent (%d recorded)", len(recorded))
	}
}

func TestManagementFailures(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { withUserMgmt(c); c.ExpiresIn = 600 })
	own := f.tokenFor(t, testApp, testClient, testSecret, "")
	readOnly := f.tokenFor(t, testApp, testClient, testSecret, "read")
	admin := f.tokenFor(t, testApp, adminClient, adminSecret, "")
	revoked := f.tokenFor(t, testApp, testClient, testSecret, "")
	if s, _, _ := f.post(t, "/oauth2/revoke/"+testApp, basicHeader(testClient, testSecret), url.Values{"token": {revoked}}); s != 200 {
		t.Fatalf("revoke: %d", s)
	}
	good := changeBody(testSecret, newPass1)

	tests := []struct {
		name        string
		method      string // POST when empty
		path        string
		auth        string // full Authorization header; "bearer:" + token is expanded
		bearer      string
		body        string
		wantStatus  int
		wantID      string
		wantMessage string
	}{
		{name: "no token", path: changePath, body: good, wantStatus: 401, wantID: "AuthTokenMissing",
			wantMessage: "Authentication required: the request carries no bearer token."},
		{name: "basic credentials are not a bearer token", path: changePath, auth: basicHeader(testClient, testSecret), body: good,
			wantStatus: 401, wantID: "AuthTokenMissing", wantMessage: "Authentication required: the request carries no bearer token."},
		{name: "empty bearer", path: changePath, auth: "Bearer ", body: good, wantStatus: 401, wantID: "AuthTokenMissing",
			wantMessage: "Authentication required: the request carries no bearer token."},
		{name: "unknown token", path: changePath, bearer: "eyJ.not.issued", body: good, wantStatus: 401, wantID: "AuthTokenInvalid",
			wantMessage: "Authentication failed: the bearer token is not valid."},
		{name: "revoked token", path: changePath, bearer: revoked, body: good, wantStatus: 401, wantID: "AuthTokenRevoked",
			wantMessage: "Authentication failed: the bearer token has been revoked."},
		{name: "GET", method: http.MethodGet, path: changePath, bearer: own, wantStatus: 405, wantID: "MethodNotAllowed",
			wantMessage: "Method not allowed: use POST."},
		{name: "scope without the API", path: changePath, bearer: readOnly, body: good, wantStatus: 200, wantID: "ApiNotAllowedByScope",
			wantMessage: "Not authorized: the token's scopes do not allow calling UserMgmt/ChangeUserPassword."},
		{name: "scope is checked before the body", path: resetPath, bearer: readOnly, body: "{", wantStatus: 200, wantID: "ApiNotAllowedByScope",
			wantMessage: "Not authorized: the token's scopes do not allow calling UserMgmt/ResetUserPassword."},
		{name: "wrong old password", path: changePath, bearer: own, body: changeBody(newPass2, newPass1), wantStatus: 200,
			wantID: "OldPasswordIncorrect", wantMessage: "The old password is incorrect."},
		{name: "truncated JSON", path: changePath, bearer: own, body: `{"oldPassword":`, wantStatus: 200, wantID: "InvalidJsonBody",
			wantMessage: "The request body is not a valid JSON object."},
		{name: "JSON array", path: changePath, bearer: own, body: `[]`, wantStatus: 200, wantID: "InvalidJsonBody",
			wantMessage: "The request body is not a valid JSON object."},
		{name: "empty body", path: changePath, bearer: own, wantStatus: 200, wantID: "InvalidJsonBody",
			wantMessage: "The request body is not a valid JSON object."},
		{name: "trailing data", path: changePath, bearer: own, body: good + " {}", wantStatus: 200, wantID: "InvalidJsonBody",
			wantMessage: "The request body is not a valid JSON object."},
		{name: "number for a password", path: changePath, bearer: own, body: `{"oldPassword":1,"newPassword":"x"}`, wantStatus: 200,
			wantID: "InvalidJsonBody", wantMessage: "The request body is not a valid JSON object."},
		{name: "missing oldPassword", path: changePath, bearer: own, body: `{"newPassword":"Whatever-Pass-9"}`, wantStatus: 200,
			wantID: "MissingParameter", wantMessage: "Missing required parameter: oldPassword."},
		{name: "empty newPassword", path: changePath, bearer: own, body: changeBody(testSecret, ""), wantStatus: 200,
			wantID: "MissingParameter", wantMessage: "Missing required parameter: newPassword."},
		{name: "policy", path: changePath, bearer: own, body: changeBody(testSecret, "Sh0rt"), wantStatus: 200,
			wantID: "PasswordTooShort", wantMessage: "Password does not meet policy requirements: it must be at least 8 characters long."},
		{name: "reset without rights", path: resetPath, bearer: own, body: resetBody(testUUID, newPass1), wantStatus: 200,
			wantID: "UserMgmtRightsRequired", wantMessage: "Not authorized: resetting a user's password requires user management rights."},
		{name: "reset without ID", path: resetPath, bearer: admin, body: `{"newPassword":"Whatever-Pass-9"}`, wantStatus: 200,
			wantID: "MissingParameter", wantMessage: "Missing required parameter: ID."},
		{name: "reset without newPassword", path: resetPath, bearer: admin, body: `{"ID":"` + testUUID + `"}`, wantStatus: 200,
			wantID: "MissingParameter", wantMessage: "Missing required parameter: newPassword."},
		{name: "reset of an unknown user", path: resetPath, bearer: admin, body: resetBody("00000000-0000-4000-8000-000000000000", newPass1),
			wantStatus: 200, wantID: "UserNotFound", wantMessage: "No user exists with the given ID."},
		{name: "reset naming a login name, not a UUID", path: resetPath, bearer: admin, body: resetBody(testClient, newPass1),
			wantStatus: 200, wantID: "UserNotFound", wantMessage: "No user exists with the given ID."},
		{name: "body over 1 MiB", path: changePath, bearer: own, body: `{"oldPassword":"` + strings.Repeat("x", maxBodyBytes) + `"}`,
			wantStatus: 413, wantID: "RequestTooLarge", wantMessage: "The request body is too large."},
	}
	run := func(name, method, path, auth, bearer, body string, wantStatus int, wantID, wantMessage string) {
		t.Helper()
		if method == "" {
			method = http.MethodPost
		}
		req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case auth != "":
			req.Header.Set("Authorization", auth)
		case bearer != "":
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		status, hdr, raw := do(t, f.srv.Client(), req)
		checkNoPassword(t, raw)
		var a answer
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Errorf("%s: answer is not an envelope: %.200s", name, raw)
			return
		}
		if status != wantStatus || a.Success || a.id() != wantID || a.message() != wantMessage || a.ErrorID == nil {
			t.Errorf("%s: %d %s %q\nwant %d %s %q", name, status, a.id(), a.message(), wantStatus, wantID, wantMessage)
		}
		if status == http.StatusUnauthorized && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", name, hdr.Get("WWW-Authenticate"))
		}
		if status == http.StatusMethodNotAllowed && hdr.Get("Allow") != http.MethodPost {
			t.Errorf("%s: Allow %q", name, hdr.Get("Allow"))
		}
	}
	for _, tc := range tests {
		run(tc.name, tc.method, tc.path, tc.auth, tc.bearer, tc.body, tc.wantStatus, tc.wantID, tc.wantMessage)
	}
	f.clock.Advance(600 * time.Second)
	run("expired token", "", changePath, "", own, good, 401, "AuthTokenExpired", "Authentication failed: the bearer token has expired.")

	if !f.emu.ClientSecretIs(testClient, testSecret) || !f.emu.ClientSecretIs(adminClient, adminSecret) {
		t.Error("a refused call changed a password")
	}
	st := f.emu.Stats()
	if st.PasswordChanges != 0 || st.ManagementRequests != int64(len(tests)+1) {
		t.Errorf("stats %+v, want 0 changes and %d management requests", st, len(tests)+1)
	}
}

func TestPasswordPolicy(t *testing.T) {
	t.Parallel()
	const policyPrefix = "Password does not meet policy requirements: "
	tests := []struct {
		name     string
		policy   *PasswordPolicy
		password string
		wantID   string // empty: accepted
		wantRule string
	}{
		{name: "default: 7 characters", password: "Abcde1x", wantID: "PasswordTooShort", wantRule: "it must be at least 8 characters long"},
		{name: "default: 8 characters", password: "Abcdef1x"},
		{name: "default: 65 characters", password: "Aa1" + strings.Repeat("x", 62), wantID: "PasswordTooLong",
			wantRule: "it must not be longer than 64 characters"},
		{name: "default: 64 characters", password: "Aa1" + strings.Repeat("x", 61)},
		{name: "default: 64 characters in more bytes", password: "Aa1" + strings.Repeat("é", 61)},
		{name: "default: 8 characters in more bytes", password: "Äbcdéf1x"},
		{name: "default: no digit", password: "NoDigitsHere", wantID: "PasswordMissingDigit", wantRule: "it must contain at least one digit"},
		{name: "default: no upper case", password: "alllower123", wantID: "PasswordMissingUpper",
			wantRule: "it must contain at least one upper-case letter"},
		{name: "default: no lower case", password: "ALLUPPER123", wantID: "PasswordMissingLower",
			wantRule: "it must contain at least one lower-case letter"},
		{name: "default: length is checked first", password: "abc", wantID: "PasswordTooShort", wantRule: "it must be at least 8 characters long"},
		{name: "custom: longer minimum", policy: &PasswordPolicy{MinLength: 12, RequireDigit: true}, password: "Abcdefgh1",
			wantID: "PasswordTooShort", wantRule: "it must be at least 12 characters long"},
		{name: "custom: only what it asks for", policy: &PasswordPolicy{MinLength: 12, RequireDigit: true}, password: "all-lower-case-1"},
		{name: "custom: no maximum", policy: &PasswordPolicy{MinLength: 1}, password: strings.Repeat("z", 500)},
		{name: "custom: maximum", policy: &PasswordPolicy{MaxLength: 10}, password: "12345678901", wantID: "PasswordTooLong",
			wantRule: "it must not be longer than 10 characters"},
		{name: "custom: upper only", policy: &PasswordPolicy{RequireUpper: true}, password: "lower", wantID: "PasswordMissingUpper",
			wantRule: "it must contain at least one upper-case letter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) { withUserMgmt(c); c.PasswordPolicy = tc.policy })
			tok := f.tokenFor(t, testApp, testClient, testSecret, "")
			status, _, a := f.manage(t, http.MethodPost, changePath, tok, changeBody(testSecret, tc.password))
			if status != http.StatusOK {
				t.Fatalf("status %d", status)
			}
			if tc.wantID == "" {
				if !a.Success || !f.emu.ClientSecretIs(testClient, tc.password) {
					t.Errorf("refused: %s %q", a.id(), a.message())
				}
				return
			}
			if a.Success || a.id() != tc.wantID || a.message() != policyPrefix+tc.wantRule+"." {
				t.Errorf("got success=%v %s %q, want %s %q", a.Success, a.id(), a.message(), tc.wantID, policyPrefix+tc.wantRule+".")
			}
			if !f.emu.ClientSecretIs(testClient, testSecret) {
				t.Error("a refused password was set")
			}
		})
	}
}

func TestPasswordHistory(t *testing.T) {
	t.Parallel()
	type step struct {
		password string
		refused  bool
	}
	tests := []struct {
		name        string
		history     int
		steps       []step
		wantMessage string
	}{
		{
			name:    "default: the last three, current included",
			history: 0,
			steps: []step{
				{newPass1, false}, {newPass2, false},
				{newPass2, true}, {newPass1, true},
				{newPass3, false}, {newPass1, true}, // P3, P2, P1 are the last three
				{newPass4, false}, {newPass1, false}, // P1 has left the history
			},
			wantMessage: "Password does not meet policy requirements: it must not match any of the last 3 passwords.",
		},
		{
			name:        "one: only the current password",
			history:     1,
			steps:       []step{{newPass1, false}, {newPass1, true}, {newPass2, false}, {newPass1, false}},
			wantMessage: "Password does not meet policy requirements: it must differ from the current password.",
		},
		{
			name:        "five",
			history:     5,
			steps:       []step{{newPass1, false}, {newPass2, false}, {newPass3, false}, {newPass4, false}, {newPass1, true}},
			wantMessage: "Password does not meet policy requirements: it must not match any of the last 5 passwords.",
		},
		{
			name:    "negative turns it off",
			history: -1,
			steps:   []step{{newPass1, false}, {newPass1, false}, {newPass2, false}, {newPass1, false}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) { withUserMgmt(c); c.PasswordHistory = tc.history })
			admin := f.tokenFor(t, testApp, adminClient, adminSecret, "")
			current := testSecret
			for i, s := range tc.steps {
				// Alternate the two APIs: the history applies to both.
				path, body := changePath, ""
				var tok string
				if i%2 == 0 {
					tok = f.tokenFor(t, testApp, testClient, current, "")
					body = changeBody(current, s.password)
				} else {
					path, tok, body = resetPath, admin, resetBody(testUUID, s.password)
				}
				_, _, a := f.manage(t, http.MethodPost, path, tok, body)
				if s.refused {
					if a.Success || a.id() != "PasswordInHistory" || a.message() != tc.wantMessage {
						t.Errorf("step %d: success=%v %s %q, want PasswordInHistory %q", i, a.Success, a.id(), a.message(), tc.wantMessage)
					}
					continue
				}
				if !a.Success {
					t.Fatalf("step %d: refused with %s %q", i, a.id(), a.message())
				}
				current = s.password
			}
			if !f.emu.ClientSecretIs(testClient, current) {
				t.Error("the tenant does not hold the last accepted password")
			}
		})
	}
}

func TestScopeAPIs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		app    string
		id     string
		secret string
		scope  string
		path   string
		body   string
		want   bool
	}{
		{"all allows change", testApp, testClient, testSecret, "all", changePath, changeBody(testSecret, newPass1), true},
		{"path case and trailing slash", testApp, testClient, testSecret, "all", "/usermgmt/CHANGEUSERPASSWORD/", changeBody(testSecret, newPass1), true},
		{"write allows change", testApp, testClient, testSecret, "write", changePath, changeBody(testSecret, newPass1), true},
		{"read allows nothing", testApp, testClient, testSecret, "read", changePath, changeBody(testSecret, newPass1), false},
		{"one of several scopes is enough", testApp, testClient, testSecret, "read write", changePath, changeBody(testSecret, newPass1), true},
		{"write does not allow reset", testApp, adminClient, adminSecret, "write", resetPath, resetBody(testUUID, newPass1), false},
		{"all allows reset", testApp, adminClient, adminSecret, "all", resetPath, resetBody(testUUID, newPass1), true},
		{"alternation at another app", overrideApp, adminClient, adminSecret, "", resetPath, resetBody(testUUID, newPass1), true},
		{"app without scope_apis", postOnlyApp, testClient, testSecret, "", changePath, changeBody(testSecret, newPass1), false},
		{"expressions match the whole path", basicOnlyApp, testClient, testSecret, "", changePath, changeBody(testSecret, newPass1), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) {
				withUserMgmt(c)
				for i := range c.Apps {
					if c.Apps[i].ID == basicOnlyApp {
						c.Apps[i].ScopeAPIs = map[string][]string{"all": {"UserMgmt/Change", "ChangeUserPassword"}}
					}
				}
			})
			var tok string
			if tc.app == postOnlyApp {
				status, _, body := f.post(t, "/oauth2/token/"+tc.app, "",
					url.Values{"grant_type": {"client_credentials"}, "client_id": {tc.id}, "client_secret": {tc.secret}})
				var resp struct {
					AccessToken string `json:"access_token"`
				}
				if status != 200 || json.Unmarshal(body, &resp) != nil {
					t.Fatalf("token: %d %s", status, body)
				}
				tok = resp.AccessToken
			} else {
				tok = f.tokenFor(t, tc.app, tc.id, tc.secret, tc.scope)
			}
			status, _, a := f.manage(t, http.MethodPost, tc.path, tok, tc.body)
			if status != http.StatusOK || a.Success != tc.want {
				t.Fatalf("status %d, success %v (%s), want %v", status, a.Success, a.id(), tc.want)
			}
			if !tc.want && a.id() != "ApiNotAllowedByScope" {
				t.Errorf("refused with %s, want ApiNotAllowedByScope", a.id())
			}
			if changed := f.emu.ClientSecretIs(testClient, newPass1); changed != tc.want {
				t.Errorf("password changed: %v, want %v", changed, tc.want)
			}
		})
	}
}

func TestResetUserPassword(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	// The admin right was set on the admin's entry in testApp; its token from the other
	// app carries it too, because the right belongs to the user.
	for i, app := range []string{testApp, overrideApp} {
		admin := f.tokenFor(t, app, adminClient, adminSecret, "")
		target := testUUID
		if i == 1 {
			target = strings.ToUpper(testUUID) // UUIDs match without regard to case
		}
		newPW := []string{newPass1, newPass2}[i]
		status, _, a := f.manage(t, http.MethodPost, resetPath, admin, resetBody(target, newPW))
		if status != http.StatusOK || !a.Success {
			t.Fatalf("reset by admin via %s: %d %s %q", app, status, a.id(), a.message())
		}
	}
	f.wantSecret(t, newPass2, newPass1, "reset secret", "earlier secret")

	// A user without the right cannot reset, not even its own password.
	own := f.tokenFor(t, testApp, testClient, newPass2, "")
	for _, target := range []string{testUUID, adminUUID} {
		_, _, a := f.manage(t, http.MethodPost, resetPath, own, resetBody(target, newPass3))
		if a.Success || a.id() != "UserMgmtRightsRequired" {
			t.Errorf("reset by non-admin: success=%v %s", a.Success, a.id())
		}
	}
	if !f.emu.ClientSecretIs(testClient, newPass2) || !f.emu.ClientSecretIs(adminClient, adminSecret) {
		t.Error("a non-admin reset changed a password")
	}

	// An admin may reset its own password; the user with a generated UUID is found by it.
	admin := f.tokenFor(t, testApp, adminClient, adminSecret, "")
	if _, _, a := f.manage(t, http.MethodPost, resetPath, admin, resetBody(adminUUID, newPass3)); !a.Success {
		t.Errorf("admin resetting itself: %s", a.id())
	}
	limited := f.tokenFor(t, testApp, limitedClient, limitedSecret, "")
	sub, _ := decodeClaims(t, limited)["sub"].(string)
	if _, _, a := f.manage(t, http.MethodPost, resetPath, admin, resetBody(sub, newPass4)); !a.Success {
		t.Errorf("reset of a user with a generated UUID: %s", a.id())
	}
	if !f.emu.ClientSecretIs(adminClient, newPass3) || !f.emu.ClientSecretIs(limitedClient, newPass4) {
		t.Error("resets did not take")
	}
	if st := f.emu.Stats(); st.PasswordChanges != 4 || st.ManagementRequests != 6 {
		t.Errorf("stats %+v, want 4 changes in 6 management requests", st)
	}
}

func TestRevokeTokensOnPasswordChange(t *testing.T) {
	t.Parallel()
	for _, revoke := range []bool{false, true} {
		name := map[bool]string{false: "tokens stay valid", true: "tokens are revoked"}[revoke]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) { withUserMgmt(c); c.RevokeTokensOnPasswordChange = revoke })
			caller := f.tokenFor(t, testApp, testClient, testSecret, "")
			elsewhere := f.tokenFor(t, overrideApp, testClient, testSecret, "")
			otherUser := f.tokenFor(t, testApp, limitedClient, limitedSecret, "")
			if _, _, a := f.manage(t, http.MethodPost, changePath, caller, changeBody(testSecret, newPass1)); !a.Success {
				t.Fatalf("change: %s", a.id())
			}

			active := func(app, tok string) bool {
				t.Helper()
				status, _, body := f.post(t, "/oauth2/introspect/"+app, basicHeader(testClient, newPass1), url.Values{"token": {tok}})
				if status != http.StatusOK {
					t.Fatalf("introspect: %d %s", status, body)
				}
				var resp struct {
					Active bool `json:"active"`
				}
				if err := json.Unmarshal(body, &resp); err != nil {
					t.Fatal(err)
				}
				return resp.Active
			}
			for _, tc := range []struct {
				label, app, tok string
				wantActive      bool
			}{
				{"caller's token", testApp, caller, !revoke},
				{"token from the other app", overrideApp, elsewhere, !revoke},
				{"another user's token", testApp, otherUser, true},
			} {
				if got := active(tc.app, tc.tok); got != tc.wantActive {
					t.Errorf("%s: active %v, want %v", tc.label, got, tc.wantActive)
				}
				if got := f.emu.Revoked(tc.tok); got != !tc.wantActive {
					t.Errorf("%s: Revoked %v, want %v", tc.label, got, !tc.wantActive)
				}
			}

			status, _, a := f.manage(t, http.MethodPost, changePath, caller, changeBody(newPass1, newPass2))
			if revoke {
				if status != http.StatusUnauthorized || a.id() != "AuthTokenRevoked" {
					t.Errorf("management call with a revoked token: %d %s", status, a.id())
				}
			} else if !a.Success {
				t.Errorf("management call with a token from before the change: %s", a.id())
			}
			// A token issued after the change works either way.
			current := newPass1
			if !revoke {
				current = newPass2
			}
			fresh := f.tokenFor(t, testApp, testClient, current, "")
			if _, _, a := f.manage(t, http.MethodPost, changePath, fresh, changeBody(current, newPass3)); !a.Success {
				t.Errorf("management call with a fresh token: %s", a.id())
			}

			// SetClientSecret is a password change too.
			fresh = f.tokenFor(t, testApp, testClient, newPass3, "")
			if err := f.emu.SetClientSecret(testApp, testClient, newPass4); err != nil {
				t.Fatal(err)
			}
			if got := f.emu.Revoked(fresh); got != revoke {
				t.Errorf("after SetClientSecret: Revoked %v, want %v", got, revoke)
			}
		})
	}
}

func TestApplyFirst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fault      Fault
		wantErr    bool // the caller gets no answer
		wantStatus int
		wantReal   bool // the caller gets the real answer
	}{
		{name: "dropped connection", fault: Fault{DropConnection: true}, wantErr: true},
		{name: "proxy error", fault: Fault{Status: 502}, wantStatus: 502},
		{name: "failure envelope", fault: Fault{Status: 200}, wantStatus: 200},
		{name: "rate limited", fault: Fault{Status: 429, RetryAfter: "3"}, wantStatus: 429},
		{name: "delay", fault: Fault{Delay: 20 * time.Millisecond}, wantStatus: 200, wantReal: true},
	}
	for _, tc := range tests {
		for _, applyFirst := range []bool{false, true} {
			t.Run(tc.name+map[bool]string{false: "", true: " after applying"}[applyFirst], func(t *testing.T) {
				t.Parallel()
				f := newFixture(t, withUserMgmt)
				tok := f.tokenFor(t, testApp, testClient, testSecret, "")
				fault := tc.fault
				fault.Endpoint, fault.Times, fault.ApplyFirst = epChangePassword, 1, applyFirst
				f.emu.AddFaults(fault)

				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+changePath, strings.NewReader(changeBody(testSecret, newPass1)))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := f.srv.Client().Do(req)
				if tc.wantErr {
					if err == nil {
						resp.Body.Close()
						t.Fatalf("answered %d through a dropped connection", resp.StatusCode)
					}
				} else {
					if err != nil {
						t.Fatal(err)
					}
					var a answer
					_ = json.NewDecoder(resp.Body).Decode(&a)
					resp.Body.Close()
					if resp.StatusCode != tc.wantStatus || a.Success != tc.wantReal {
						t.Errorf("answer %d success=%v (%s), want %d success=%v", resp.StatusCode, a.Success, a.id(), tc.wantStatus, tc.wantReal)
					}
					if tc.fault.RetryAfter != "" && resp.Header.Get("Retry-After") != tc.fault.RetryAfter {
						t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
					}
				}
				wantChanged := applyFirst || tc.wantReal
				if got := f.emu.ClientSecretIs(testClient, newPass1); got != wantChanged {
					t.Errorf("password changed: %v, want %v", got, wantChanged)
				}
				st := f.emu.Stats()
				if st.FaultsServed != 1 || st.ManagementRequests != 1 || st.PasswordChanges != map[bool]int64{false: 0, true: 1}[wantChanged] {
					t.Errorf("stats %+v", st)
				}
			})
		}
	}
}

// An ApplyFirst delay plays a tenant that changed the password and then answered too late:
// the caller hangs up, and the change stands. Without ApplyFirst the hang-up leaves the
// password as it was.
func TestApplyFirstDelaySurvivesHangUp(t *testing.T) {
	t.Parallel()
	for _, applyFirst := range []bool{false, true} {
		t.Run(map[bool]string{false: "delay alone", true: "apply first"}[applyFirst], func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, withUserMgmt)
			tok := f.tokenFor(t, testApp, testClient, testSecret, "")
			f.emu.AddFaults(Fault{Endpoint: epChangePassword, Times: 2, Delay: time.Minute, ApplyFirst: applyFirst})

			// Directly, so the handler's return is observed: it comes back as soon as the
			// caller's context ends, with the change made or not.
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			req := httptest.NewRequestWithContext(ctx, http.MethodPost, changePath, strings.NewReader(changeBody(testSecret, newPass1)))
			req.Header.Set("Authorization", "Bearer "+tok)
			rec := serveAbandoned(t, f.emu, req)
			if rec.Body.Len() != 0 {
				t.Error("answered a caller that had left")
			}
			if got := f.emu.ClientSecretIs(testClient, newPass1); got != applyFirst {
				t.Fatalf("password changed: %v, want %v", got, applyFirst)
			}

			// Over the wire, with a client timeout.
			current := testSecret
			if applyFirst {
				current = newPass1
			}
			client := *f.srv.Client()
			client.Timeout = 200 * time.Millisecond
			wreq, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+changePath, strings.NewReader(changeBody(current, newPass2)))
			wreq.Header.Set("Authorization", "Bearer "+tok)
			if resp, err := client.Do(wreq); err == nil {
				resp.Body.Close()
				t.Fatal("answered through a one-minute delay")
			}
			if !applyFirst {
				if !f.emu.ClientSecretIs(testClient, testSecret) {
					t.Error("a request abandoned during its delay changed the password")
				}
				return
			}
			// The change was made before the delay began, so it is there by now or soon
			// (the server may still be finishing the request the client gave up on).
			deadline := time.Now().Add(10 * time.Second)
			for !f.emu.ClientSecretIs(testClient, newPass2) {
				if time.Now().After(deadline) {
					t.Fatal("the change to the second password never landed")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if st := f.emu.Stats(); st.PasswordChanges != 2 {
				t.Errorf("stats %+v, want 2 password changes", st)
			}
		})
	}
}

// ApplyFirst is not limited to the management APIs: a token can be issued to a caller
// that never hears of it.
func TestApplyFirstOnTokenEndpoint(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.emu.AddFaults(Fault{Endpoint: epToken, Times: 1, DropConnection: true, ApplyFirst: true})
	if resp, err := f.srv.Client().Do(mustRequest(t, f)); err == nil {
		resp.Body.Close()
		t.Fatal("dropped connection answered")
	}
	if st := f.emu.Stats(); st.Grants != 1 || len(f.emu.Issued()) != 1 {
		t.Errorf("stats %+v, issued %d; want the grant made", st, len(f.emu.Issued()))
	}
}

func TestManagementFaultBodies(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	send := func(path, body string) (int, http.Header, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		return do(t, f.srv.Client(), req)
	}
	tests := []struct {
		fault Fault
		check func(status int, body []byte) string // "" when fine
	}{
		{Fault{Endpoint: epChangePassword, Times: 1, Status: 200}, func(s int, b []byte) string {
			var a answer
			if s != 200 || json.Unmarshal(b, &a) != nil || a.Success || a.id() != "InjectedFault" || a.message() != "OK." {
				return "want a failed envelope"
			}
			return ""
		}},
		{Fault{Endpoint: epResetPassword, Times: 1, Status: 403}, func(s int, b []byte) string {
			var a answer
			if s != 403 || json.Unmarshal(b, &a) != nil || a.Success || a.message() != "Forbidden." {
				return "want a 403 envelope"
			}
			return ""
		}},
		{Fault{Endpoint: epChangePassword, Times: 1, Status: 503}, func(s int, b []byte) string {
			if s != 503 || !strings.Contains(string(b), "<title>503 Service Unavailable</title>") {
				return "want a proxy page"
			}
			return ""
		}},
		{Fault{Endpoint: epChangePassword, Times: 1, MalformedJSON: true}, func(s int, b []byte) string {
			if s != 200 || json.Valid(b) || !strings.HasPrefix(string(b), `{"success":true`) {
				return "want a truncated envelope"
			}
			return ""
		}},
		{Fault{Endpoint: epResetPassword, Times: 1, OversizeBytes: 2 << 20}, func(s int, b []byte) string {
			var a answer
			if s != 200 || len(b) < 2<<20 || json.Unmarshal(b, &a) != nil || !a.Success {
				return "want a padded success envelope"
			}
			return ""
		}},
		{Fault{Times: 1, Status: 500}, func(s int, _ []byte) string { // empty endpoint matches these too
			if s != 500 {
				return "want the catch-all fault"
			}
			return ""
		}},
	}
	for i, tc := range tests {
		f.emu.AddFaults(tc.fault)
		path := changePath
		if tc.fault.Endpoint == epResetPassword {
			path = resetPath
		}
		status, _, body := send(path, changeBody(testSecret, newPass1))
		checkNoPassword(t, body)
		if msg := tc.check(status, body); msg != "" {
			t.Errorf("fault %d: %s; got %d %.200s", i, msg, status, body)
		}
	}
	if !f.emu.ClientSecretIs(testClient, testSecret) {
		t.Error("a faulted request without ApplyFirst changed the password")
	}
}

// Concurrent changes from the same old password: exactly one wins, and the race
// detector sees the users' state under the lock.
func TestConcurrentPasswordChanges(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	candidates := []string{newPass1, newPass2, newPass3, newPass4}
	const perCandidate = 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	client := f.srv.Client()
	for i := range len(candidates) * perCandidate {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+changePath,
				strings.NewReader(changeBody(testSecret, candidates[i%len(candidates)])))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var a answer
			if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
				t.Error(err)
				return
			}
			if a.Success {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if a.id() != "OldPasswordIncorrect" && a.id() != "PasswordInHistory" {
				t.Errorf("unexpected refusal %s", a.id())
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 20 {
			_ = f.emu.ClientSecretIs(testClient, testSecret)
			_ = f.emu.Stats()
			_ = f.emu.Requests()
			grantDirect(f.emu)
		}
	}()
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d changes won from the same old password, want 1", wins)
	}
	if f.emu.ClientSecretIs(testClient, testSecret) {
		t.Error("the old password survived")
	}
}

// grantDirect asks for a token without a testing.T, for goroutines that race the
// management calls; its outcome does not matter.
func grantDirect(e *Emulator) {
	req := httptest.NewRequestWithContext(context.Background(), http.MethodPost, "/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", basicHeader(testClient, testSecret))
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
}

func TestClientSecretIs(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, tc := range []struct {
		label, id, secret string
		want              bool
	}{
		{"right secret", testClient, testSecret, true},
		{"wrong secret", testClient, testSecret + "x", false},
		{"prefix of the secret", testClient, testSecret[:3], false},
		{"empty secret", testClient, "", false},
		{"unknown client", "nobody", testSecret, false},
		{"other client's secret", limitedClient, testSecret, false},
	} {
		if got := f.emu.ClientSecretIs(tc.id, tc.secret); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.label, got, tc.want)
		}
	}
}

func TestPasswordPolicyValidate(t *testing.T) {
	t.Parallel()
	if err := DefaultPasswordPolicy().validate(); err != nil {
		t.Errorf("default policy: %v", err)
	}
	for _, p := range []PasswordPolicy{{MinLength: -1}, {MaxLength: -1}, {MinLength: 10, MaxLength: 9}} {
		if p.validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if !reflect.DeepEqual(DefaultPasswordPolicy(), PasswordPolicy{MinLength: 8, MaxLength: 64, RequireDigit: true, RequireUpper: true, RequireLower: true}) {
		t.Errorf("default policy %+v is not CyberArk's documented default", DefaultPasswordPolicy())
	}
}
