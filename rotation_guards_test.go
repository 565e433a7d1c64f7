package cyberark

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// Tests that kill the mutants the audits of the rotation code left alive
// (shared/reviews/mutation-audit.md and this issue's own audit).

// Two rotateIfDue calls at once at the due time (the timer and the periodic function)
// make one change: the owner lock makes them one after the other, and the second finds
// the due time served.
func TestScheduledRotationOnceWhenTimerAndPeriodicMeet(t *testing.T) {
	t.Parallel()
	// A tenant that does not check oldPassword, as CyberArk's is reported not to: two
	// changes sent at once would both land.
	e := newRotationEnv(t, func(c *emulator.Config) { c.IgnoreOldPassword = true })
	clock := newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "1h"})
	clock.Advance(time.Hour)
	// Each call's first read of the config waits a moment for the other's: without the
	// owner lock both would see the due time unserved and nothing pending.
	bs := &barrierStorage{Storage: e.storage, key: configPath}
	e.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Delay: 200 * time.Millisecond, Times: 2})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = e.b.root.rotateIfDue(t.Context(), bs)
		}()
	}
	wg.Wait()
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Errorf("%d password changes for one due time, want 1", n)
	}
	e.assertWorkingSecret(t)
}

// The periodic function checks a pending rotation at most every settleInterval.
func TestPeriodicSettleIsSpaced(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	changeElsewhereDuringRotation(t, e) // pending; the rotation's own check was a full one
	e.emu.Reset()
	clock.Advance(settleInterval / 2)
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	if n := e.emu.Stats().TokenRequests; n != 0 {
		t.Errorf("the periodic function asked the tenant %d times within settleInterval of the last check", n)
	}
	clock.Advance(settleInterval)
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	if n := e.emu.Stats().TokenRequests; n == 0 {
		t.Error("the periodic function did not check once settleInterval had passed")
	}
}

// A refused read's settle does not count as the periodic function's full check.
func TestRefusedReadsDoNotPutOffThePeriodicCheck(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	crashAfter(t, e, "stored_pending")
	e.restart(t) // full check at start: current works, pending kept
	full := e.stored(t).Rotation.LastFullCheck
	if err := e.emu.SetClientSecret(testAppID, testClientID, "Changed-Elsewhere-42"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	_, _ = e.request(t, logical.ReadOperation, "token", nil) // refused: settles the pending secret only
	if got := e.stored(t).Rotation.LastFullCheck; !got.Equal(full) {
		t.Errorf("a refused read's settle moved the last full check from %s to %s", full, got)
	}
}

// An unresolved rotation: the schedule's (and Vault's rotation manager's) call is a 409
// without a word to the tenant; an operator's rotate-root asks it again.
func TestUnresolvedIsLeftToTheOperator(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	changeElsewhereDuringRotation(t, e)
	clock.Advance(pendingGrace + settleInterval)
	e.restart(t)
	if !e.stored(t).Rotation.Unresolved {
		t.Fatal("setup: not unresolved")
	}
	e.emu.Reset()
	e.b.root.gate.reset(t.Context(), e.storage) //nolint:errcheck // room for the manual check below
	err := e.b.rotateCredential(t.Context(), &logical.Request{Storage: e.storage})
	if !errors.Is(err, errUnresolved) || e.emu.Stats().TokenRequests != 0 {
		t.Errorf("rotation manager on an unresolved rotation: %v, %d token requests; want errUnresolved and none", err, e.emu.Stats().TokenRequests)
	}
	clock.Advance(settleInterval)
	_, _ = e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
	if e.emu.Stats().TokenRequests == 0 {
		t.Error("an operator's rotate-root on an unresolved rotation did not check it again")
	}
}

// The token that authorised the password change is revoked once it has served.
func TestRotationRevokesItsBearer(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.emu.Reset()
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	found := false
	for _, tok := range e.emu.Issued() {
		jwt, err := client.ParseJWT(tok)
		if err != nil || !strings.Contains(strings.Join(jwt.Strings("scope"), " "), rotateScope) {
			continue
		}
		found = true
		if !e.emu.Revoked(tok) {
			t.Error("the token that authorised the change was not revoked")
		}
	}
	if !found {
		t.Fatal("no token with the rotation scope was issued")
	}
}

// rotate-root's answers: a rate limit stays a 429, a tenant that cannot be reached before
// anything changed is a 502 (never a 500).
func TestRotateRootStatusCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault emulator.Fault
		want  string
	}{
		{"rate limited", emulator.Fault{Endpoint: "token", Status: 429, Times: 1}, "429"},
		{"unreachable", emulator.Fault{Endpoint: "token", Status: 503, Times: 1}, "502"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			e.b.afterRotationStep = func(step string) {
				if step == "stored_pending" {
					e.emu.AddFaults(tc.fault) // the change's own grant
				}
			}
			_, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
			if got := errorCode(err); got != tc.want {
				t.Errorf("rotate-root: %s (%v), want %s", got, err, tc.want)
			}
			if e.stored(t).Rotation.PendingSecret != "" {
				t.Error("the pending secret of a change never sent was kept")
			}
		})
	}
}

