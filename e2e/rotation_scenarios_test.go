//go:build unix

package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// The rotation review's scenarios B, D, D2, E and G (shared/reviews/rotation-review.md)
// in a real Vault against the tenant emulator; L, C and A are in rotation_budget_test.go.
// Vault's clock cannot be moved, so each test shows the part of its scenario that shows
// in seconds, and says what the unit test of the same letter (rotation_scenarios_test.go,
// on a fake clock) covers beyond that. Each failed at 6f4f9f3, for the reason its
// comment names.

// TestBothSecretsRefusedSpendOnlyTheBudget (B): a rotation's change is held by the
// tenant, an administrator sets another password meanwhile, and the held change then
// fails its oldPassword check when it lands, so the tenant refuses both the current and
// the pending secret. Agent-like clients (vault/api, retries on) read tokens 10 times a
// second for 3 seconds. In all, the rotation's own check included, the tenant sees at
// most max_failed_logins refused token requests and never locks the user; every read
// after them is a 400 at once that names the budget; and a full settle (the plugin's
// start, the same check of both secrets the periodic function makes, which runs once a
// minute and at most every 2 minutes: a reload runs it now) asks the tenant nothing
// more: failed_logins stays at the budget.
//
// The unit test runs reads every 10s and the periodic function every minute for an
// hour: the rotation turns unresolved once the 10-minute grace is over, and the
// refusals stay within the budget of each window.
//
// At 6f4f9f3 each read was a refused grant with the current secret, and every 10s one
// of them also checked the pending secret: the refusals followed the read rate, about
// 30 in 3 seconds, and the tenant locked the user at the fourth.
func TestBothSecretsRefusedSpendOnlyTheBudget(t *testing.T) {
	t.Parallel()
	const budget = defaultMaxFailedLogins
	e := newEnv(t, 3600, withTenantConfig(func(c *emulator.Config) {
		c.Lockout = &emulator.LockoutPolicy{Threshold: budget + 1, Window: 30 * time.Minute, Duration: time.Hour}
	}))
	e.configure()
	current := e.tenant.secret

	// A rotation whose change the tenant takes in and holds: pending, and the tenant
	// still takes the current secret.
	holdNextChange(t, e)
	if _, err := e.rotateRoot(e.ctx); err == nil {
		t.Fatal("config/rotate-root succeeded with its change held by the tenant")
	}
	if n := heldChanges(t, e); n != 1 {
		t.Fatalf("the tenant holds %d changes, want 1", n)
	}
	pending := lastNewPassword(t, e)

	// An administrator changes the password at the tenant; then the held change lands,
	// and fails, since its oldPassword is no longer the user's.
	changed := "E2e:%40-changed-" + randomHex(t, 16)
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"the password an administrator set at the tenant", changed}}
	})
	e.tenant.control(t, http.MethodPost, "/_emulator/client_secret", map[string]string{"app_id": appID, "client_id": clientID, "secret": changed}, nil)
	var landed struct {
		Landed int `json:"landed"`
	}
	e.tenant.control(t, http.MethodPost, "/_emulator/held_changes/land", nil, &landed)
	if landed.Landed != 0 || e.tenant.emu.ClientSecretIs(clientID, current) || e.tenant.emu.ClientSecretIs(clientID, pending) {
		t.Fatalf("setup: %d held changes landed, want 0 and the tenant to refuse both the current and the pending secret", landed.Landed)
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "pending" {
		t.Fatalf("config rotation_state = %v, want pending", cfg["rotation_state"])
	}
	before := e.tenant.clientStats(t)

	agent := retryingClient(t, e)
	answers, loadTook := agentLoad(t, e, agent, 100*time.Millisecond, 3*time.Second)
	after := e.tenant.clientStats(t)
	refusedInLoad := after.TokenErrors - before.TokenErrors
	budgetAnswers, slowest := 0, time.Duration(0)
	for _, a := range answers {
		noSecretsIn(t, e, "a token read's error", a.msg)
		switch {
		case a.status != http.StatusBadRequest:
			t.Errorf("a token read with both secrets refused: HTTP %d %q, want a 400", a.status, a.msg)
		case strings.Contains(a.msg, "no login attempt") && strings.Contains(a.msg, "max_failed_logins"):
			budgetAnswers++
			slowest = max(slowest, a.took)
		}
	}
	t.Logf("%d reads in %s: the tenant got %d token requests and refused %d (%d in all, the rotation's included); %d answers named the budget, the slowest in %s",
		len(answers), loadTook.Round(time.Millisecond), after.TokenRequests-before.TokenRequests, refusedInLoad, after.TokenErrors,
		budgetAnswers, slowest.Round(time.Millisecond))
	if after.TokenErrors > budget || after.FailedLogins > budget {
		t.Errorf("the tenant refused %d token requests in all (%d failed logins), %d of them during the reads; want at most max_failed_logins=%d in all",
			after.TokenErrors, after.FailedLogins, refusedInLoad, budget)
	}
	if refusedInLoad < 1 {
		t.Error("the tenant refused no token request during the reads; the load did not reach it")
	}
	if budgetAnswers < len(answers)-int(refusedInLoad) {
		t.Errorf("%d of %d reads were answered with the spent budget, want all but the %d the tenant refused", budgetAnswers, len(answers), refusedInLoad)
	}
	if slowest > 2*time.Second {
		t.Errorf("a read answered with the spent budget took %s, want an answer at once", slowest)
	}
	e.tenant.mustNotBeLocked(t)

	// A full settle, which checks both secrets: the start of a reloaded plugin.
	requests := e.tenant.clientStats(t).TokenRequests
	if _, err := e.client.Sys().ReloadPluginWithContext(e.ctx, &api.ReloadPluginInput{Mounts: []string{mountPath + "/"}}); err != nil {
		t.Fatalf("reloading the plugin: %v", err)
	}
	_, err := agent.Logical().ReadWithContext(e.ctx, mountPath+"/token")
	re := responseError(t, err)
	if msg := strings.Join(re.Errors, " "); re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, "no login attempt") {
		t.Errorf("a read after the reload: HTTP %d %q, want a 400 that names the budget", re.StatusCode, msg)
	}
	if got := e.tenant.clientStats(t).TokenRequests - requests; got != 0 {
		t.Errorf("the reloaded plugin's start settle and a read made %d token requests at the tenant, want none with the budget spent", got)
	}
	cfg := readRotationConfig(t, e)
	if got := intField(t, cfg, "failed_logins"); got != budget {
		t.Errorf("config failed_logins = %d after the load and a full settle, want the budget, %d", got, budget)
	}
	// The grace for a late change (10 minutes) is not over: pending, not yet unresolved.
	if cfg["rotation_state"] != "pending" {
		t.Errorf("config rotation_state = %v, want pending until the grace is over", cfg["rotation_state"])
	}
	if st := e.tenant.clientStats(t); st.TokenErrors > budget || st.Lockouts != 0 {
		t.Errorf("in all: %d refused token requests, %d lockouts; want at most %d and none", st.TokenErrors, st.Lockouts, budget)
	}
	e.tenant.mustNotBeLocked(t)
}

