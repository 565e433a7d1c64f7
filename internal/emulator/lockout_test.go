package emulator

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var lockedBody = oauthBody("access_denied", "user is locked out")

// withLockout sets a lockout policy on the test config.
func withLockout(p LockoutPolicy) func(*Config) {
	return func(c *Config) { c.Lockout = &p }
}

// tokenAnswer asks for a token at app with Basic credentials.
func (f *fixture) tokenAnswer(t *testing.T, app, id, secret string) (int, string) {
	t.Helper()
	status, _, body := f.post(t, "/oauth2/token/"+app, basicHeader(id, secret), grantForm)
	return status, string(body)
}

func TestLockout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLockout(LockoutPolicy{Threshold: 3, Window: 10 * time.Minute, Duration: 15 * time.Minute}))
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")

	for i := range 2 {
		if status, body := f.tokenAnswer(t, testApp, testClient, "wrong"); status != 400 ||
			body != oauthBody("access_denied", "invalid client creds or client not allowed") {
			t.Fatalf("wrong secret %d: %d %s", i+1, status, body)
		}
		f.clock.Advance(time.Minute)
	}
	if f.emu.Locked(testClient) {
		t.Fatal("locked below the threshold")
	}
	if status, body := f.tokenAnswer(t, testApp, testClient, testSecret); status != 200 {
		t.Fatalf("right secret below the threshold: %d %s", status, body)
	}
	// The third failure is at the token endpoint's neighbour: revoke authenticates too.
	if status, _, body := f.post(t, "/oauth2/revoke/"+testApp, basicHeader(testClient, "wrong"), url.Values{"token": {tok}}); status != 400 ||
		string(body) != oauthBody("access_denied", "invalid client creds or client not allowed") {
		t.Fatalf("third failure, at revoke: %d %s", status, body)
	}
	if !f.emu.Locked(testClient) {
		t.Fatal("not locked after the third failure")
	}
	lockedAt := f.clock.Now()

	// Locked: the right secret is refused, at every app that lists the user and at every
	// endpoint that authenticates it. A wrong one gets the same answer.
	refusals := 0
	for _, app := range []string{testApp, overrideApp, basicOnlyApp} {
		if status, body := f.tokenAnswer(t, app, testClient, testSecret); status != 400 || body != lockedBody {
			t.Errorf("%s, right secret while locked: %d %s", app, status, body)
		}
		refusals++
	}
	if status, body := f.tokenAnswer(t, testApp, testClient, "wrong"); status != 400 || body != lockedBody {
		t.Errorf("wrong secret while locked: %d %s", status, body)
	}
	refusals++
	for _, ep := range []string{"/oauth2/revoke/", "/oauth2/introspect/"} {
		if status, _, body := f.post(t, ep+testApp, basicHeader(testClient, testSecret), url.Values{"token": {tok}}); status != 400 || string(body) != lockedBody {
			t.Errorf("%s while locked: %d %s", ep, status, body)
		}
		refusals++
	}
	// client_secret_post is the same user.
	if status, _, body := f.post(t, "/oauth2/token/"+postOnlyApp, "", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {testClient}, "client_secret": {testSecret},
	}); status != 400 || string(body) != lockedBody {
		t.Errorf("post auth while locked: %d %s", status, body)
	}
	refusals++
	// Another user is not locked.
	if status, body := f.tokenAnswer(t, testApp, limitedClient, limitedSecret); status != 200 {
		t.Errorf("another client while one is locked: %d %s", status, body)
	}
	// Tokens issued before the lock still work: the lock is on authentication.
	if status, _, body := f.post(t, "/oauth2/introspect/"+testApp, basicHeader(limitedClient, limitedSecret), url.Values{"token": {tok}}); status != 200 {
		t.Errorf("introspect by another client: %d %s", status, body)
	}

	// Refusals while locked do not extend the lock: it ends Duration after it began.
	f.clock.Advance(15*time.Minute - time.Second - f.clock.Now().Sub(lockedAt))
	if status, body := f.tokenAnswer(t, testApp, testClient, testSecret); status != 400 || body != lockedBody {
		t.Errorf("a second before the lock ends: %d %s", status, body)
	}
	refusals++
	f.clock.Advance(time.Second)
	if f.emu.Locked(testClient) {
		t.Fatal("still locked after Duration")
	}
	if status, body := f.tokenAnswer(t, testApp, testClient, testSecret); status != 200 {
		t.Fatalf("right secret after the lock: %d %s", status, body)
	}
	// The failures before the lock are forgotten: two more do not lock again.
	for range 2 {
		f.tokenAnswer(t, testApp, testClient, "wrong")
	}
	if f.emu.Locked(testClient) {
		t.Error("locked again by failures that started before the lock")
	}

	st := f.emu.Stats()
	if want := int64(3 + refusals + 2); st.FailedLogins != want || st.Lockouts != 1 {
		t.Errorf("failed logins %d, lockouts %d; want %d and 1", st.FailedLogins, st.Lockouts, want)
	}
	cs := f.emu.ClientStats(testClient)
	if cs.FailedLogins != st.FailedLogins || cs.Lockouts != 1 {
		t.Errorf("client stats %+v", cs)
	}
	if cs := f.emu.ClientStats(limitedClient); cs.FailedLogins != 0 || cs.Lockouts != 0 || cs.Grants != 1 {
		t.Errorf("other client's stats %+v", cs)
	}
}

