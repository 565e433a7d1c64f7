package cyberark

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The scenarios of the rotation review of 6f4f9f3 (shared/reviews/rotation-review.md),
// each of which failed there: they are kept as regression tests.

// crashAfter runs a manual rotation that dies (as a killed process) right after step.
func crashAfter(t *testing.T, e *testEnv, step string) {
	t.Helper()
	e.b.afterRotationStep = func(s string) {
		if s == step {
			runtime.Goexit()
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.b.rotateClient(t.Context(), e.storage, e.b.root, true)
	}()
	<-done
	e.b.afterRotationStep = nil
}

func errorCode(err error) string {
	var ce logical.HTTPCodedError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ce):
		return strconv.Itoa(ce.Code())
	}
	return "err"
}

// lockoutTenant is a tenant that locks the service user at one failed login more than
// the engine's default budget allows in the same window: the engine must never reach it.
func lockoutTenant(c *emulator.Config) {
	c.Lockout = &emulator.LockoutPolicy{Threshold: defaultMaxFailedLogins + 1, Window: defaultFailedLoginWindow, Duration: time.Hour}
}

// tenantClock puts the tenant on the test's clock, so that its lockout window moves
// with the engine's.
func tenantClock(e *testEnv) *fakeClock {
	clock := newFakeClock(e)
	e.emu.SetClock(clock.Now)
	return clock
}

// changeElsewhereDuringRotation runs a rotate-root during which an administrator sets
// another password at the tenant: both secrets are then refused.
func changeElsewhereDuringRotation(t *testing.T, e *testEnv) {
	t.Helper()
	e.b.afterRotationStep = func(step string) {
		if step == "tenant_changed" {
			if err := e.emu.SetClientSecret(testAppID, testClientID, "Changed-Elsewhere-42"); err != nil {
				t.Error(err)
			}
		}
	}
	if _, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil); err == nil {
		t.Fatal("setup: the rotation succeeded")
	}
	e.b.afterRotationStep = nil
}

// A: during the grace for a late change, a config write of the current secret passes
// verification; the pending secret must survive it, so that the late change, once it
// lands, leaves the engine holding a secret the tenant accepts.
func TestScenarioAWriteOfCurrentSecretKeepsPending(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	crashAfter(t, e, "stored_pending") // the change is on its way; the process dies
	e.restart(t)
	pending := e.stored(t).Rotation.PendingSecret
	if pending == "" {
		t.Fatal("setup: no pending secret after the restart")
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_secret": testClientSecret})
	if e.stored(t).Rotation.PendingSecret != pending {
		t.Fatal("a write of the current secret during the grace dropped the pending one")
	}
	clock.Advance(time.Minute)
	if err := e.emu.SetClientSecret(testAppID, testClientID, pending); err != nil { // the late change lands
		t.Fatal(err)
	}
	clock.Advance(readSettleInterval + time.Second)
	if _, err := e.request(t, logical.ReadOperation, "token", nil); err != nil {
		t.Logf("the first read after the landing: %v", err)
	}
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	cfg := e.stored(t)
	if cfg.ClientSecret != pending {
		t.Fatalf("the late change landed, but the stored secret is not the one the tenant accepts (state %q)", cfg.Rotation.status())
	}
	e.assertWorkingSecret(t)
}

// A, after the grace: no change can land any more, so a written secret settles it.
func TestScenarioAWriteAfterGraceSettles(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	crashAfter(t, e, "stored_pending")
	clock.Advance(pendingGrace + time.Second)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_secret": testClientSecret})
	if cfg := e.stored(t); cfg.Rotation.status() != rotationStateOK {
		t.Errorf("state %q after a verified write once the grace was over, want ok", cfg.Rotation.status())
	}
}

// B: with both secrets refused, reads every 10s and the periodic function every
// minute for an hour: the rotation becomes unresolved, and the failed logins stay
// within the budget of each window.
func TestScenarioBRefusedReadsCannotStarveUnresolved(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, lockoutTenant)
	clock := tenantClock(e)
	changeElsewhereDuringRotation(t, e)
	st0 := e.emu.Stats()
	for i := range 360 {
		clock.Advance(10 * time.Second)
		_, _ = e.request(t, logical.ReadOperation, "token", nil)
		if i%6 == 5 {
			_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
		}
	}
	st := e.emu.Stats()
	cfg := e.stored(t)
	t.Logf("after 1h: state %q; tenant refused %d token requests during the rotation, %d after it", cfg.Rotation.status(), st0.TokenErrors, st.TokenErrors-st0.TokenErrors)
	if !cfg.Rotation.Unresolved {
		t.Errorf("both secrets refused for an hour, yet the rotation is %q, not unresolved", cfg.Rotation.status())
	}
	// At most 3 refusals in any 30 minutes, the rotation's own included: the tenant,
	// which locks at 4, never did; an hour spans parts of three windows.
	if st.Lockouts > 0 || st.TokenErrors > 3*defaultMaxFailedLogins {
		t.Errorf("%d failed logins in an hour, %d lockouts; want at most %d and none", st.TokenErrors, st.Lockouts, 3*defaultMaxFailedLogins)
	}
}