// loadAnswer is one read of a load: how long it took and how it was answered.
type loadAnswer struct {
	took   time.Duration
	status int
	msg    string
}

// agentLoad reads a token through c every interval for span, each read in its own
// goroutine as independent Agents would, and returns the answers and how long it took.
func agentLoad(t *testing.T, e *env, c *api.Client, interval, span time.Duration) ([]loadAnswer, time.Duration) {
	t.Helper()
	var (
		mu      sync.Mutex
		answers []loadAnswer
		wg      sync.WaitGroup
	)
	ticker := time.NewTicker(interval)
	start := time.Now()
	for now := start; now.Before(start.Add(span)); now = <-ticker.C {
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			s, err := c.Logical().ReadWithContext(e.ctx, mountPath+"/token")
			a := loadAnswer{took: time.Since(began)}
			var re *api.ResponseError
			switch {
			case err == nil:
				a.status, a.msg = http.StatusOK, fmt.Sprintf("served (a secret: %t)", s != nil)
			case errors.As(err, &re):
				a.status, a.msg = re.StatusCode, strings.Join(re.Errors, " ")
			default:
				a.msg = err.Error()
			}
			mu.Lock()
			answers = append(answers, a)
			mu.Unlock()
		}()
	}
	ticker.Stop()
	wg.Wait()
	return answers, time.Since(start)
}

