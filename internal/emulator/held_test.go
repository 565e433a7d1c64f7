package emulator

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// sendChange posts a ChangeUserPassword and reports whether any answer came back.
func (f *fixture) sendChange(t *testing.T, bearer, body string) (status int, answered bool) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+changePath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		return 0, false
	}
	resp.Body.Close()
	return resp.StatusCode, true
}

// holdOne queues a Hold fault for one change.
func (f *fixture) holdOne() {
	f.emu.AddFaults(Fault{Endpoint: epChangePassword, Times: 1, Hold: true})
}

func TestHoldAndLand(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	f.holdOne()
	if status, answered := f.sendChange(t, tok, changeBody(testSecret, newPass1)); answered {
		t.Fatalf("a held change was answered %d", status)
	}
	if n := f.emu.HeldChanges(); n != 1 {
		t.Fatalf("held %d, want 1", n)
	}
	f.wantSecret(t, testSecret, newPass1, "the old secret", "the held one")
	if st := f.emu.Stats(); st.PasswordChanges != 0 || st.ManagementRequests != 1 || st.FaultsServed != 1 {
		t.Errorf("stats before landing %+v", st)
	}
	// The token was checked when the change came in: revoking it now does not stop it.
	if status, _, body := f.post(t, "/oauth2/revoke/"+testApp, basicHeader(testClient, testSecret), url.Values{"token": {tok}}); status != 200 {
		t.Fatalf("revoke: %d %s", status, body)
	}
	if n := f.emu.LandHeldChanges(); n != 1 {
		t.Fatalf("landed %d, want 1", n)
	}
	f.wantSecret(t, newPass1, testSecret, "the landed secret", "the old one")
	if st := f.emu.Stats(); st.PasswordChanges != 1 {
		t.Errorf("stats after landing %+v", st)
	}
	if n := f.emu.HeldChanges(); n != 0 {
		t.Errorf("held %d after landing", n)
	}
	if n := f.emu.LandHeldChanges(); n != 0 {
		t.Errorf("landed %d twice", n)
	}
}

// The old password of a held change is checked when it lands, against the password
// then: an out-of-band change in between makes it fail, unless the tenant ignores the
// old password, in which case the late change overwrites the out-of-band one.
func TestHeldChangeAfterOutOfBandChange(t *testing.T) {
	t.Parallel()
	for _, ignoreOld := range []bool{false, true} {
		t.Run(map[bool]string{false: "old password checked", true: "old password ignored"}[ignoreOld], func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) { withUserMgmt(c); c.IgnoreOldPassword = ignoreOld })
			tok := f.tokenFor(t, testApp, testClient, testSecret, "")
			f.holdOne()
			f.sendChange(t, tok, changeBody(testSecret, newPass1))
			if err := f.emu.SetClientSecret(testApp, testClient, newPass2); err != nil {
				t.Fatal(err)
			}
			landed := f.emu.LandHeldChanges()
			if ignoreOld {
				if landed != 1 {
					t.Fatalf("landed %d, want 1", landed)
				}
				f.wantSecret(t, newPass1, newPass2, "the late change", "the out-of-band one")
			} else {
				if landed != 0 {
					t.Fatalf("landed %d, want 0", landed)
				}
				f.wantSecret(t, newPass2, newPass1, "the out-of-band change", "the stale held one")
			}
			st := f.emu.Stats()
			if st.OutOfBandChanges != 1 || st.PasswordChanges != int64(landed) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// Held changes land in order, each checked against what the one before left.
func TestHeldChangesLandInOrder(t *testing.T) {
	t.Parallel()
	t.Run("same old password twice", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, withUserMgmt)
		tok := f.tokenFor(t, testApp, testClient, testSecret, "")
		f.emu.AddFaults(Fault{Endpoint: epChangePassword, Times: 2, Hold: true})
		f.sendChange(t, tok, changeBody(testSecret, newPass1))
		f.sendChange(t, tok, changeBody(testSecret, newPass2))
		if n := f.emu.LandHeldChanges(); n != 1 {
			t.Fatalf("landed %d, want the first only", n)
		}
		f.wantSecret(t, newPass1, newPass2, "the first change", "the second")
	})
	t.Run("chained", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, withUserMgmt)
		tok := f.tokenFor(t, testApp, testClient, testSecret, "")
		f.emu.AddFaults(Fault{Endpoint: epChangePassword, Times: 2, Hold: true})
		f.sendChange(t, tok, changeBody(testSecret, newPass1))
		f.sendChange(t, tok, changeBody(newPass1, newPass2))
		if n := f.emu.LandHeldChanges(); n != 2 {
			t.Fatalf("landed %d, want 2", n)
		}
		f.wantSecret(t, newPass2, newPass1, "the second change", "the first")
	})
	t.Run("history at landing", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, func(c *Config) { withUserMgmt(c); c.IgnoreOldPassword = true })
		tok := f.tokenFor(t, testApp, testClient, testSecret, "")
		f.holdOne()
		f.sendChange(t, tok, changeBody(testSecret, newPass1))
		// The caller retries and this one goes through: the held change now repeats the
		// current password, which the history refuses.
		if status, _, a := f.manage(t, http.MethodPost, changePath, tok, changeBody(testSecret, newPass1)); status != 200 || !a.Success {
			t.Fatalf("retry: %d %s", status, a.id())
		}
		if n := f.emu.LandHeldChanges(); n != 0 {
			t.Fatalf("landed %d, want the history to refuse it", n)
		}
		if st := f.emu.Stats(); st.PasswordChanges != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestDiscardHeldChanges(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	f.holdOne()
	f.sendChange(t, tok, changeBody(testSecret, newPass1))
	if n := f.emu.DiscardHeldChanges(); n != 1 {
		t.Fatalf("discarded %d, want 1", n)
	}
	if n := f.emu.LandHeldChanges(); n != 0 {
		t.Fatalf("landed %d after discarding", n)
	}
	f.wantSecret(t, testSecret, newPass1, "the old secret", "the discarded one")

	// Reset discards too.
	f.holdOne()
	f.sendChange(t, tok, changeBody(testSecret, newPass1))
	f.emu.Reset()
	if n := f.emu.HeldChanges(); n != 0 {
		t.Errorf("held %d after Reset", n)
	}
}