// C: rotate-root while a rotation is pending answers 409 without a tenant call, and
// never a 502 that a Vault client would retry.
func TestScenarioCRotateRootWhilePendingAsksNobody(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	newFakeClock(e)
	changeElsewhereDuringRotation(t, e)
	e.emu.Reset()
	var codes []string
	for range 5 {
		_, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
		codes = append(codes, errorCode(err))
	}
	st := e.emu.Stats()
	t.Logf("5 rotate-root calls while pending: answers %v; %d token requests", codes, st.TokenRequests)
	if st.TokenRequests > 0 {
		t.Errorf("rotate-root during a pending rotation made %d token requests in 5 calls", st.TokenRequests)
	}
	for _, c := range codes {
		if c != "409" {
			t.Errorf("answers %v, want 409 each time", codes)
			break
		}
	}
}

// D: a scheduled rotation whose change landed but whose check failed keeps its due
// time; the settle that promotes the new secret moves it a period on, so the same due
// time is not served twice.
func TestScenarioDOneChangePerDueTimeThroughAFailedCheck(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "1h", "max_retries": 0})
	clock.Advance(time.Hour)
	e.b.afterRotationStep = func(step string) {
		if step == "tenant_changed" {
			e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503, Times: 1}) // the check fails once
		}
	}
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	e.b.afterRotationStep = nil
	clock.Advance(20 * time.Second)
	e.mustRequest(t, logical.ReadOperation, "token", nil) // refused with the old secret: settles
	for range 10 {
		clock.Advance(time.Minute)
		_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	}
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Errorf("%d password changes for one due time, want 1 (next due in %s)", n, e.stored(t).Rotation.NextRotation.Sub(clock.Now()))
	}
	if next := e.stored(t).Rotation.NextRotation.Sub(clock.Now()); next < 40*time.Minute {
		t.Errorf("the next due time is %s away, want about a period", next)
	}
}

// D, with a failure before the change: the retry waits for its backoff and leaves the
// due time alone.
func TestScenarioDRetryDoesNotMoveTheDueTime(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "1h", "max_retries": 0})
	due := e.stored(t).Rotation.NextRotation
	clock.Advance(time.Hour)
	failNext := func() { e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503, Times: 1}) } // the change's grant
	failNext()
	before := e.emu.Stats().TokenRequests
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	r := e.stored(t).Rotation
	if !r.NextRotation.Equal(due) || r.Failures != 1 || !r.RetryAt.After(clock.Now()) {
		t.Fatalf("after a failed scheduled rotation: due %s (was %s), failures %d, retry in %s", r.NextRotation, due, r.Failures, r.RetryAt.Sub(clock.Now()))
	}
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}) // before the retry time: nothing
	if n := e.emu.Stats().TokenRequests - before; n != 1 {
		t.Errorf("%d token requests before the retry time, want 1", n)
	}
	clock.Advance(rotationRetryDelay + time.Second)
	failNext()
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}) // fails again: backoff doubles
	r = e.stored(t).Rotation
	if r.Failures != 2 || r.RetryAt.Sub(clock.Now()) < 2*rotationRetryDelay-time.Second {
		t.Errorf("after a second failure: failures %d, retry in %s, want 2 and about %s", r.Failures, r.RetryAt.Sub(clock.Now()), 2*rotationRetryDelay)
	}
	clock.Advance(2*rotationRetryDelay + time.Second)
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Errorf("%d password changes, want 1", n)
	}
	if r := e.stored(t).Rotation; r.Failures != 0 || !r.NextRotation.Equal(due.Add(time.Hour)) {
		t.Errorf("after the rotation: failures %d, next due %s, want 0 and %s", r.Failures, r.NextRotation, due.Add(time.Hour))
	}
}

// D2: the scheduled rotation for a due time dies after the tenant's change; at the
// next start the settle cannot reach the tenant once, and the timer fires at once for
// the past due time. The rotation settles the earlier one, finds its due time served,
// and does not rotate again.
func TestScenarioD2RestartAfterScheduledCrashRotatesOnce(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "1h", "max_retries": 0})
	clock.Advance(time.Hour + time.Second)
	e.b.afterRotationStep = func(s string) {
		if s == "tenant_changed" {
			runtime.Goexit()
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.b.root.rotateIfDue(t.Context(), e.storage)
	}()
	<-done
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503, Times: 1}) // the start's check fails once
	e.restart(t)
	deadline := time.Now().Add(3 * time.Second)
	for e.stored(t).Rotation.PendingSecret != "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Errorf("%d password changes for one due time, want 1", n)
	}
	e.assertWorkingSecret(t)
}

