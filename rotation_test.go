package cyberark

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestScheduledRotationOncePerDueTime walks a fake clock through a rotation period: one
// rotation per due time, none before it, one for several missed due times, and the
// grid kept.
func TestScheduledRotationOncePerDueTime(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	start := clock.Now()
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "10s"})
	due := e.stored(t).Rotation.NextRotation
	if !due.Equal(start.Add(10 * time.Second)) {
		t.Fatalf("first due time %s, want %s", due, start.Add(10*time.Second))
	}
	read := e.mustRequest(t, logical.ReadOperation, "config", nil).Data
	if read["rotation_period"] != float64(10) || read["next_vault_rotation"] == nil {
		t.Errorf("config read: rotation_period %v, next_vault_rotation %v", read["rotation_period"], read["next_vault_rotation"])
	}

	changes := func() int64 { return e.emu.Stats().PasswordChanges }
	tick := func() {
		t.Helper()
		if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
			t.Fatalf("periodic: %v", err)
		}
	}
	clock.Advance(9 * time.Second)
	tick()
	if n := changes(); n != 0 {
		t.Fatalf("%d rotations before the due time", n)
	}
	clock.Advance(time.Second)
	tick()
	tick()
	if n := changes(); n != 1 {
		t.Fatalf("%d rotations at the due time, want exactly 1", n)
	}
	if next := e.stored(t).Rotation.NextRotation; !next.Equal(due.Add(10 * time.Second)) {
		t.Errorf("next due %s, want %s: the grid must hold", next, due.Add(10*time.Second))
	}
	// Three due times pass unseen (the node was down): one rotation, back on the grid.
	clock.Advance(35 * time.Second)
	tick()
	if n := changes(); n != 2 {
		t.Fatalf("%d rotations after missed due times, want 2 in all", n)
	}
	if next := e.stored(t).Rotation.NextRotation; !next.Equal(due.Add(40 * time.Second)) {
		t.Errorf("next due %s, want %s", next, due.Add(40*time.Second))
	}
	e.assertWorkingSecret(t)

	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"disable_automated_rotation": true})
	if next := e.stored(t).Rotation.NextRotation; !next.IsZero() {
		t.Errorf("disabled rotation still due at %s", next)
	}
	clock.Advance(time.Hour)
	tick()
	if n := changes(); n != 2 {
		t.Errorf("a disabled schedule rotated (%d rotations)", n)
	}
}

// TestScheduledRotationFiresOnTime uses the real clock: the engine's own timer rotates at
// the due time, without waiting for Vault's once-a-minute periodic call.
func TestScheduledRotationFiresOnTime(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "5s"})
	due := e.stored(t).Rotation.NextRotation
	deadline := time.Now().Add(10 * time.Second)
	for e.emu.Stats().PasswordChanges == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if e.emu.Stats().PasswordChanges != 1 {
		t.Fatal("the timer did not rotate within 5s of the due time")
	}
	var at time.Time
	for _, r := range e.emu.Requests() {
		if r.Path == "/UserMgmt/ChangeUserPassword" {
			at = r.Time
		}
	}
	if at.Before(due) {
		t.Errorf("rotated at %s, before the due time %s", at, due)
	}
	t.Logf("rotation due %s, password changed %s after it", due.Format(time.RFC3339Nano), at.Sub(due))
	// The secret settles before the next due time; wait for the store.
	for e.stored(t).Rotation.LastRotation.IsZero() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	e.assertWorkingSecret(t)
}