// A request that fails the checks made on arrival is not held, and its caller hears
// nothing either; one whose fault answers gets that answer while the change waits.
func TestHoldVariants(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withUserMgmt)
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	for _, tc := range []struct{ name, bearer, body string }{
		{"no token", "", changeBody(testSecret, newPass1)},
		{"bad token", "not-a-token", changeBody(testSecret, newPass1)},
		{"bad body", tok, "{"},
		{"missing new password", tok, `{"oldPassword":"x"}`},
	} {
		f.holdOne()
		if status, answered := f.sendChange(t, tc.bearer, tc.body); answered {
			t.Errorf("%s: answered %d", tc.name, status)
		}
		if n := f.emu.HeldChanges(); n != 0 {
			t.Errorf("%s: held %d", tc.name, n)
		}
	}
	f.emu.AddFaults(Fault{Endpoint: epChangePassword, Times: 1, Hold: true, Status: http.StatusBadGateway})
	if status, answered := f.sendChange(t, tok, changeBody(testSecret, newPass1)); !answered || status != http.StatusBadGateway {
		t.Errorf("hold with a status: %d, answered %v", status, answered)
	}
	if n := f.emu.HeldChanges(); n != 1 {
		t.Errorf("held %d, want 1", n)
	}
	// A Hold fault queued for every endpoint (possible from Go, not from the control API)
	// holds nothing elsewhere.
	f.emu.AddFaults(Fault{Hold: true, Times: 1})
	if status, _, body := f.grant(t); status != 200 {
		t.Errorf("token under a hold fault: %d %s", status, body)
	}
}

func TestHoldFaultValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		fault Fault
		ok    bool
	}{
		{Fault{Endpoint: "change_password", Hold: true}, true},
		{Fault{Endpoint: "Change_Password", Hold: true, Delay: 1, Status: 502}, true},
		{Fault{Hold: true}, false},
		{Fault{Endpoint: "token", Hold: true}, false},
		{Fault{Endpoint: "reset_password", Hold: true}, false},
		{Fault{Endpoint: "change_password", Hold: true, ApplyFirst: true}, false},
	} {
		if err := tc.fault.validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.fault, err)
		}
	}
	var f Fault
	if err := json.Unmarshal([]byte(`{"endpoint":"change_password","hold":true}`), &f); err != nil || !f.Hold {
		t.Errorf("hold from JSON: %+v %v", f, err)
	}
}

func TestIgnoreOldPassword(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { withUserMgmt(c); c.IgnoreOldPassword = true })
	tok := f.tokenFor(t, testApp, testClient, testSecret, "")
	if status, _, a := f.manage(t, http.MethodPost, changePath, tok, changeBody("not the password", newPass1)); status != 200 || !a.Success {
		t.Fatalf("wrong old password: %d %s", status, a.id())
	}
	f.wantSecret(t, newPass1, testSecret, "the new secret", "the old one")
	for _, tc := range []struct{ name, body, wantID string }{
		{"missing old password", `{"newPassword":"` + newPass2 + `"}`, "MissingParameter"},
		{"policy", changeBody("x", "short"), "PasswordTooShort"},
		{"history", changeBody("x", newPass1), "PasswordInHistory"},
	} {
		if status, _, a := f.manage(t, http.MethodPost, changePath, tok, tc.body); status != 200 || a.Success || a.id() != tc.wantID {
			t.Errorf("%s: %d success=%v %s, want %s", tc.name, status, a.Success, a.id(), tc.wantID)
		}
	}
	// The token's scope still decides whether the call is allowed.
	readTok := f.tokenFor(t, testApp, testClient, newPass1, "read")
	if _, _, a := f.manage(t, http.MethodPost, changePath, readTok, changeBody("x", newPass2)); a.Success || a.id() != "ApiNotAllowedByScope" {
		t.Errorf("read scope: success=%v %s", a.Success, a.id())
	}
	if st := f.emu.Stats(); st.PasswordChanges != 1 {
		t.Errorf("stats %+v", st)
	}
}