// scheduledConfig is a complete config that rotates every period, on a client that
// does not retry a tenant's 5xx (so that one injected 503 is one failed call).
func scheduledConfig(e *env, period time.Duration) map[string]any {
	data := e.tenant.configData()
	data["rotation_period"] = period.String()
	data["max_retries"] = 0
	return data
}

// nextRotationTime is the config read's next_vault_rotation.
func nextRotationTime(t *testing.T, cfg map[string]any) time.Time {
	t.Helper()
	next, err := time.Parse(time.RFC3339Nano, stringField(cfg, "next_vault_rotation"))
	if err != nil {
		t.Fatalf("config next_vault_rotation = %v: %v", cfg["next_vault_rotation"], err)
	}
	return next
}

// onGrid says whether at is one of the due times due0 + k·period, k ≥ 0.
func onGrid(at, due0 time.Time, period time.Duration) bool {
	d := at.Sub(due0)
	return d >= 0 && (d%period < time.Millisecond || period-d%period < time.Millisecond)
}

// oneChangePerDueTime fails the test if some due time was served twice: by any moment,
// the tenant may have received no more password changes than due times had come, so
// the i-th change may come no earlier than the i-th due time, due0 + (i-1)·period.
func oneChangePerDueTime(t *testing.T, changes []passwordChange, due0 time.Time, period time.Duration) {
	t.Helper()
	for i, ch := range changes {
		due := due0.Add(time.Duration(i) * period)
		if ch.at.Before(due) {
			t.Errorf("password change #%d came %s after the first due time, %s before due time #%d: a due time was served twice",
				i+1, ch.at.Sub(due0).Round(time.Millisecond), due.Sub(ch.at).Round(time.Millisecond), i+1)
		}
	}
}

// killPlugin kills the plugin process that serves the mount and waits until Vault has
// reaped it, after which Vault's next request to the mount starts a new one (whose
// start runs the engine's Initialize). It skips the test where processes cannot be
// listed.
func killPlugin(t *testing.T, e *env) {
	t.Helper()
	vaultPID := e.vault.proc.Pid()
	pids, err := vaultproc.Children(vaultPID, pluginName+"-"+versionV1)
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skipf("cannot list processes here: %v", err)
	}
	if err != nil || len(pids) != 1 {
		t.Fatalf("plugin processes under Vault (pid %d): %v (%v), want one", vaultPID, pids, err)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatalf("killing the plugin (pid %d): %v", pids[0], err)
	}
	waitFor(t, 10*time.Second, "Vault to reap the killed plugin", func() bool {
		return errors.Is(syscall.Kill(pids[0], 0), syscall.ESRCH)
	})
	time.Sleep(100 * time.Millisecond)
}

