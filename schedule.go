package cyberark

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/helper/automatedrotationutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
)

// When rotations happen: due times, the engine's own timer, Vault's rotation manager.
// How one happens is rotation.go's.

const (
	// minRotationPeriod keeps a mistyped period from rotating the secret in a loop.
	minRotationPeriod = 5 * time.Second
	// minRotationWindow is the shortest window Vault's rotation manager takes.
	minRotationWindow = time.Hour
	// rotationRetryDelay is how long a failed scheduled rotation waits before it is
	// tried again; it doubles with each failure in a row, up to maxRotationRetryDelay.
	rotationRetryDelay    = time.Minute
	maxRotationRetryDelay = 6 * time.Hour
)

// nextRotation is when the engine's own scheduler rotates next after now, given the
// previous due time; zero when it schedules nothing. A period keeps its grid: a
// rotation late by a little does not push every later one back.
func (c *cyberarkConfig) nextRotation(now, prevDue time.Time) time.Time {
	switch {
	case c.DisableAutomatedRotation || c.Rotation.RotationID != "":
		return time.Time{}
	case c.RotationPeriod > 0:
		switch {
		case prevDue.IsZero() || prevDue.After(now.Add(c.RotationPeriod)):
			return now.Add(c.RotationPeriod)
		case prevDue.After(now):
			return prevDue // not due yet: a rotation outside the schedule leaves it be
		}
		missed := now.Sub(prevDue)/c.RotationPeriod + 1
		return prevDue.Add(missed * c.RotationPeriod)
	case c.RotationSchedule != "":
		sched, err := rotation.DefaultScheduler.Parse(c.RotationSchedule)
		if err != nil {
			return time.Time{}
		}
		return sched.Next(now)
	}
	return time.Time{}
}

// scheduler fires the engine's own rotation schedule where Vault's rotation manager is
// not available (Vault Community Edition). The periodic function checks the same due
// time, about once a minute, in case a timer was lost.
type scheduler struct {
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
	// notBefore holds the next attempt back after a failure, in memory, so that a
	// failure to store the next due time cannot make the timer fire again at once.
	notBefore time.Time
	// ctx ends when the scheduler stops, cutting short a rotation the timer started;
	// running lets stop wait for it.
	ctx     context.Context
	cancel  context.CancelFunc
	running sync.WaitGroup
}

func newScheduler() *scheduler {
	ctx, cancel := context.WithCancel(context.Background())
	return &scheduler{ctx: ctx, cancel: cancel}
}

// arm sets the timer to fire at due, or at notBefore if that is later; a zero due
// disarms it.
func (sc *scheduler) arm(due, now time.Time, fire func(context.Context)) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.timer != nil {
		sc.timer.Stop()
		sc.timer = nil
	}
	if sc.stopped || due.IsZero() {
		return
	}
	at := due
	if sc.notBefore.After(at) {
		at = sc.notBefore
	}
	sc.timer = time.AfterFunc(max(at.Sub(now), 0), func() {
		sc.mu.Lock()
		if sc.stopped {
			sc.mu.Unlock()
			return
		}
		sc.running.Add(1)
		sc.mu.Unlock()
		defer sc.running.Done()
		fire(sc.ctx)
	})
}

// holdOff keeps the timer from firing before t.
func (sc *scheduler) holdOff(t time.Time) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.notBefore = t
}

// stop disarms the timer for good, cuts short a rotation it started, and waits for
// that to end, up to limit: the engine is being unmounted, reloaded or stepped down,
// and another instance may take over the schedule.
func (sc *scheduler) stop(limit time.Duration) {
	sc.mu.Lock()
	sc.stopped = true
	if sc.timer != nil {
		sc.timer.Stop()
		sc.timer = nil
	}
	sc.cancel()
	sc.mu.Unlock()
	done := make(chan struct{})
	go func() {
		sc.running.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
	}
}

// armSchedule sets the timer from the stored config: the due time, or the retry
// time of a failed rotation if that is later.
func (c *credential) armSchedule(cfg *cyberarkConfig) {
	b := c.b
	var due time.Time
	if cfg != nil && !cfg.Rotation.NextRotation.IsZero() {
		due = cfg.Rotation.NextRotation
		if cfg.Rotation.RetryAt.After(due) {
			due = cfg.Rotation.RetryAt
		}
	}
	c.sched.arm(due, b.now(), func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 2*maxTotalTimeout)
		defer cancel()
		_ = c.rotateIfDue(ctx, b.storage) // it logs its own failures
	})
}

