package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

var grantForm = url.Values{"grant_type": {"client_credentials"}}

func (f *fixture) grant(t *testing.T) (int, http.Header, []byte) {
	t.Helper()
	return f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, testSecret), grantForm)
}

func TestFaultReplacesAnswer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fault      Fault
		wantStatus int
		wantHeader map[string]string
		wantBody   string             // exact, when set
		check      func([]byte) error // further checks on the body
	}{
		{
			name:       "rate limited",
			fault:      Fault{Status: 429, RetryAfter: "2"},
			wantStatus: 429,
			wantHeader: map[string]string{"Retry-After": "2", "Content-Type": "application/json"},
			wantBody:   oauthBody("temporarily_unavailable", "too many requests"),
		},
		{
			name:       "401 default body",
			fault:      Fault{Status: 401},
			wantStatus: 401,
			wantBody:   oauthBody("invalid_client", "unauthorized"),
		},
		{
			name:       "front proxy 503",
			fault:      Fault{Status: 503, RetryAfter: "120"},
			wantStatus: 503,
			wantHeader: map[string]string{"Retry-After": "120", "Content-Type": "text/html"},
			check:      containsAll("<html>", "<title>503 Service Unavailable</title>"),
		},
		{
			name:       "custom body and content type",
			fault:      Fault{Status: 502, Body: "upstream gone", ContentType: "text/plain"},
			wantStatus: 502,
			wantHeader: map[string]string{"Content-Type": "text/plain"},
			wantBody:   "upstream gone",
		},
		{
			name:       "custom HTML body is sniffed",
			fault:      Fault{Status: 500, Body: "<html>oops</html>"},
			wantStatus: 500,
			wantHeader: map[string]string{"Content-Type": "text/html; charset=utf-8"},
			wantBody:   "<html>oops</html>",
		},
		{
			name:       "redirect",
			fault:      Fault{Status: 302, Location: "https://login.example/"},
			wantStatus: 302,
			wantHeader: map[string]string{"Location": "https://login.example/"},
			check:      containsAll("302 Found"),
		},
		{
			name:       "body alone is a 200",
			fault:      Fault{Body: `{"access_token":"x","token_type":"Bearer"}`},
			wantStatus: 200,
			wantHeader: map[string]string{"Content-Type": "application/json"},
			wantBody:   `{"access_token":"x","token_type":"Bearer"}`,
		},
		{
			name:       "malformed JSON",
			fault:      Fault{MalformedJSON: true},
			wantStatus: 200,
			wantHeader: map[string]string{"Content-Type": "application/json"},
			check: func(b []byte) error {
				var v any
				if json.Unmarshal(b, &v) == nil {
					return fmt.Errorf("body parses: %s", b)
				}
				if !strings.HasPrefix(string(b), `{"access_token":`) {
					return fmt.Errorf("body does not look like a token response: %s", b)
				}
				return nil
			},
		},
		{
			name:       "malformed JSON with a status",
			fault:      Fault{Status: 400, MalformedJSON: true},
			wantStatus: 400,
			check: func(b []byte) error {
				if json.Valid(b) {
					return errors.New("body is valid JSON")
				}
				return nil
			},
		},
		{
			name:       "oversize",
			fault:      Fault{OversizeBytes: 2 << 20},
			wantStatus: 200,
			wantHeader: map[string]string{"Content-Type": "application/json"},
			check: func(b []byte) error {
				if len(b) < 2<<20 {
					return fmt.Errorf("body is %d bytes, want at least %d", len(b), 2<<20)
				}
				var v map[string]any
				if err := json.Unmarshal(b, &v); err != nil {
					return fmt.Errorf("oversize body is not valid JSON: %w", err)
				}
				if v["token_type"] != "Bearer" {
					return errors.New("oversize body lacks token fields")
				}
				return nil
			},
		},
		{
			name:       "status out of range becomes 500",
			fault:      Fault{Status: 99},
			wantStatus: 500,
			check:      containsAll("500 Internal Server Error"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, nil)
			f.emu.AddFaults(tc.fault)
			noRedirect := *f.srv.Client()
			noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basicHeader(testClient, testSecret))
			status, hdr, body := do(t, &noRedirect, req)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %.200s", status, tc.wantStatus, body)
			}
			for k, v := range tc.wantHeader {
				if got := hdr.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tc.wantBody != "" && string(body) != tc.wantBody {
				t.Errorf("body %s\nwant %s", body, tc.wantBody)
			}
			if tc.check != nil {
				if err := tc.check(body); err != nil {
					t.Error(err)
				}
			}
			want := Stats{TokenRequests: 1, FaultsServed: 1}
			if st := f.emu.Stats(); st != want {
				t.Errorf("stats %+v, want %+v", st, want)
			}
			if len(f.emu.Requests()) != 1 || len(f.emu.Issued()) != 0 {
				t.Errorf("recorded %d requests and %d tokens, want 1 and 0", len(f.emu.Requests()), len(f.emu.Issued()))
			}
			// Times 0 keeps the fault: the next request is faulted too.
			if status, _, _ := do(t, &noRedirect, mustRequest(t, f)); status != tc.wantStatus {
				t.Errorf("second request: status %d, want the fault's %d", status, tc.wantStatus)
			}
		})
	}
}