func TestLockoutWindow(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLockout(LockoutPolicy{Threshold: 2, Window: time.Minute}))
	f.tokenAnswer(t, testApp, testClient, "wrong")
	f.clock.Advance(time.Minute) // the first failure is now exactly Window old: it no longer counts
	f.tokenAnswer(t, testApp, testClient, "wrong")
	if f.emu.Locked(testClient) {
		t.Fatal("a failure older than the window counted")
	}
	f.clock.Advance(59 * time.Second)
	f.tokenAnswer(t, testApp, testClient, "wrong")
	if !f.emu.Locked(testClient) {
		t.Fatal("two failures within the window did not lock")
	}
	// Duration 0: locked until unlocked.
	f.clock.Advance(30 * 24 * time.Hour)
	if status, body := f.tokenAnswer(t, testApp, testClient, testSecret); status != 400 || body != lockedBody {
		t.Fatalf("a month later: %d %s", status, body)
	}
	f.emu.Unlock(testClient)
	if f.emu.Locked(testClient) {
		t.Fatal("Unlock left the user locked")
	}
	if status, body := f.tokenAnswer(t, testApp, testClient, testSecret); status != 200 {
		t.Fatalf("after Unlock: %d %s", status, body)
	}
	// Unlock forgot the failures too.
	f.tokenAnswer(t, testApp, testClient, "wrong")
	if f.emu.Locked(testClient) {
		t.Error("locked by one failure after Unlock")
	}
	f.emu.Unlock("nobody") // unknown clients are ignored
	if f.emu.Locked("nobody") {
		t.Error("an unknown client is locked")
	}
	if st := f.emu.Stats(); st.Lockouts != 1 || st.FailedLogins != 5 {
		t.Errorf("stats %+v", st)
	}
}

// A window of 0 keeps every failure since the last lock or unlock.
func TestLockoutWithoutWindow(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLockout(LockoutPolicy{Threshold: 2, Duration: time.Hour}))
	f.tokenAnswer(t, testApp, testClient, "wrong")
	f.clock.Advance(365 * 24 * time.Hour)
	f.tokenAnswer(t, testApp, testClient, "wrong")
	if !f.emu.Locked(testClient) {
		t.Fatal("without a window, old failures must count")
	}
}

func TestLockoutResetOnSuccess(t *testing.T) {
	t.Parallel()
	for _, reset := range []bool{false, true} {
		t.Run(map[bool]string{false: "every failure counts", true: "consecutive failures"}[reset], func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, withLockout(LockoutPolicy{Threshold: 2, Window: time.Hour, ResetOnSuccess: reset}))
			f.tokenAnswer(t, testApp, testClient, "wrong")
			if status, _ := f.tokenAnswer(t, testApp, testClient, testSecret); status != 200 {
				t.Fatalf("right secret: %d", status)
			}
			f.tokenAnswer(t, testApp, testClient, "wrong")
			if got := f.emu.Locked(testClient); got == reset {
				t.Errorf("locked %v, want %v", got, !reset)
			}
		})
	}
}

// Without a lockout policy nobody is locked, but failed logins are still counted; an
// unknown client ID or a refused auth mode is not a failed login of anyone.
func TestFailedLoginsWithoutLockout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for range 10 {
		f.tokenAnswer(t, testApp, testClient, "wrong")
	}
	if f.emu.Locked(testClient) {
		t.Fatal("locked without a lockout policy")
	}
	if status, _ := f.tokenAnswer(t, testApp, testClient, testSecret); status != 200 {
		t.Fatalf("right secret: %d", status)
	}
	f.tokenAnswer(t, testApp, "ghost@example.cyberark.cloud", "wrong")
	f.tokenAnswer(t, postOnlyApp, testClient, "wrong") // Basic at a post-only app
	f.post(t, "/oauth2/token/"+testApp, "", grantForm)
	st := f.emu.Stats()
	if st.FailedLogins != 10 || st.Lockouts != 0 || st.TokenErrors != 13 {
		t.Errorf("stats %+v", st)
	}
}

// With a lockout, a burst of concurrent wrong secrets locks the user exactly once.
func TestLockoutConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLockout(LockoutPolicy{Threshold: 5, Window: time.Hour}))
	done := make(chan struct{})
	for range 20 {
		go func() {
			defer func() { done <- struct{}{} }()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basicHeader(testClient, "wrong"))
			if resp, err := f.srv.Client().Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	for range 20 {
		<-done
	}
	if st := f.emu.Stats(); st.Lockouts != 1 || st.FailedLogins != 20 || !f.emu.Locked(testClient) {
		t.Errorf("stats %+v, locked %v", st, f.emu.Locked(testClient))
	}
}

func TestLockoutPolicyConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	load := func(lockout string) (Config, error) {
		t.Helper()
		path := filepath.Join(dir, "cfg.json")
		doc := `{"apps":[{"id":"a","clients":[{"id":"c","secret":"s"}]}],"ignore_old_password":true,"lockout":` + lockout + `}`
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return LoadConfig(path)
	}
	cfg, err := load(`{"threshold":3,"window":"10m","duration":900000000000,"reset_on_success":true}`)
	if err != nil {
		t.Fatal(err)
	}
	want := LockoutPolicy{Threshold: 3, Window: 10 * time.Minute, Duration: 15 * time.Minute, ResetOnSuccess: true}
	if cfg.Lockout == nil || *cfg.Lockout != want || !cfg.IgnoreOldPassword {
		t.Fatalf("loaded %+v, ignore_old_password %v", cfg.Lockout, cfg.IgnoreOldPassword)
	}
	if _, err := New(cfg); err != nil {
		t.Fatalf("New: %v", err)
	}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"threshold":3,"reset_on_success":true,"window":"10m0s","duration":"15m0s"}` {
		t.Errorf("marshalled as %s", b)
	}
	var back LockoutPolicy
	if err := json.Unmarshal(b, &back); err != nil || back != want {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	for _, bad := range []string{`{"threshold":3,"windw":"1m"}`, `{"threshold":3,"window":"soon"}`, `{"threshold":3,"duration":"-1m"}`} {
		if _, err := load(bad); err == nil {
			t.Errorf("lockout %s loaded", bad)
		}
	}
	for _, p := range []LockoutPolicy{{}, {Threshold: -1}, {Threshold: 1, Window: -1}, {Threshold: 1, Duration: -1}} {
		c := testConfig()
		c.Lockout = &p
		if _, err := New(c); err == nil {
			t.Errorf("New accepted lockout %+v", p)
		}
	}
	// New keeps its own copy: changing the policy afterwards changes nothing.
	c := testConfig()
	c.Lockout = &LockoutPolicy{Threshold: 1}
	emu, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	c.Lockout.Threshold = 100
	if emu.lockout.Threshold != 1 {
		t.Error("New kept the caller's policy")
	}
}

func TestSetClock(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	at := f.clock.Now().Unix()
	f.token(t, nil)
	if got := f.emu.Requests()[0].Time.Unix(); got != at {
		t.Errorf("request time %d, want the fake clock's %d", got, at)
	}
	f.emu.SetClock(nil)
	f.token(t, nil)
	if got := f.emu.Requests()[1].Time; time.Since(got) > time.Minute || time.Since(got) < 0 {
		t.Errorf("SetClock(nil) left the clock at %v", got)
	}
}

func TestClientStats(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.grant(t)
	f.tokenAnswer(t, testApp, testClient, "wrong")
	f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, testSecret), url.Values{"grant_type": {"password"}})
	f.tokenAnswer(t, testApp, limitedClient, limitedSecret)
	f.tokenAnswer(t, testApp, "ghost@example.cyberark.cloud", "x")
	f.post(t, "/oauth2/token/"+testApp, "", grantForm) // attributed to no one
	f.emu.AddFaults(Fault{Endpoint: epToken, Times: 1, Status: 503})
	f.grant(t) // faulted: a request, not an error of the tenant's

	for id, want := range map[string]ClientStats{
		testClient:                     {TokenRequests: 4, Grants: 1, TokenErrors: 2, FailedLogins: 1},
		limitedClient:                  {TokenRequests: 1, Grants: 1},
		"ghost@example.cyberark.cloud": {TokenRequests: 1, TokenErrors: 1},
		"never-seen":                   {},
	} {
		if got := f.emu.ClientStats(id); got != want {
			t.Errorf("%s: %+v, want %+v", id, got, want)
		}
	}
	if st := f.emu.Stats(); st.TokenRequests != 7 || st.TokenErrors != 4 {
		t.Errorf("stats %+v", st)
	}
	f.emu.Reset()
	if got := f.emu.ClientStats(testClient); got != (ClientStats{}) {
		t.Errorf("after Reset: %+v", got)
	}
}

// Reset lifts locks: a new scenario starts with nobody locked.
func TestResetUnlocks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLockout(LockoutPolicy{Threshold: 1}))
	f.tokenAnswer(t, testApp, testClient, "wrong")
	if !f.emu.Locked(testClient) {
		t.Fatal("not locked")
	}
	f.emu.Reset()
	if f.emu.Locked(testClient) {
		t.Error("locked after Reset")
	}
}