// The budget's window and next attempt, at their edges.
func TestLoginRecordEdges(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := loginLimits{max: 3, window: 30 * time.Minute}
	var r loginRecord
	for i := range 3 {
		r.add(t0.Add(time.Duration(i)*time.Minute), "refused", l)
	}
	if n := r.inWindow(t0.Add(30*time.Minute), l.window); n != 2 {
		t.Errorf("a refusal exactly a window old still counts: %d in the window, want 2", n)
	}
	if got := r.freeAt(l); !got.Equal(t0.Add(30 * time.Minute)) {
		t.Errorf("next attempt at %s, want when the oldest of the last 3 leaves the window, %s", got, t0.Add(30*time.Minute))
	}
}

// A read that took its view before a change and comes to the gate after it must start
// over: the epoch moves when a change ends as when it begins.
func TestGateEpochMovesWhenAChangeEnds(t *testing.T) {
	t.Parallel()
	g := newGate("failed-logins/test")
	s := &logical.InmemStorage{}
	end, err := g.startChange(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	during := g.epochNow()
	end()
	_, err = g.acquire(t.Context(), s, loginLimits{max: 3, window: time.Hour, wait: time.Second}, callRead, during, time.Now)
	if !errors.Is(err, errStaleView) {
		t.Errorf("a read whose view is from during the change: %v, want errStaleView", err)
	}
}

// A change waits for the grants already at the tenant with the secret it changes.
func TestChangeWaitsForGrantsInFlight(t *testing.T) {
	t.Parallel()
	g := newGate("failed-logins/test")
	s := &logical.InmemStorage{}
	l := loginLimits{max: 3, window: time.Hour, wait: time.Second}
	tk, err := g.acquire(t.Context(), s, l, callRead, g.epochNow(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go func() {
		end, err := g.startChange(context.Background())
		if err == nil {
			end()
		}
		close(started)
	}()
	select {
	case <-started:
		t.Fatal("the change started while a grant was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	tk.done(t.Context(), s, l, nil, time.Now(), true)
	<-started
}

// A refusal whose count could not be stored holds every later call back until it is,
// and is still counted after a restart.
func TestUnstoredRefusalIsNotForgotten(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	if err := e.emu.SetClientSecret(testAppID, testClientID, "Changed-Elsewhere-42"); err != nil {
		t.Fatal(err)
	}
	fs := &keyFailingStorage{Storage: e.storage, key: failedLoginsPrefix + "default"}
	fs.set(true)
	read := func() error {
		_, err := e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.ReadOperation, Path: "token", Storage: fs, MountPoint: "cyberark/"})
		return err
	}
	if err := read(); err == nil {
		t.Fatal("setup: the read was not refused")
	}
	before := e.emu.Stats().TokenRequests
	err := read() // storage still refuses the count
	if errorCode(err) != "503" || e.emu.Stats().TokenRequests != before {
		t.Errorf("a call while the count is not stored: %v, %d token requests; want a 503 and none", err, e.emu.Stats().TokenRequests-before)
	}
	fs.set(false)
	_ = read() // stores the count first, then is refused again
	e.restart(t)
	if rec, _ := e.b.root.gate.status(t.Context(), e.storage); rec.Total < 2 {
		t.Errorf("after a restart the count holds %d refusals, want the unstored one too", rec.Total)
	}
}

// keyFailingStorage fails every Put to key while it is set to.
type keyFailingStorage struct {
	logical.Storage
	key  string
	mu   sync.Mutex
	fail bool
}

func (s *keyFailingStorage) set(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

func (s *keyFailingStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.fail && entry.Key == s.key
	s.mu.Unlock()
	if fail {
		return errors.New("storage unavailable")
	}
	return s.Storage.Put(ctx, entry)
}

// A read granted with a current secret the state says is refused: after the grace the
// pending secret is dropped; within it, the current secret is no longer marked refused.
func TestCurrentSecretWorkingAgainIsNoticed(t *testing.T) {
	t.Parallel()
	for _, afterGrace := range []bool{false, true} {
		e := newRotationEnv(t, nil)
		clock := newFakeClock(e)
		changeElsewhereDuringRotation(t, e)
		if !e.stored(t).Rotation.CurrentRefused {
			t.Fatal("setup: the current secret is not marked refused")
		}
		if afterGrace {
			clock.Advance(pendingGrace + time.Minute)
		}
		if err := e.emu.SetClientSecret(testAppID, testClientID, testClientSecret); err != nil { // an administrator sets it back
			t.Fatal(err)
		}
		e.mustRequest(t, logical.ReadOperation, "token", nil)
		r := e.stored(t).Rotation
		switch {
		case afterGrace && r.status() != rotationStateOK:
			t.Errorf("after the grace: state %q, want ok", r.status())
		case !afterGrace && (r.CurrentRefused || r.PendingSecret == ""):
			t.Errorf("within the grace: current refused %t, pending kept %t; want false and true", r.CurrentRefused, r.PendingSecret != "")
		}
	}
}

// A scheduled time whose window passed moves to the next one, which then rotates.
func TestPassedWindowMovesToTheNextTime(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	clock.Set(time.Date(2026, 1, 1, 2, 0, 0, 0, time.UTC))
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
	clock.Set(time.Date(2026, 1, 1, 5, 30, 0, 0, time.UTC)) // 2h30m past 03:00
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	if n := e.emu.Stats().PasswordChanges; n != 0 {
		t.Errorf("%d changes after the window passed, want 0", n)
	}
	if next := e.stored(t).Rotation.NextRotation; !next.Equal(time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)) {
		t.Errorf("next due %s, want the next day's 03:00", next)
	}
	clock.Set(time.Date(2026, 1, 2, 3, 0, 30, 0, time.UTC))
	_ = e.b.periodic(t.Context(), &logical.Request{Storage: e.storage})
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Errorf("%d changes at the next time, want 1", n)
	}
}

// barrierStorage holds the first four reads of key in pairs: each waits up to 300ms for
// the other read of its pair, so that two callers not kept apart by a lock read the
// same state twice over (once to decide, once to act).
type barrierStorage struct {
	logical.Storage
	key     string
	mu      sync.Mutex
	reads   int
	arrived int
}

func (s *barrierStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if key == s.key {
		s.mu.Lock()
		s.reads++
		k := s.reads
		s.arrived++
		s.mu.Unlock()
		if k <= 4 {
			target := (k + 1) / 2 * 2
			deadline := time.Now().Add(300 * time.Millisecond)
			for time.Now().Before(deadline) {
				s.mu.Lock()
				met := s.arrived >= target
				s.mu.Unlock()
				if met {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
	}
	return s.Storage.Get(ctx, key)
}

// Refusals counted at once, as revoke-all's workers or parallel reads have them, each
// stored by its own call, the first store failing once and tried again later: storage
// ends with every refusal, so that a restart does not forget a failed login. (A copy
// of the count taken at the refusal and written on the retry, after the others had
// stored theirs, overwrote a newer count with an older one: the model test found it.)
func TestGateStoresTheLatestCount(t *testing.T) {
	t.Parallel()
	const n = 20
	g := newGate("failed-logins/test")
	s := &failOnceStorage{Storage: &logical.InmemStorage{}}
	l := loginLimits{max: n + 1, window: time.Hour, wait: 10 * time.Second}
	refused := &client.Error{StatusCode: http.StatusUnauthorized, Code: "invalid_client"}
	var tickets []*ticket
	for range n {
		tk, err := g.acquire(t.Context(), s, l, callOwner, 0, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	var wg sync.WaitGroup
	for _, tk := range tickets {
		wg.Go(func() {
			if _, _, errs := tk.done(t.Context(), s, l, refused, time.Now(), true); len(errs) == storeTries {
				t.Errorf("storing the count: %v", errs)
			}
		})
	}
	wg.Wait()
	entry, err := s.Get(t.Context(), g.key)
	if err != nil || entry == nil {
		t.Fatalf("the stored count: %v, %v", entry, err)
	}
	var rec loginRecord
	if err := entry.DecodeJSON(&rec); err != nil {
		t.Fatal(err)
	}
	if rec.Total != n || len(rec.Refusals) != n {
		t.Errorf("storage holds %d refusals (total %d) after %d: the last write was not the latest count", len(rec.Refusals), rec.Total, n)
	}
}

// failOnceStorage fails its first Put, as a storage that timed out.
type failOnceStorage struct {
	logical.Storage
	failed atomic.Bool
}

func (s *failOnceStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.failed.CompareAndSwap(false, true) {
		return errInjected
	}
	return s.Storage.Put(ctx, e)
}

// TestGateLoadAcrossAnotherNodesWrite: a node loading the failed-login count while
// another node stores a newer one (its Invalidate arriving during the load) ends with
// the newer count, not the one its load read before. Kept, the older count would let
// this node make more failed logins than the budget allows.
func TestGateLoadAcrossAnotherNodesWrite(t *testing.T) {
	t.Parallel()
	g := newGate("failed-logins/test")
	inner := &logical.InmemStorage{}
	held := &blockingStorage{Storage: inner, key: g.key, reached: make(chan struct{}), release: make(chan struct{})}
	loaded := make(chan error, 1)
	go func() { loaded <- g.load(t.Context(), held) }()
	<-held.reached // the load has read storage: nothing yet

	var rec loginRecord
	now := time.Now()
	for i := range 3 {
		rec.add(now.Add(time.Duration(i)*time.Second), "invalid_client", loginLimits{max: 3, window: time.Hour})
	}
	entry, err := logical.StorageEntryJSON(g.key, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := inner.Put(t.Context(), entry); err != nil {
		t.Fatal(err)
	}
	g.invalidate()
	close(held.release)
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	got, err := g.status(t.Context(), inner)
	if err != nil {
		t.Fatal(err)
	}
	if got.Total != 3 {
		t.Errorf("the gate holds %d refusals after another node stored 3 during its load", got.Total)
	}
}