// TestScheduledRotationFailedCheckKeepsItsDueTime (D): with rotation_period=5s, the
// first scheduled rotation's change lands, but the check that follows gets a 503 from
// a proxy, so the rotation stays pending and counts as failed. Its due time must stay
// the stored next_vault_rotation (the retry waits apart from it); the first token read
// is refused with the old secret and settles it, which moves next_vault_rotation on to
// the next time on the 5s grid; and over 15s the tenant never gets more password
// changes than due times have come.
//
// The unit test follows it for an hour: the retry time (a minute on) passes, and the
// due time that the settle served is not served again.
//
// At 6f4f9f3 the failed rotation stored its retry time, a minute on, as
// next_vault_rotation, off the grid: a settle before then kept it, and at that time
// the same due time was served by a second rotation.
func TestScheduledRotationFailedCheckKeepsItsDueTime(t *testing.T) {
	t.Parallel()
	const period = 5 * time.Second
	e := newEnv(t, 3600)
	// The change is answered 1.5s late, which leaves time to queue a 503 for the token
	// request that follows it: the check with the new secret.
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Times: 1, Delay: 1500 * time.Millisecond})
	configuredAt := time.Now()
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", scheduledConfig(e, period)); err != nil {
		t.Fatalf("writing the config with rotation_period: %v", err)
	}
	due0 := nextRotationTime(t, readRotationConfig(t, e))

	waitFor(t, 20*time.Second, "the scheduled rotation's change to reach the tenant", func() bool {
		return len(passwordChanges(e.tenant.emu.Requests())) == 1
	})
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusServiceUnavailable})
	waitFor(t, 20*time.Second, "the failed check to be recorded", func() bool {
		return stringField(readRotationConfig(t, e), "last_rotation_error") != ""
	})
	if got := e.tenant.emu.Stats().FaultsServed; got != 2 {
		t.Fatalf("the tenant served %d faults, want 2: the late answer to the change and the 503 to the check", got)
	}
	changes := passwordChanges(e.tenant.emu.Requests())
	if len(changes) != 1 || !e.tenant.emu.ClientSecretIs(clientID, changes[0].new) {
		t.Fatalf("the tenant received %d password changes, want 1, made", len(changes))
	}
	cfg := readRotationConfig(t, e)
	t.Logf("after the failed check: rotation_state=%v next_vault_rotation=%v last_rotation_error=%q",
		cfg["rotation_state"], cfg["next_vault_rotation"], stringField(cfg, "last_rotation_error"))
	if cfg["rotation_state"] != "pending" {
		t.Errorf("config rotation_state = %v after the failed check, want pending", cfg["rotation_state"])
	}
	if next := nextRotationTime(t, cfg); !next.Equal(due0) {
		t.Errorf("after the failed check next_vault_rotation is %s from the due time of the failed rotation (%s), want the due time of the failed rotation, kept until a rotation serves it: a retry time stored as the due time",
			next.Sub(due0).Round(time.Millisecond), due0.Format(time.RFC3339Nano))
	}

	// Reads: the first is refused with the old secret and settles; it, or the next one,
	// is served with the new secret.
	settleFrom := time.Now()
	var settledBy time.Time
	for attempt := 1; settledBy.IsZero(); attempt++ {
		s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		if err == nil && s != nil {
			e.tenant.mustHaveIssued(t, accessToken(t, s))
			settledBy = time.Now()
			break
		}
		if err != nil {
			re := responseError(t, err)
			noSecretsIn(t, e, "a token read's error", strings.Join(re.Errors, " "))
			t.Logf("read #%d after the failed check: HTTP %d %q", attempt, re.StatusCode, strings.Join(re.Errors, " "))
		}
		if attempt >= 2 {
			t.Fatalf("no read was served after the failed check; config rotation_state = %v", readRotationConfig(t, e)["rotation_state"])
		}
	}
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(changes[0].new) {
		t.Error("the read served after the settle did not authenticate with the new secret")
	}
	cfg = readRotationConfig(t, e)
	next := nextRotationTime(t, cfg)
	t.Logf("settled %s after the first due time: rotation_state=%v next_vault_rotation is %s after the first due time",
		settledBy.Sub(due0).Round(time.Millisecond), cfg["rotation_state"], next.Sub(due0).Round(time.Millisecond))
	if cfg["rotation_state"] != "ok" {
		t.Errorf("config rotation_state = %v after the settle, want ok", cfg["rotation_state"])
	}
	if !onGrid(next, due0, period) || !next.After(settleFrom) || next.After(settledBy.Add(period)) {
		t.Errorf("after the settle next_vault_rotation is %s after the first due time, want the first time on the %s grid after the settle (%s to %s after it)",
			next.Sub(due0).Round(time.Millisecond), period, settleFrom.Sub(due0).Round(time.Millisecond), settledBy.Sub(due0).Round(time.Millisecond))
	}

	// 15s in all: reads go on, and no due time is served twice.
	reads := readEvery(t, e, 500*time.Millisecond, configuredAt.Add(3*period+time.Second))
	changes = passwordChanges(e.tenant.emu.Requests())
	var offsets []string
	for _, ch := range changes {
		offsets = append(offsets, ch.at.Sub(due0).Round(time.Millisecond).String())
	}
	t.Logf("%d more reads, all served; password changes at %v after the first due time", reads, offsets)
	oneChangePerDueTime(t, changes, due0, period)
	last := changes[len(changes)-1].new
	if !e.tenant.emu.ClientSecretIs(clientID, last) {
		t.Error("the tenant does not accept the last change's secret")
	}
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(last) {
		t.Error("the last read did not authenticate with the secret the tenant accepts")
	}
	e.tenant.mustNotBeLocked(t)
}