func mustRequest(t *testing.T, f *fixture) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", basicHeader(testClient, testSecret))
	return req
}

func containsAll(parts ...string) func([]byte) error {
	return func(b []byte) error {
		for _, p := range parts {
			if !strings.Contains(string(b), p) {
				return fmt.Errorf("body lacks %q: %s", p, b)
			}
		}
		return nil
	}
}

func TestFaultDelayServesRealAnswer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	const delay = 300 * time.Millisecond
	f.emu.AddFaults(Fault{Endpoint: "token", Times: 1, Delay: delay, RetryAfter: "7"})
	start := time.Now()
	status, hdr, body := f.grant(t)
	elapsed := time.Since(start)
	if status != http.StatusOK || !strings.Contains(string(body), "access_token") {
		t.Fatalf("delayed request: %d %s", status, body)
	}
	if elapsed < delay {
		t.Errorf("answered after %v, before the %v delay", elapsed, delay)
	}
	if hdr.Get("Retry-After") != "7" {
		t.Errorf("Retry-After %q on the real answer", hdr.Get("Retry-After"))
	}
	want := Stats{TokenRequests: 1, Grants: 1, FaultsServed: 1}
	if st := f.emu.Stats(); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	if status, _, _ := f.grant(t); status != 200 || f.emu.Stats().FaultsServed != 1 {
		t.Errorf("Times 1 fault applied twice (status %d, stats %+v)", status, f.emu.Stats())
	}
}

func TestFaultDelayHonoursContext(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.emu.AddFaults(Fault{Delay: time.Minute})

	// Directly: the handler returns as soon as the request context ends, answering nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", basicHeader(testClient, testSecret))
	rec := serveAbandoned(t, f.emu, req)
	if rec.Body.Len() != 0 || len(f.emu.Issued()) != 0 {
		t.Errorf("answered a departed client: %q", rec.Body.String())
	}

	// Over the wire: a client timeout ends the wait too.
	client := *f.srv.Client()
	client.Timeout = 100 * time.Millisecond
	start := time.Now()
	if resp, err := client.Do(mustRequest(t, f)); err == nil {
		resp.Body.Close()
		t.Fatal("request succeeded through a one-minute delay")
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("client waited %v", time.Since(start))
	}
	if st := f.emu.Stats(); st.Grants != 0 || st.FaultsServed != 2 || st.TokenRequests != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestFaultDropConnection(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.emu.AddFaults(Fault{Endpoint: "token", Times: 1, DropConnection: true})
	resp, err := f.srv.Client().Do(mustRequest(t, f))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("dropped connection answered %d", resp.StatusCode)
	}
	if status, _, body := f.grant(t); status != 200 {
		t.Fatalf("after the drop: %d %s", status, body)
	}
	want := Stats{TokenRequests: 2, Grants: 1, FaultsServed: 1}
	if st := f.emu.Stats(); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	if n := len(f.emu.Requests()); n != 2 {
		t.Errorf("recorded %d requests, want the dropped one too", n)
	}
}