// rotateIfDue rotates when the schedule says so. It runs only where storage can be
// written (the active node, never a performance standby or secondary), and the due
// time is stored with the secret and acted on under the owner lock, so a due time is
// served once whichever of the timer and the periodic function gets there first, and
// the rotation checks again, after settling an earlier one, that it is still due. A
// failure holds the next try back, doubling each time, without moving the due time;
// an unresolved rotation is left to the operator.
func (c *credential) rotateIfDue(ctx context.Context, s logical.Storage) error {
	b := c.b
	if s == nil || !b.WriteSafeReplicationState() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, err := c.load(ctx, s)
	if err != nil || cfg == nil {
		if err != nil {
			c.sched.holdOff(b.now().Add(rotationRetryDelay))
		}
		return err
	}
	defer func() {
		cfg, err := c.load(ctx, s)
		if err != nil {
			b.Logger().Warn("could not read the config to re-arm the rotation timer; the periodic function checks the schedule", "client", c.name, "error", err)
			return
		}
		c.armSchedule(cfg)
	}()
	now := b.now()
	due := cfg.Rotation.NextRotation
	switch {
	case due.IsZero() || now.Before(due) || now.Before(cfg.Rotation.RetryAt):
		return nil
	case cfg.Rotation.Unresolved:
		// Each try would be failed logins: the operator fixes the user first, and the
		// timer waits a while after that too.
		c.sched.holdOff(now.Add(rotationRetryDelay))
		return nil
	case cfg.RotationSchedule != "" && cfg.RotationWindow > 0 && now.After(due.Add(cfg.RotationWindow)):
		b.Logger().Warn("scheduled root rotation skipped: its window passed", "client", c.name, "due", due.UTC(), "rotation_window", cfg.RotationWindow)
		if err := c.windowPassed(ctx, s, cfg, now); err != nil {
			c.sched.holdOff(now.Add(rotationRetryDelay))
			return err
		}
		return nil
	}
	b.Logger().Info("scheduled root rotation", "client", c.name, "due", due.UTC())
	_, rerr := c.rotate(ctx, s, rotationTrigger{due: due})
	b.countRotation(c.name, rerr)
	if rerr == nil || errors.Is(rerr, errNotDue) {
		c.sched.holdOff(time.Time{})
		return nil
	}
	if cfg, err = c.load(ctx, s); err != nil || cfg == nil {
		c.sched.holdOff(now.Add(rotationRetryDelay))
		return errors.Join(rerr, err)
	}
	retry, serr := c.failed(ctx, s, cfg, now, true, rerr)
	c.sched.holdOff(retry)
	b.Logger().Error("scheduled root rotation failed", "client", c.name, "error", rerr, "failures_in_a_row", cfg.Rotation.Failures, "next_try", retry.UTC())
	if serr != nil {
		return errors.Join(rerr, fmt.Errorf("storing the next try's time: %w", serr))
	}
	return rerr
}

// windowPassed: a scheduled time whose rotation_window passed moves to the next one.
func (c *credential) windowPassed(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, now time.Time) error {
	cfg.Rotation.NextRotation = cfg.nextRotation(now, cfg.Rotation.NextRotation)
	cfg.Rotation.RetryAt, cfg.Rotation.Failures = time.Time{}, 0
	return c.storeState(ctx, s, cfg)
}

// scheduleRotation hands the rotation schedule to Vault's rotation manager where there
// is one (Vault Enterprise), and otherwise to the engine's own scheduler.
func (c *credential) scheduleRotation(ctx context.Context, req *logical.Request, cfg *cyberarkConfig) error {
	b := c.b
	if cfg.ShouldDeregisterRotationJob() {
		if cfg.Rotation.RotationID != "" {
			err := b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{MountPoint: req.MountPoint, ReqPath: c.key})
			if err != nil {
				return fmt.Errorf("removing the rotation job from Vault's rotation manager: %w", err)
			}
		}
		cfg.Rotation.scheduleState = scheduleState{}
		return nil
	}
	id, err := b.System().RegisterRotationJob(ctx, &rotation.RotationJobConfigureRequest{
		Name:             c.jobName(),
		MountPoint:       req.MountPoint,
		ReqPath:          c.key,
		RotationSchedule: cfg.RotationSchedule,
		RotationWindow:   cfg.RotationWindow,
		RotationPeriod:   cfg.RotationPeriod,
		RotationPolicy:   cfg.RotationPolicy,
	})
	switch {
	case err == nil:
		cfg.Rotation.scheduleState = scheduleState{RotationID: id}
	case rotationManagerMissing(err):
		cfg.Rotation.scheduleState = scheduleState{}
		cfg.Rotation.NextRotation = cfg.nextRotation(b.now(), time.Time{})
	default:
		return fmt.Errorf("registering the rotation job with Vault's rotation manager: %w", err)
	}
	return nil
}

// rotationManagerMissing recognises Vault Community Edition's answer to a rotation job,
// and an older Vault that does not know the call at all. Errors lose their type on
// the way from Vault to the plugin, so the text is what can be compared.
func rotationManagerMissing(err error) bool {
	msg := err.Error()
	return errors.Is(err, automatedrotationutil.ErrRotationManagerUnsupported) ||
		strings.Contains(msg, automatedrotationutil.ErrRotationManagerUnsupported.Error()) ||
		strings.Contains(msg, "not implemented") || strings.Contains(msg, "Unimplemented")
}

// restoreRotationJob puts Vault's rotation manager back as old (the stored config) has
// it, after a write that changed the job failed to store next. Best effort: it logs
// what it cannot undo.
func (c *credential) restoreRotationJob(ctx context.Context, req *logical.Request, old, next *cyberarkConfig) {
	b := c.b
	var err error
	switch {
	case old.Rotation.RotationID != "":
		_, err = b.System().RegisterRotationJob(ctx, &rotation.RotationJobConfigureRequest{
			Name: c.jobName(), MountPoint: req.MountPoint, ReqPath: c.key,
			RotationSchedule: old.RotationSchedule, RotationWindow: old.RotationWindow,
			RotationPeriod: old.RotationPeriod, RotationPolicy: old.RotationPolicy,
		})
	case next.Rotation.RotationID != "":
		err = b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{MountPoint: req.MountPoint, ReqPath: c.key})
	}
	if err != nil {
		b.Logger().Error("the config was not stored, and Vault's rotation manager could not be put back as it has it", "error", err)
	}
}

// jobName names the credential's job in Vault's rotation manager: "root" for the
// default client, as earlier releases registered it.
func (c *credential) jobName() string {
	if c.name == defaultClient {
		return "root"
	}
	return "client-" + c.name
}