// E: a lease that ends while the password is changing waits for the change and is
// revoked with the secret the tenant then accepts.
func TestScenarioERevocationDuringTheChange(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	lease := e.mustRequest(t, logical.ReadOperation, "token", nil).Secret
	var resp *logical.Response
	var err error
	revoked := make(chan struct{})
	e.b.afterRotationStep = func(step string) {
		if step == "tenant_changed" {
			go func() {
				defer close(revoked)
				resp, err = e.revoke(t, lease) // Vault's expiration manager, at the lease's end
			}()
			time.Sleep(50 * time.Millisecond) // it reaches the gate and waits there
		}
	}
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	e.b.afterRotationStep = nil
	<-revoked
	tok := lease.InternalData["access_token"].(string)
	if err != nil || resp != nil && resp.IsError() || !e.emu.Revoked(tok) {
		t.Errorf("revocation during the change: resp %v, err %v, revoked at the tenant %t", resp, err, e.emu.Revoked(tok))
	}
}

// E, while pending with the new secret at the tenant: the refusal goes back to Vault,
// which retries; the retry after the settle revokes it.
func TestScenarioERevocationWhilePendingIsRetried(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	lease := e.mustRequest(t, logical.ReadOperation, "token", nil).Secret
	crashAfter(t, e, "tenant_changed") // the tenant holds the new secret; Vault still stores it as pending
	_, err := e.revoke(t, lease)
	tok := lease.InternalData["access_token"].(string)
	if err == nil && !e.emu.Revoked(tok) {
		t.Fatal("the lease ended (Vault will not retry) but the token was not revoked at the tenant")
	}
	e.restart(t) // settles: the pending secret is promoted
	if _, err := e.revoke(t, lease); err != nil || !e.emu.Revoked(tok) {
		t.Errorf("Vault's retry after the settle: err %v, revoked %t", err, e.emu.Revoked(tok))
	}
}

// G: a rotation killed before its change was sent costs no failed login: settles try
// the current secret, which the tenant still accepts, first.
func TestScenarioGCrashBeforeChangeCostsNoFailedLogin(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	crashAfter(t, e, "stored_pending")
	e.emu.Reset()
	e.restart(t)
	for range 15 {
		clock.Advance(time.Minute)
		_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	}
	st := e.emu.Stats()
	t.Logf("15 min after a crash before the change was sent: state %q, %d token requests, %d refused", e.stored(t).Rotation.status(), st.TokenRequests, st.TokenErrors)
	if st.TokenErrors != 0 {
		t.Errorf("%d failed logins, want 0", st.TokenErrors)
	}
	e.assertWorkingSecret(t)
}

// L: the tenant refuses the stored secret (changed elsewhere): an Agent-like load of
// 10 reads a second for an hour causes at most the budget per window, the reads get a
// 400 at once that says why and until when, and the count survives a restart.
func TestScenarioLRefusedSecretIsABoundedFailedLoginCount(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, lockoutTenant)
	clock := tenantClock(e)
	if err := e.emu.SetClientSecret(testAppID, testClientID, "Changed-Elsewhere-42"); err != nil {
		t.Fatal(err)
	}
	e.emu.Reset()
	var last error
	for i := range 36000 {
		clock.Advance(100 * time.Millisecond)
		_, last = e.request(t, logical.ReadOperation, "token", nil)
		if i == 100 {
			e.restart(t) // the count is in storage
		}
		if i%600 == 599 {
			_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
		}
	}
	st := e.emu.Stats()
	t.Logf("36000 reads in an hour: %d token requests, %d refused; last answer: %v", st.TokenRequests, st.TokenErrors, last)
	if st.Lockouts > 0 || st.TokenErrors > 3*defaultMaxFailedLogins || st.TokenErrors < defaultMaxFailedLogins {
		t.Errorf("%d failed logins in an hour, %d lockouts; want %d to %d and none", st.TokenErrors, st.Lockouts, defaultMaxFailedLogins, 3*defaultMaxFailedLogins)
	}
	if errorCode(last) != "400" || !strings.Contains(last.Error(), "no login attempt") || !strings.Contains(last.Error(), "max_failed_logins") {
		t.Errorf("a read with the budget spent: %v, want a 400 that names the budget", last)
	}
	read := e.mustRequest(t, logical.ReadOperation, "config", nil)
	if read.Data["failed_logins"] != defaultMaxFailedLogins || read.Data["next_login_attempt"] == nil {
		t.Errorf("config read: failed_logins %v, next_login_attempt %v", read.Data["failed_logins"], read.Data["next_login_attempt"])
	}

	// The operator writes the secret the tenant accepts: verified even with the budget
	// spent, and the count starts again.
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_secret": "Changed-Elsewhere-42"})
	if read := e.mustRequest(t, logical.ReadOperation, "config", nil); read.Data["failed_logins"] != 0 {
		t.Errorf("after a verified write: failed_logins %v, want 0", read.Data["failed_logins"])
	}
	e.mustRequest(t, logical.ReadOperation, "token", nil)
}