// TestScheduledRotationKilledAfterChangeRotatesOnce (D2): with rotation_period=5s, the
// plugin is killed while the first scheduled rotation waits for the answer to a change
// the tenant has made. The restarted plugin's start settle gets a 503 once, so the
// rotation is still pending when its timer fires at once for the past due time: that
// rotation settles the earlier one, finds the due time served, and makes no change of
// its own. The tenant receives exactly one change for the first due time, and none
// until the next one.
//
// The unit test does the same on a fake clock, with the due time an hour past.
//
// At 6f4f9f3 the timer's rotation decided the due time was due, settled the earlier
// rotation (its change had landed) and then rotated again at once: two changes for one
// due time.
func TestScheduledRotationKilledAfterChangeRotatesOnce(t *testing.T) {
	t.Parallel()
	const period = 5 * time.Second
	e := newEnv(t, 3600)
	// The tenant makes the change at once and answers 10s later: the plugin dies first.
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Times: 1, Delay: 10 * time.Second, ApplyFirst: true})
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", scheduledConfig(e, period)); err != nil {
		t.Fatalf("writing the config with rotation_period: %v", err)
	}
	due0 := nextRotationTime(t, readRotationConfig(t, e))
	due1 := due0.Add(period)

	waitFor(t, 20*time.Second, "the scheduled rotation's change to reach the tenant", func() bool {
		return len(passwordChanges(e.tenant.emu.Requests())) == 1
	})
	first := passwordChanges(e.tenant.emu.Requests())[0]
	if !e.tenant.emu.ClientSecretIs(clientID, first.new) {
		t.Fatal("the tenant did not make the change it answers late")
	}
	// The next token request, the restarted plugin's first check, fails once.
	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusServiceUnavailable})
	killPlugin(t, e)

	// A config read starts the plugin again (its Initialize runs before the read).
	restartedAt := time.Now()
	readRotationConfig(t, e)
	if restartedAt.After(due1.Add(-time.Second)) {
		t.Logf("the restart came %s after the first due time, near or past the next one: this run cannot tell a second change for the first due time from one for the next",
			restartedAt.Sub(due0).Round(time.Millisecond))
	}
	waitFor(t, 15*time.Second, "the restarted plugin to settle the rotation", func() bool {
		return readRotationConfig(t, e)["rotation_state"] == "ok"
	})
	if got := e.tenant.emu.Stats().FaultsServed; got != 2 {
		t.Errorf("the tenant served %d faults, want 2: the late answer to the change and the 503 to the restarted plugin's first check", got)
	}
	settledAt := time.Now()

	// Reads until half a period past the next due time.
	reads := readEvery(t, e, 500*time.Millisecond, due1.Add(period/2))
	changes := passwordChanges(e.tenant.emu.Requests())
	var offsets []string
	beforeNext := 0
	for _, ch := range changes {
		offsets = append(offsets, ch.at.Sub(due0).Round(time.Millisecond).String())
		if ch.at.Before(due1) {
			beforeNext++
		}
	}
	t.Logf("restarted %s and settled %s after the first due time; %d reads, all served; password changes at %v after it",
		restartedAt.Sub(due0).Round(time.Millisecond), settledAt.Sub(due0).Round(time.Millisecond), reads, offsets)
	if beforeNext != 1 {
		t.Errorf("the tenant received %d password changes before the next due time, want exactly 1 for the first", beforeNext)
	}
	oneChangePerDueTime(t, changes, due0, period)
	last := changes[len(changes)-1].new
	if !e.tenant.emu.ClientSecretIs(clientID, last) {
		t.Error("the tenant does not accept the last change's secret")
	}
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(last) {
		t.Error("the last read did not authenticate with the secret the tenant accepts")
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "ok" {
		t.Errorf("config rotation_state = %v, want ok", cfg["rotation_state"])
	}
}

