package emulator

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// control sends a control request with a raw JSON body.
func (f *fixture) control(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	status, _, respBody := do(t, f.srv.Client(), req)
	if strings.Contains(string(respBody), testSecret) || strings.Contains(string(respBody), limitedSecret) {
		t.Errorf("%s %s echoes a client secret", method, path)
	}
	return status, respBody
}

func TestControlStats(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.grant(t)
	f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, "bad"), grantForm)
	status, body := f.control(t, http.MethodGet, "/_emulator/stats", "")
	if status != http.StatusOK {
		t.Fatalf("%d %s", status, body)
	}
	var got Stats
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	want := Stats{TokenRequests: 2, Grants: 1, TokenErrors: 1, FailedLogins: 1}
	if got != want || got != f.emu.Stats() {
		t.Errorf("stats %+v (%s), want %+v", got, body, want)
	}
	if !strings.Contains(string(body), `"token_requests":2`) {
		t.Errorf("stats JSON names: %s", body)
	}
}

func TestControlFaults(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	status, body := f.control(t, http.MethodPost, "/_emulator/faults",
		`[{"endpoint":"token","times":1,"status":429,"retry_after":"3"},{"endpoint":"token","times":1,"delay":"10ms","status":503}]`)
	if status != http.StatusOK || string(body) != `{"queued":2}` {
		t.Fatalf("post faults: %d %s", status, body)
	}
	if status, body := f.control(t, http.MethodPost, "/_Emulator/Faults/", `{"endpoint":"revoke","status":500}`); status != 200 || string(body) != `{"queued":3}` {
		t.Fatalf("post one fault: %d %s", status, body)
	}
	s1, hdr, _ := f.grant(t)
	s2, _, _ := f.grant(t)
	s3, _, _ := f.grant(t)
	if s1 != 429 || hdr.Get("Retry-After") != "3" || s2 != 503 || s3 != 200 {
		t.Errorf("statuses %d (Retry-After %q), %d, %d; want 429 (3), 503, 200", s1, hdr.Get("Retry-After"), s2, s3)
	}
	if status, body := f.control(t, http.MethodDelete, "/_emulator/faults", ""); status != 200 || string(body) != `{"queued":0}` {
		t.Fatalf("delete faults: %d %s", status, body)
	}
	if s, _, _ := f.post(t, "/oauth2/revoke/"+testApp, basicHeader(testClient, testSecret), url.Values{"token": {"x"}}); s != 200 {
		t.Errorf("revoke after DELETE: %d", s)
	}

	f.control(t, http.MethodDelete, "/_emulator/faults", "")
	status, body = f.control(t, http.MethodPost, "/_emulator/faults",
		`[{"endpoint":"change_password","times":1,"apply_first":true,"drop_connection":true},{"endpoint":"Reset_Password","status":503}]`)
	if status != http.StatusOK || string(body) != `{"queued":2}` {
		t.Fatalf("post management faults: %d %s", status, body)
	}
	f.control(t, http.MethodDelete, "/_emulator/faults", "")

	bad := []string{
		``,
		`[{"endpoint":"change-password"}]`,
		`[{"endpoint":"usermgmt"}]`,
		`[{"apply_first":"yes"}]`,
		`[]`,
		`[{"status":500},{"stauts":500}]`,
		`[{"endpoint":"tokens"}]`,
		`[{"times":-1}]`,
		`[{"status":700}]`,
		`[{"oversize_bytes":-5}]`,
		`[{"retry_after":"1\r\nX-Evil: 1"}]`,
		`[{"delay":"forever"}]`,
		`[{"status":500}] trailing`,
	}
	for _, b := range bad {
		status, body := f.control(t, http.MethodPost, "/_emulator/faults", b)
		if status != http.StatusBadRequest || !strings.Contains(string(body), `"error"`) {
			t.Errorf("%q: %d %s, want 400", b, status, body)
		}
	}
	// A rejected batch queues nothing, not even its valid part.
	if s, _, _ := f.grant(t); s != 200 {
		t.Errorf("a rejected batch left a fault: %d", s)
	}
}