func TestFaultQueueOrderAndTimes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.emu.AddFaults(
		Fault{Endpoint: "revoke", Times: 1, Status: 418},
		Fault{Endpoint: "Token", Times: 1, Status: 500},
		Fault{Endpoint: "token", Times: 2, Status: 503},
		Fault{Endpoint: "introspect", Status: 504},
	)
	var got []int
	for range 4 {
		status, _, _ := f.grant(t)
		got = append(got, status)
	}
	if want := []int{500, 503, 503, 200}; !reflect.DeepEqual(got, want) {
		t.Errorf("token statuses %v, want %v", got, want)
	}
	auth := basicHeader(testClient, testSecret)
	revoke := func() int {
		s, _, _ := f.post(t, "/oauth2/revoke/"+testApp, auth, url.Values{"token": {"x"}})
		return s
	}
	introspect := func() int {
		s, _, _ := f.post(t, "/oauth2/introspect/"+testApp, auth, url.Values{"token": {"x"}})
		return s
	}
	if s1, s2 := revoke(), revoke(); s1 != 418 || s2 != 200 {
		t.Errorf("revoke statuses %d, %d, want 418, 200", s1, s2)
	}
	for range 3 {
		if s := introspect(); s != 504 {
			t.Errorf("permanent introspect fault: status %d", s)
		}
	}
	if s, _, _ := f.get(t, "/oauth2/keys/"+testApp); s != 200 {
		t.Errorf("keys faulted by another endpoint's fault: %d", s)
	}
	f.emu.ClearFaults()
	if s := introspect(); s != 200 {
		t.Errorf("after ClearFaults: %d", s)
	}
	want := Stats{TokenRequests: 4, Grants: 1, RevokeRequests: 2, Revocations: 1, Introspections: 4, FaultsServed: 7}
	if st := f.emu.Stats(); st != want {
		t.Errorf("stats %+v\nwant  %+v", st, want)
	}
}

func TestFaultAnyEndpoint(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.emu.AddFaults(Fault{Times: 3, Status: 500})
	if s, _, _ := f.get(t, "/_emulator/stats"); s != 200 {
		t.Errorf("control endpoint faulted: %d", s)
	}
	if s, _, _ := f.get(t, "/oauth2/keys/"+testApp); s != 500 {
		t.Errorf("keys: %d", s)
	}
	if s, _, _ := f.post(t, "/oauth2/revoke/"+testApp, "", nil); s != 500 {
		t.Errorf("revoke: %d", s)
	}
	if s, _, _ := f.grant(t); s != 500 {
		t.Errorf("token: %d", s)
	}
	if s, _, _ := f.grant(t); s != 200 {
		t.Errorf("fault outlived its Times: %d", s)
	}
}

func TestFaultJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Fault
		wantErr bool
	}{
		{in: `{"delay":"2s"}`, want: Fault{Delay: 2 * time.Second}},
		{in: `{"delay":1500000000}`, want: Fault{Delay: 1500 * time.Millisecond}},
		{in: `{"delay":null,"status":429}`, want: Fault{Status: 429}},
		{in: `{"delay":""}`, want: Fault{}},
		{in: `{"endpoint":"token","times":2,"status":503,"retry_after":"2","location":"/x","body":"b","content_type":"t",` +
			`"malformed_json":true,"oversize_bytes":5,"drop_connection":true,"delay":"250ms","apply_first":true}`,
			want: Fault{Endpoint: "token", Times: 2, Status: 503, RetryAfter: "2", Location: "/x", Body: "b", ContentType: "t",
				MalformedJSON: true, OversizeBytes: 5, DropConnection: true, Delay: 250 * time.Millisecond, ApplyFirst: true}},
		{in: `{"endpoint":"change_password","apply_first":true,"drop_connection":true}`,
			want: Fault{Endpoint: "change_password", ApplyFirst: true, DropConnection: true}},
		{in: `{"delay":"soon"}`, wantErr: true},
		{in: `{"delay":"-1s"}`, wantErr: true},
		{in: `{"delay":1.5}`, wantErr: true},
		{in: `{"stauts":500}`, wantErr: true},
	}
	for _, tc := range tests {
		var got Fault
		err := json.Unmarshal([]byte(tc.in), &got)
		if tc.wantErr {
			if err == nil {
				t.Errorf("%s: no error", tc.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.in, got, tc.want)
		}
		out, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		var back Fault
		if err := json.Unmarshal(out, &back); err != nil || back != got {
			t.Errorf("round trip %s -> %s -> %+v (%v)", tc.in, out, back, err)
		}
	}
	out, _ := json.Marshal(Fault{Delay: 2 * time.Second})
	if !strings.Contains(string(out), `"delay":"2s"`) {
		t.Errorf("delay marshals as %s", out)
	}
}

// serveAbandoned serves req, whose context ends while the handler sleeps in a Delay, and
// fails the test if the handler keeps sleeping after the caller has gone.
func serveAbandoned(t *testing.T, emu *Emulator, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		emu.ServeHTTP(rec, req)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("handler kept sleeping after the caller went away")
	}
	return rec
}