func TestRotationScheduleInvalid(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		data  map[string]any
		field string
	}{
		{"period and schedule", map[string]any{"rotation_period": "1h", "rotation_schedule": "0 * * * *"}, "rotation_schedule"},
		{"period too short", map[string]any{"rotation_period": "2s"}, "rotation_period"},
		{"schedule not cron", map[string]any{"rotation_schedule": "every day"}, "rotation_schedule"},
		{"window without schedule", map[string]any{"rotation_window": "1h"}, "rotation_window"},
		{"password_length too short", map[string]any{"password_length": 8}, "password_length"},
		{"password_length too long", map[string]any{"password_length": 65}, "password_length"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			before := storedJSON(t, e.storage, "config")
			resp, err := e.request(t, logical.UpdateOperation, "config", tc.data)
			assertBadRequest(t, resp, err, tc.field)
			if storedJSON(t, e.storage, "config") != before {
				t.Error("the config changed")
			}
		})
	}
	t.Run("period stored, schedule written", func(t *testing.T) {
		t.Parallel()
		e := newRotationEnv(t, nil)
		e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "1h"})
		resp, err := e.request(t, logical.UpdateOperation, "config", map[string]any{"rotation_schedule": "0 * * * *"})
		assertBadRequest(t, resp, err, "rotation_schedule")
		e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_schedule": "0 * * * *", "rotation_period": 0})
	})
	t.Run("scheduled rotation without a tenant", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		data := e.configData()
		delete(data, "tenant_url")
		delete(data, "app_id")
		data["token_url"] = e.url + "/oauth2/token/" + testAppID
		data["rotation_period"] = "1h"
		resp, err := e.request(t, logical.CreateOperation, "config", data)
		assertBadRequest(t, resp, err, "tenant_url")
	})
}

// rotationManagerView plays Vault Enterprise's rotation manager for the plugin.
type rotationManagerView struct {
	logical.StaticSystemView
	mu           sync.Mutex
	registered   []rotation.RotationJobConfigureRequest
	deregistered int
}

func (v *rotationManagerView) RegisterRotationJob(_ context.Context, req *rotation.RotationJobConfigureRequest) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.registered = append(v.registered, *req)
	return "rotation-id-1", nil
}

func (v *rotationManagerView) DeregisterRotationJob(context.Context, *rotation.RotationJobDeregisterRequest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.deregistered++
	return nil
}

// TestRotationManagerDrivesTheSchedule: where Vault has a rotation manager, the engine
// registers the job with it, keeps no timer of its own, and rotates when it calls.
func TestRotationManagerDrivesTheSchedule(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	view := &rotationManagerView{StaticSystemView: logical.StaticSystemView{}}
	if err := e.b.Setup(t.Context(), &logical.BackendConfig{Logger: e.b.Logger(), System: view, StorageView: e.storage}); err != nil {
		t.Fatal(err)
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
	if len(view.registered) != 1 {
		t.Fatalf("%d jobs registered, want 1", len(view.registered))
	}
	job := view.registered[0]
	if job.ReqPath != "config" || job.RotationSchedule != "0 3 * * *" || job.RotationWindow != time.Hour {
		t.Errorf("registered job %+v", job)
	}
	cfg := e.stored(t)
	if cfg.Rotation.RotationID != "rotation-id-1" || !cfg.Rotation.NextRotation.IsZero() {
		t.Errorf("rotation id %q, own next rotation %s: the manager must own the schedule", cfg.Rotation.RotationID, cfg.Rotation.NextRotation)
	}
	if err := e.b.rotateCredential(t.Context(), &logical.Request{Storage: e.storage, Path: "config"}); err != nil {
		t.Fatal(err)
	}
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Errorf("%d rotations after the manager's call, want 1", n)
	}
	e.assertWorkingSecret(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"disable_automated_rotation": true})
	if view.deregistered != 1 || e.stored(t).Rotation.RotationID != "" {
		t.Errorf("disabling: %d deregistrations, rotation id %q", view.deregistered, e.stored(t).Rotation.RotationID)
	}
}