// TestRevocationDuringPasswordChangeWaits (E): a lease is revoked (sys/leases/revoke, as
// at the lease's end) while a rotate-root's change is at the tenant, which has made it
// and holds its answer back for 2s. The revocation waits for the change to end, then
// revokes with the secret the tenant accepts: it succeeds, the tenant has revoked the
// token, and no revocation was refused.
//
// The unit tests also cover a lease that ends while a rotation is pending with the new
// secret at the tenant (after a crash): the refusal goes back to Vault, whose retry
// after the settle revokes the token.
//
// At 6f4f9f3 a revocation did not wait for a change in progress: it authenticated with
// the old secret, the tenant refused it, the engine took the refusal as final, and the
// lease ended with the token still valid at the tenant.
func TestRevocationDuringPasswordChangeWaits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	lease := e.readToken("token", nil)
	token := accessToken(t, lease)
	if lease.LeaseID == "" {
		t.Fatal("the token read returned no lease")
	}
	original := e.tenant.secret

	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Times: 1, Delay: 2 * time.Second, ApplyFirst: true})
	type result struct {
		sec *api.Secret
		err error
	}
	done := make(chan result, 1)
	go func() {
		sec, err := e.rotateRoot(e.ctx)
		done <- result{sec, err}
	}()
	waitFor(t, 20*time.Second, "the password change to reach the tenant", func() bool {
		return len(passwordChanges(e.tenant.emu.Requests())) == 1
	})
	if e.tenant.emu.ClientSecretIs(clientID, original) {
		t.Fatal("the tenant still accepts the original secret while its answer to the change is held back")
	}
	before := e.tenant.clientStats(t)
	began := time.Now()
	err := e.client.Sys().RevokeWithContext(e.ctx, lease.LeaseID)
	took := time.Since(began)
	r := <-done
	if r.err != nil {
		t.Fatalf("config/rotate-root: %v", r.err)
	}
	noSecretsIn(t, e, "the rotate-root response", r.sec)
	after := e.tenant.clientStats(t)
	t.Logf("the revocation took %s, made during the change; the tenant refused %d authentications meanwhile", took.Round(time.Millisecond), after.FailedLogins-before.FailedLogins)
	if err != nil {
		t.Errorf("sys/leases/revoke during the change: %v, want a success once the change is over", err)
	}
	if !e.tenant.emu.Revoked(token) {
		t.Error("the lease ended, yet the tenant has not revoked its token, which stays valid until it expires")
	}
	if got := after.FailedLogins - before.FailedLogins; got != 0 {
		t.Errorf("the tenant refused %d authentications during the revocation, want none", got)
	}
	if got := leaseCount(t, e, mountPath+"/token/"); got != 0 {
		t.Errorf("%d leases left under %s/token/, want none", got, mountPath)
	}
	// The rotation's secret is the one the tenant takes, and reads go on with it.
	secret := lastNewPassword(t, e)
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(secret) {
		t.Error("the read after the rotation did not authenticate with the new secret")
	}
}