func TestControlExpiresIn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	if status, body := f.control(t, http.MethodPost, "/_emulator/expires_in", `{"expires_in":5}`); status != 200 || string(body) != `{"expires_in":5}` {
		t.Fatalf("%d %s", status, body)
	}
	if got := f.token(t, nil)["expires_in"]; got != float64(5) {
		t.Errorf("expires_in %v, want 5", got)
	}
	if status, body := f.control(t, http.MethodPost, "/_emulator/expires_in", `{"expires_in":0}`); status != 200 || string(body) != `{"expires_in":18000}` {
		t.Errorf("zero: %d %s", status, body)
	}
	for _, b := range []string{`{"expires_in":-1}`, `{}`, `{"expires":5}`, `{"expires_in":"5"}`, `nope`} {
		if status, body := f.control(t, http.MethodPost, "/_emulator/expires_in", b); status != 400 {
			t.Errorf("%s: %d %s, want 400", b, status, body)
		}
	}
}

func TestControlReset(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.grant(t)
	f.emu.AddFaults(Fault{Status: 500})
	if status, body := f.control(t, http.MethodPost, "/_emulator/reset", ""); status != 200 || string(body) != "{}" {
		t.Fatalf("%d %s", status, body)
	}
	if st := f.emu.Stats(); st != (Stats{}) {
		t.Errorf("stats after reset %+v", st)
	}
	if len(f.emu.Requests()) != 0 || len(f.emu.Issued()) != 0 {
		t.Error("reset left requests or issued tokens")
	}
	if s, _, _ := f.grant(t); s != 200 {
		t.Errorf("fault survived reset: %d", s)
	}
}

func TestControlMethodsAndPaths(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	tests := []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/_emulator/stats", 405},
		{http.MethodGet, "/_emulator/faults", 405},
		{http.MethodGet, "/_emulator/reset", 405},
		{http.MethodGet, "/_emulator/expires_in", 405},
		{http.MethodPost, "/_emulator/locked?client_id=" + testClient, 405},
		{http.MethodGet, "/_emulator/unlock", 405},
		{http.MethodGet, "/_emulator/client_secret", 405},
		{http.MethodPost, "/_emulator/client_stats?client_id=" + testClient, 405},
		{http.MethodPut, "/_emulator/held_changes", 405},
		{http.MethodGet, "/_emulator/held_changes/land", 405},
		{http.MethodGet, "/_emulator/config", 404},
		{http.MethodGet, "/_emulator/", 404},
	}
	for _, tc := range tests {
		if status, body := f.control(t, tc.method, tc.path, ""); status != tc.want {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, status, body, tc.want)
		}
	}
	if n := len(f.emu.Requests()); n != 0 {
		t.Errorf("control requests recorded as tenant traffic: %d", n)
	}
}

func TestControlLockout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLockout(LockoutPolicy{Threshold: 1}))
	lockedPath := "/_emulator/locked?client_id=" + url.QueryEscape(testClient)
	if status, body := f.control(t, http.MethodGet, lockedPath, ""); status != 200 || string(body) != `{"locked":false}` {
		t.Fatalf("before: %d %s", status, body)
	}
	f.tokenAnswer(t, testApp, testClient, "wrong")
	if status, body := f.control(t, http.MethodGet, lockedPath, ""); status != 200 || string(body) != `{"locked":true}` {
		t.Fatalf("locked: %d %s", status, body)
	}
	if status, body := f.control(t, http.MethodPost, "/_emulator/unlock", `{"client_id":"`+testClient+`"}`); status != 200 || string(body) != `{"locked":false}` {
		t.Fatalf("unlock: %d %s", status, body)
	}
	if f.emu.Locked(testClient) {
		t.Fatal("still locked after the unlock call")
	}
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{http.MethodGet, "/_emulator/locked", "", 400},
		{http.MethodGet, "/_emulator/locked?client_id=nobody", "", 404},
		// Client IDs are matched exactly, even though control paths are not.
		{http.MethodGet, "/_emulator/locked?client_id=" + url.QueryEscape(strings.ToUpper(testClient)), "", 404},
		{http.MethodPost, "/_emulator/unlock", `{"client_id":"nobody"}`, 404},
		{http.MethodPost, "/_emulator/unlock", `{}`, 400},
		{http.MethodPost, "/_emulator/unlock", `{"client":"x"}`, 400},
	} {
		if status, body := f.control(t, tc.method, tc.path, tc.body); status != tc.want {
			t.Errorf("%s %s %s: %d %s, want %d", tc.method, tc.path, tc.body, status, body, tc.want)
		}
	}
}