// The budget also holds under concurrent reads: no more grants are in flight than
// refusals are left, so 64 readers at once cannot overshoot it.
func TestBudgetHoldsUnderConcurrentReads(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	if err := e.emu.SetClientSecret(testAppID, testClientID, "Changed-Elsewhere-42"); err != nil {
		t.Fatal(err)
	}
	e.emu.Reset()
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Delay: 20 * time.Millisecond})
	done := make(chan struct{})
	for range 64 {
		go func() {
			defer func() { done <- struct{}{} }()
			_, _ = e.request(t, logical.ReadOperation, "token", nil)
		}()
	}
	for range 64 {
		<-done
	}
	if n := e.emu.Stats().TokenErrors; n > defaultMaxFailedLogins {
		t.Errorf("64 concurrent reads with a refused secret: %d failed logins, want at most %d", n, defaultMaxFailedLogins)
	}
}

// TestFailedLoginsPerHourByState measures the failed logins the engine causes in each
// rotation state over two hours of an Agent-like load (a read a second, the periodic
// function every minute), on a tenant that locks at one more than the budget, and logs
// them per hour: the runbook's figures.
func TestFailedLoginsPerHourByState(t *testing.T) {
	t.Parallel()
	states := []struct {
		name  string
		setup func(t *testing.T, e *testEnv)
	}{
		{"ok, the tenant takes the stored secret", func(*testing.T, *testEnv) {}},
		{"ok, the stored secret changed at the tenant", func(t *testing.T, e *testEnv) {
			if err := e.emu.SetClientSecret(testAppID, testClientID, "Changed-Elsewhere-42"); err != nil {
				t.Fatal(err)
			}
		}},
		{"pending, the change never reached the tenant", func(t *testing.T, e *testEnv) { crashAfter(t, e, "stored_pending"); e.restart(t) }},
		{"pending, the change landed before a crash", func(t *testing.T, e *testEnv) { crashAfter(t, e, "tenant_changed"); e.restart(t) }},
		{"pending, then unresolved: the password changed elsewhere mid-rotation", changeElsewhereDuringRotation},
	}
	for _, st := range states {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, lockoutTenant)
			clock := tenantClock(e)
			st.setup(t, e)
			base := e.emu.Stats().FailedLogins
			var perHour [2]int64
			for h := range 2 {
				for s := range 3600 {
					clock.Advance(time.Second)
					_, _ = e.request(t, logical.ReadOperation, "token", nil)
					if s%60 == 59 {
						_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
					}
				}
				now := e.emu.Stats().FailedLogins
				perHour[h], base = now-base, now
			}
			stats := e.emu.Stats()
			t.Logf("%s: failed logins in hour 1: %d, hour 2: %d; state after: %s; tenant lockouts: %d",
				st.name, perHour[0], perHour[1], e.stored(t).Rotation.status(), stats.Lockouts)
			if stats.Lockouts > 0 {
				t.Error("the tenant locked the service user out")
			}
		})
	}
}

// TestEveryRotationIsCounted: the rotation metric counts every rotation, manual or
// scheduled, by how it ended; a failed manual rotate-root was not counted before.
func TestEveryRotationIsCounted(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	sink := withInmemMetrics(t, e)
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil) // success
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_scopes": "write"})
	// A scope without the API: the tenant refuses the change.
	if resp, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil); err == nil && !resp.IsError() {
		t.Fatal("setup: a rotation with a scope that does not allow the change succeeded")
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_scopes": rotateScope, "rotation_period": "1h", "max_retries": 0})
	clock.Advance(time.Hour)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503, Times: 1})
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}) // scheduled, fails
	clock.Advance(rotationRetryDelay + time.Second)
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}) // scheduled, succeeds
	success := counter(sink, "test.cyberark.rotation;client=default;outcome=success")
	failed := counter(sink, "test.cyberark.rotation;client=default;outcome=failed")
	if success != 2 || failed != 2 {
		t.Errorf("rotation metric: %d successes and %d failures, want 2 and 2 (a manual and a scheduled of each)", success, failed)
	}
}