// TestRotationOnlyWhereStorageIsWritten: a performance standby or secondary neither
// settles nor rotates; the active node does.
func TestRotationOnlyWhereStorageIsWritten(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "10s"})
	clock.Advance(time.Minute)
	for _, state := range []consts.ReplicationState{consts.ReplicationPerformanceStandby, consts.ReplicationPerformanceSecondary, consts.ReplicationDRSecondary} {
		view := logical.StaticSystemView{ReplicationStateVal: state}
		if err := e.b.Setup(t.Context(), &logical.BackendConfig{Logger: e.b.Logger(), System: view, StorageView: e.storage}); err != nil {
			t.Fatal(err)
		}
		if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
			t.Fatal(err)
		}
		if err := e.b.Initialize(t.Context(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
			t.Fatal(err)
		}
		if n := e.emu.Stats().PasswordChanges; n != 0 {
			t.Fatalf("a node in replication state %v rotated", state)
		}
	}
	if err := e.b.Setup(t.Context(), &logical.BackendConfig{Logger: e.b.Logger(), System: logical.StaticSystemView{}, StorageView: e.storage}); err != nil {
		t.Fatal(err)
	}
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if n := e.emu.Stats().PasswordChanges; n != 1 {
		t.Fatalf("the active node made %d rotations, want 1", n)
	}
}

// TestRotationWhenTheTenantEndsOldTokens: whether or not the tenant ends tokens issued
// before a password change, leases from before a rotation still end cleanly and new
// reads work.
func TestRotationWhenTheTenantEndsOldTokens(t *testing.T) {
	t.Parallel()
	for _, ends := range []bool{false, true} {
		e := newRotationEnv(t, func(c *emulator.Config) { c.RevokeTokensOnPasswordChange = ends })
		old := e.mustRequest(t, logical.ReadOperation, "token", nil)
		e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
		if _, err := e.revoke(t, old.Secret); err != nil {
			t.Errorf("tokens ended by the change %t: revoking a lease from before the rotation: %v", ends, err)
		}
		e.assertWorkingSecret(t)
	}
}

// TestPasswordChangeEndsTokens: on a tenant that ends tokens at a password change, a
// config that says so bounds leases and lease-free ttl by the next scheduled rotation,
// and a rotation says that earlier tokens are dead; reused tokens are dropped either way.
func TestPasswordChangeEndsTokens(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, func(c *emulator.Config) { c.RevokeTokensOnPasswordChange = true })
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"password_change_ends_tokens": true, "rotation_period": "20m"})
	e.mustRequest(t, logical.CreateOperation, "roles/free", map[string]any{"token_reuse": true, "lease_free": true})
	next := e.stored(t).Rotation.NextRotation
	leased := e.mustRequest(t, logical.ReadOperation, "token", nil)
	if ttl := leased.Secret.TTL; ttl > time.Until(next)+time.Second || ttl < time.Until(next)-5*time.Second {
		t.Errorf("lease TTL %s, want about %s: the next rotation ends the token", ttl, time.Until(next).Round(time.Second))
	}
	free := e.mustRequest(t, logical.ReadOperation, "token/free", nil)
	if ttl := free.Data["ttl"].(int64); time.Duration(ttl)*time.Second > time.Until(next)+time.Second {
		t.Errorf("lease-free ttl %ds, beyond the next rotation in %s", ttl, time.Until(next).Round(time.Second))
	}
	resp := e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	if len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "no longer work") {
		t.Errorf("rotate-root warnings %v, want one that says earlier tokens no longer work", resp.Warnings)
	}
	if after := e.mustRequest(t, logical.ReadOperation, "token/free", nil); after.Data["access_token"] == free.Data["access_token"] {
		t.Error("a reused token from before the rotation was handed out after it")
	}
	if read := e.mustRequest(t, logical.ReadOperation, "config", nil); read.Data["password_change_ends_tokens"] != true {
		t.Errorf("config read: password_change_ends_tokens %v", read.Data["password_change_ends_tokens"])
	}
}

// TestSchedulerHoldsOffAfterAFailure: a due time in the past whose rotation failed, and
// whose next time could not be stored, must not make the timer fire again at once.
func TestSchedulerHoldsOffAfterAFailure(t *testing.T) {
	t.Parallel()
	sc := newScheduler()
	defer sc.stop(time.Second)
	now := time.Now()
	sc.holdOff(now.Add(time.Hour))
	fired := make(chan struct{}, 1)
	sc.arm(now.Add(-time.Minute), now, func(context.Context) { fired <- struct{}{} })
	select {
	case <-fired:
		t.Fatal("the timer fired before the hold-off")
	case <-time.After(200 * time.Millisecond):
	}
	sc.holdOff(time.Time{})
	sc.arm(now.Add(-time.Minute), now, func(context.Context) { fired <- struct{}{} })
	select {
	case <-fired:
	case <-time.After(2 * time.Second):
		t.Fatal("a due time in the past did not fire once the hold-off was lifted")
	}
}