// TestRotationKilledBeforeChangeCostsNoFailedLogin (G): a rotate-root stores its new
// secret as pending, then waits for its own grant, which the tenant answers 10s late;
// the plugin is killed meanwhile, so the change is never sent. Vault starts the plugin
// again (and runs the interrupted rotate-root once more on it), whose start settles
// the rotation, and a reload starts it once more: the tenant refuses no token request
// at all, since settles try the current secret, which the tenant still takes, first.
// The rotation stays pending (the grace for a late change lasts 10 minutes) with the
// current secret working, and reads are served with it.
//
// The unit test goes on for 15 minutes of the periodic function (which checks at most
// every 2 minutes after the start's check, so not within seconds): still no failed
// login, and the state is ok with the current secret once the grace is over.
//
// At 6f4f9f3 every settle asked about the pending secret first: each start (and the
// rerun rotate-root) was a refused token request, a failed login, and every periodic
// check until the grace was over another.
func TestRotationKilledBeforeChangeCostsNoFailedLogin(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	e.readToken("token", nil)
	original := e.tenant.secret

	e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Delay: 10 * time.Second})
	done := make(chan error, 1)
	go func() {
		_, err := e.rotateRoot(e.ctx)
		done <- err
	}()
	waitFor(t, 20*time.Second, "the rotation's grant to reach the tenant", func() bool {
		for _, r := range e.tenant.emu.Requests() {
			if strings.HasPrefix(strings.ToLower(r.Path), "/oauth2/token/") && strings.Contains(r.Form.Get("scope"), rotationScope) {
				return true
			}
		}
		return false
	})
	killPlugin(t, e)
	select {
	case err := <-done:
		// A 500 when Vault gives up on the dead plugin; a 409 for the pending rotation
		// when Vault runs the request again on the restarted plugin.
		t.Logf("config/rotate-root after the kill: %v", err)
		if err == nil {
			t.Error("config/rotate-root succeeded, yet its change was never sent")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("config/rotate-root had not returned 30s after the plugin was killed")
	}
	readRotationConfig(t, e) // starts the plugin, if the rerun did not
	if _, err := e.client.Sys().ReloadPluginWithContext(e.ctx, &api.ReloadPluginInput{Mounts: []string{mountPath + "/"}}); err != nil {
		t.Fatalf("reloading the plugin: %v", err)
	}
	cfg := readRotationConfig(t, e)
	t.Logf("after the restart and a reload: rotation_state=%v last_rotation_error=%q", cfg["rotation_state"], stringField(cfg, "last_rotation_error"))
	if got := len(passwordChanges(e.tenant.emu.Requests())); got != 0 {
		t.Fatalf("the tenant received %d password changes, want none", got)
	}
	if !e.tenant.emu.ClientSecretIs(clientID, original) {
		t.Fatal("the tenant no longer accepts the original secret")
	}
	if state := cfg["rotation_state"]; state != "pending" && state != "ok" {
		t.Errorf("config rotation_state = %v, want pending (until the grace is over) or ok", state)
	}
	for range 3 {
		e.readToken("token", nil)
		if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(original) {
			t.Error("a read after the restart did not authenticate with the original secret")
		}
	}
	if st := e.tenant.clientStats(t); st.TokenErrors != 0 || st.FailedLogins != 0 {
		t.Errorf("the tenant refused %d token requests (%d failed logins) after a rotation killed before its change, want none", st.TokenErrors, st.FailedLogins)
	}
}
