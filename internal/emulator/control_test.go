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
	want := Stats{TokenRequests: 2, Grants: 1, TokenErrors: 1}
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