func TestControlClientSecret(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	const secret = "Out-Of-Band-Secret-1"
	status, body := f.control(t, http.MethodPost, "/_emulator/client_secret",
		`{"app_id":"`+testApp+`","client_id":"`+testClient+`","secret":"`+secret+`"}`)
	if status != 200 || string(body) != "{}" {
		t.Fatalf("%d %s", status, body)
	}
	if !f.emu.ClientSecretIs(testClient, secret) {
		t.Fatal("the secret did not change")
	}
	if st := f.emu.Stats(); st.OutOfBandChanges != 1 || st.PasswordChanges != 0 || st.ManagementRequests != 0 {
		t.Errorf("stats %+v", st)
	}
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"app_id":"nope","client_id":"` + testClient + `","secret":"S3cret-x"}`, 404},
		{`{"app_id":"` + testApp + `","client_id":"nobody","secret":"S3cret-x"}`, 404},
		{`{"app_id":"` + testApp + `","client_id":"` + testClient + `"}`, 400},
		{`{"app_id":"` + testApp + `","client_id":"` + testClient + `","secret":"S3cret-x","extra":1}`, 400},
	} {
		status, body := f.control(t, http.MethodPost, "/_emulator/client_secret", tc.body)
		if status != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.body, status, body, tc.want)
		}
		if strings.Contains(string(body), "S3cret-x") {
			t.Errorf("%s: the answer echoes the secret", tc.body)
		}
	}
	if !f.emu.ClientSecretIs(testClient, secret) {
		t.Error("a refused call changed the secret")
	}
}

func TestControlHeldChanges(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	if status, body := f.control(t, http.MethodPost, "/_emulator/faults", `{"endpoint":"change_password","times":2,"hold":true}`); status != 200 {
		t.Fatalf("queue hold: %d %s", status, body)
	}
	f.sendChange(t, tok, changeBody(testSecret, newPass1))
	if status, body := f.control(t, http.MethodGet, "/_emulator/held_changes", ""); status != 200 || string(body) != `{"held":1}` {
		t.Fatalf("count: %d %s", status, body)
	}
	if status, body := f.control(t, http.MethodPost, "/_emulator/held_changes/land", ""); status != 200 || string(body) != `{"landed":1}` {
		t.Fatalf("land: %d %s", status, body)
	}
	if !f.emu.ClientSecretIs(testClient, newPass1) {
		t.Fatal("the landed change is not in place")
	}
	f.sendChange(t, tok, changeBody(newPass1, newPass2))
	if status, body := f.control(t, http.MethodDelete, "/_emulator/held_changes", ""); status != 200 || string(body) != `{"discarded":1}` {
		t.Fatalf("discard: %d %s", status, body)
	}
	if !f.emu.ClientSecretIs(testClient, newPass1) || f.emu.HeldChanges() != 0 {
		t.Error("discarding changed the password or kept the change")
	}
	for _, bad := range []string{
		`{"endpoint":"token","hold":true}`,
		`{"hold":true}`,
		`{"endpoint":"change_password","hold":true,"apply_first":true}`,
	} {
		if status, body := f.control(t, http.MethodPost, "/_emulator/faults", bad); status != 400 {
			t.Errorf("%s: %d %s, want 400", bad, status, body)
		}
	}
}

func TestControlClientStats(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.grant(t)
	f.tokenAnswer(t, testApp, testClient, "wrong")
	status, body := f.control(t, http.MethodGet, "/_emulator/client_stats?client_id="+url.QueryEscape(testClient), "")
	if status != 200 || string(body) != `{"token_requests":2,"grants":1,"token_errors":1,"failed_logins":1,"lockouts":0}` {
		t.Fatalf("%d %s", status, body)
	}
	if status, body := f.control(t, http.MethodGet, "/_emulator/client_stats?client_id=someone-else", ""); status != 200 ||
		string(body) != `{"token_requests":0,"grants":0,"token_errors":0,"failed_logins":0,"lockouts":0}` {
		t.Errorf("unseen client: %d %s", status, body)
	}
	if status, body := f.control(t, http.MethodGet, "/_emulator/client_stats", ""); status != 400 {
		t.Errorf("without client_id: %d %s", status, body)
	}
}