// TestSchedulerStopWaitsForARunningRotation: stopping (unmount, reload, step-down) cuts
// short a rotation the timer started and waits for it, so no rotation of this instance
// runs on beside the next one.
func TestSchedulerStopWaitsForARunningRotation(t *testing.T) {
	t.Parallel()
	sc := newScheduler()
	started, finished := make(chan struct{}), make(chan struct{})
	sc.arm(time.Now(), time.Now(), func(ctx context.Context) {
		close(started)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond)
		close(finished)
	})
	<-started
	sc.stop(5 * time.Second)
	select {
	case <-finished:
	default:
		t.Fatal("stop returned while the rotation it started was still running")
	}
	sc.arm(time.Now(), time.Now(), func(context.Context) { t.Error("a stopped scheduler fired") })
	time.Sleep(50 * time.Millisecond)
}

// TestManualRotationKeepsTheSchedule: a rotate-root between due times leaves the next
// due time where it was.
func TestManualRotationKeepsTheSchedule(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "1h"})
	due := e.stored(t).Rotation.NextRotation
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	if got := e.stored(t).Rotation.NextRotation; !got.Equal(due) {
		t.Errorf("next due moved from %s to %s", due, got)
	}
}

// TestReadsWaitForARotationInsteadOfFailing: token reads during a rotation's change wait
// for the new secret rather than each making a failed login with the old one.
func TestReadsWaitForARotationInsteadOfFailing(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.b.afterRotationStep = func(step string) {
		if step == "stored_pending" {
			e.emu.Reset() // count from the change on
			e.emu.AddFaults(emulator.Fault{Endpoint: "change_password", ApplyFirst: true, Delay: 400 * time.Millisecond, Times: 1})
		}
	}
	rotated := make(chan error, 1)
	go func() {
		_, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
		rotated <- err
	}()
	time.Sleep(150 * time.Millisecond) // the change is at the tenant, its answer delayed
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.mustRequest(t, logical.ReadOperation, "token", nil)
		}()
	}
	wg.Wait()
	if err := <-rotated; err != nil {
		t.Fatal(err)
	}
	if n := e.emu.Stats().TokenErrors; n != 0 {
		t.Errorf("%d token requests were refused during the rotation", n)
	}
}

// TestReuseHitsNeverWaitForARotation: while a password change is at the tenant, a read
// served from the reuse cache is answered (it makes no grant), and a read that needs a
// grant waits for the change's outcome instead of trying the old secret. Ordering, not
// timing: the change is held open until the cache hit has been answered.
func TestReuseHitsNeverWaitForARotation(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	cached := e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"]
	hit := make(chan any, 1)
	granted := make(chan error, 1)
	release := make(chan struct{})
	e.b.afterRotationStep = func(step string) {
		if step != "tenant_changed" {
			return
		}
		go func() {
			resp, err := e.request(t, logical.ReadOperation, "token/shared", nil)
			if err != nil {
				hit <- err
				return
			}
			hit <- resp.Data["access_token"]
		}()
		go func() {
			_, err := e.request(t, logical.ReadOperation, "token", nil) // needs a grant
			granted <- err
		}()
		select {
		case got := <-hit:
			if got != cached {
				t.Errorf("the reuse read during the change answered %v, want the cached token", got)
			}
		case <-time.After(10 * time.Second):
			t.Error("a reuse-cache hit waited for the password change")
		}
		select {
		case err := <-granted:
			t.Errorf("a read that needs a grant went ahead during the change (err %v)", err)
		default:
		}
		close(release)
	}
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	<-release
	if err := <-granted; err != nil {
		t.Errorf("the read held back by the change: %v", err)
	}
	if n := e.emu.Stats().TokenErrors; n != 0 {
		t.Errorf("%d token requests were refused", n)
	}
}
