package cyberark

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

const (
	// minRotationPeriod keeps a mistyped period from rotating the secret in a loop.
	minRotationPeriod = 5 * time.Second
	// rotationRetryDelay is how long a failed scheduled rotation waits before it is
	// tried again; it doubles with each failure in a row, up to maxRotationRetryDelay.
	rotationRetryDelay    = time.Minute
	maxRotationRetryDelay = 6 * time.Hour

	// pendingGrace is how long a pending secret that the tenant refuses is kept, in
	// case a change request still in flight (cut off by a timeout, or by the death of
	// the process that sent it) is applied late. It outlasts the longest exchange
	// (request_timeout, at most 5m) with room to spare. Until it has passed, a refused
	// pending secret is neither dropped nor declared unresolved.
	pendingGrace = 10 * time.Minute
	// settleInterval spaces the periodic checks of a pending rotation: each check may
	// be a failed login, and failed logins count towards locking the service user.
	settleInterval = 2 * time.Minute
	// readSettleInterval spaces the checks that refused token reads trigger.
	readSettleInterval = 10 * time.Second

	changePasswordPath = "/UserMgmt/ChangeUserPassword" //nolint:gosec // an API path, not a credential

	rotationStateOK         = "ok"
	rotationStatePending    = "pending"
	rotationStateUnresolved = "unresolved"
)

// rotationState is what the engine remembers about root rotation, stored in the config
// entry beside the secret, so that the secret and the state always change together.
type rotationState struct {
	// PendingSecret is a new secret that a rotation is setting, or set, at the tenant.
	// It is stored before the tenant is asked, so that no secret the tenant may accept
	// ever lives only in memory.
	PendingSecret string    `json:"pending_secret,omitempty"`
	PendingSince  time.Time `json:"pending_since,omitempty"`
	// Unresolved is set when the tenant has accepted neither the pending nor the current
	// secret for longer than pendingGrace; both are kept until one works or an operator
	// writes one.
	Unresolved bool `json:"unresolved,omitempty"`
	// LastCheck is when a settle last asked the tenant about a pending secret.
	LastCheck time.Time `json:"last_check,omitempty"`
	// LastRotation is when the secret was last changed by a rotation.
	LastRotation time.Time `json:"last_rotation,omitempty"`
	// NextRotation is when the engine's own scheduler rotates next; zero when nothing
	// is scheduled or Vault's rotation manager drives the schedule.
	NextRotation time.Time `json:"next_rotation,omitempty"`
	// Failures counts scheduled rotations that failed in a row, for their backoff.
	Failures int `json:"failures,omitempty"`
	// RotationID is set while Vault's rotation manager (Enterprise) holds the job.
	RotationID string `json:"rotation_id,omitempty"`
	// LastError is the last failed rotation's error, without secrets.
	LastError string `json:"last_error,omitempty"`
}

func (r *rotationState) status() string {
	switch {
	case r.Unresolved:
		return rotationStateUnresolved
	case r.PendingSecret != "":
		return rotationStatePending
	default:
		return rotationStateOK
	}
}

// changePasswordURL is where the service user's password is changed; rotation needs
// the tenant, so it is empty without tenant_url.
func (c *cyberarkConfig) changePasswordURL() string {
	if c.TenantURL == "" {
		return ""
	}
	return strings.TrimRight(c.TenantURL, "/") + changePasswordPath
}

// withSecret is a copy of c that authenticates with secret.
func (c *cyberarkConfig) withSecret(secret string) *cyberarkConfig {
	cp := *c
	cp.ClientSecret = secret
	return &cp
}

// errRotation is a rotation failure the caller should see as its own mistake or the
// tenant's refusal (a 400), not an engine failure.
type errRotation struct{ msg string }

func (e *errRotation) Error() string { return e.msg }

// errUnresolved says the tenant accepts neither secret. It is a conflict with the
// tenant's state, not a server failure: Vault clients retry 5xx answers, and every
// retry would add two failed logins towards locking the service user.
var errUnresolved = logical.CodedError(http.StatusConflict,
	"root rotation unresolved: the tenant accepts neither the current nor the new secret, and both are kept; fix the service user at the tenant, then write the secret it accepts to client_secret (see the rotation runbook)")

// errPending says an earlier rotation is not settled yet: the tenant has accepted
// neither secret so far, and both are kept while a late change may still land.
var errPending = logical.CodedError(http.StatusConflict,
	"an earlier root rotation is not settled yet: both secrets are kept and the engine checks which one the tenant accepts every few minutes; try again later")

// rotateRoot changes the client secret: generate, store as pending, change at the
// tenant, check with a grant, store as current. Each step is safe to die after: the
// stored config always holds every secret the tenant may accept, and settle finds out
// which one it does. Rotations and config writes are serialised by configMu. manual is
// true for an operator's request, which may retry an unresolved rotation; the schedule
// never does, since each try is failed logins at the tenant.
func (b *backend) rotateRoot(ctx context.Context, s logical.Storage, manual bool) (*cyberarkConfig, error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := b.rotateRootLocked(ctx, s, manual)
	if err == nil {
		b.armSchedule(cfg)
	}
	return cfg, err
}

// rotateRootLocked is rotateRoot for a caller that holds configMu.
func (b *backend) rotateRootLocked(ctx context.Context, s logical.Storage, manual bool) (*cyberarkConfig, error) {
	cfg, err := readConfig(ctx, s)
	switch {
	case err != nil:
		return nil, err
	case cfg == nil:
		return nil, &errRotation{"the engine is not configured: write the config first"}
	case cfg.changePasswordURL() == "":
		return nil, &errRotation{"rotation needs tenant_url: the secret is changed through the tenant's UserMgmt/ChangeUserPassword"}
	case !b.WriteSafeReplicationState():
		return nil, errors.New("root rotation runs only on the node that writes storage (the active node of the primary cluster)")
	}
	if cfg.Rotation.PendingSecret != "" {
		if cfg.Rotation.Unresolved && !manual {
			return nil, errUnresolved
		}
		// An earlier rotation did not finish: settle it before starting another.
		if cfg, _, err = b.settleLocked(ctx, s, cfg, true); err != nil {
			return nil, fmt.Errorf("settling an earlier rotation first: %w", err)
		}
		switch {
		case cfg.Rotation.Unresolved:
			return nil, errUnresolved
		case cfg.Rotation.PendingSecret != "":
			return nil, errPending
		}
	}

	secret, err := b.newPassword(ctx, cfg)
	if err != nil {
		return nil, err
	}
	current, err := b.newTenantClient(cfg, cfg.AppID)
	if err != nil {
		return nil, err
	}
	defer current.Close()

	// Step 1: the new secret is in Vault before the tenant hears of it.
	cfg.Rotation.PendingSecret = secret
	cfg.Rotation.PendingSince = b.now().UTC()
	cfg.Rotation.Unresolved = false
	if err := b.storeConfig(ctx, s, cfg); err != nil {
		return nil, fmt.Errorf("storing the new secret before changing it at the tenant (nothing was changed): %w", err)
	}
	b.rotationStep("stored_pending")

	// Token reads wait from the change until the new secret is stored, rather than
	// each adding a failed login with a secret the tenant no longer takes.
	b.rotating.Lock()
	defer b.rotating.Unlock()

	// Step 2: the tenant changes it.
	bearer, err := current.ChangePassword(ctx, cfg.changePasswordURL(), cfg.RotationScopes, secret)
	b.rotationStep("tenant_changed")
	if err != nil && !errors.Is(err, client.ErrOutcomeUnknown) {
		// The tenant said no, or was never asked: the pending secret is worthless.
		b.revokeQuietly(ctx, current, bearer)
		b.Logger().Error("root rotation: the tenant did not change the secret", "error", err)
		cfg.Rotation.PendingSecret, cfg.Rotation.PendingSince = "", time.Time{}
		cfg.Rotation.LastError = err.Error()
		if serr := b.storeConfig(ctx, s, cfg); serr != nil {
			b.Logger().Error("root rotation: could not drop the refused secret; it is settled later", "error", serr)
		}
		var te *client.Error
		var me *client.ManagementError
		if errors.As(err, &me) || errors.As(err, &te) && te.Refused() {
			return nil, &errRotation{"the tenant did not change the secret, which stays as it was: " + err.Error()}
		}
		return nil, fmt.Errorf("the secret stays as it was: %w", err)
	}
	if err != nil {
		b.Logger().Warn("root rotation: no answer from the tenant to the change; finding out which secret it accepts", "error", err)
	}

	// Steps 3 and 4: a grant shows which secret the tenant accepts, and that one stays.
	cfg, _, serr := b.settleLocked(ctx, s, cfg, true)
	if kept, cerr := b.newTenantClient(cfg, cfg.AppID); cerr == nil {
		// The token that could change the password has served; whichever secret the
		// tenant now takes authenticates its revocation.
		b.revokeQuietly(ctx, kept, bearer)
		kept.Close()
	}
	switch {
	case serr != nil:
		return nil, serr
	case cfg.Rotation.Unresolved:
		return nil, errUnresolved
	case cfg.Rotation.PendingSecret != "":
		// The last check's own words say which secret the tenant still takes.
		return nil, fmt.Errorf("the rotation is not settled: %s: %w", cfg.Rotation.LastError, client.ErrOutcomeUnknown)
	case cfg.ClientSecret != secret:
		return nil, &errRotation{"the tenant kept the current secret: " + cfg.Rotation.LastError}
	}
	return cfg, nil
}

// revokeQuietly revokes a token the engine no longer needs (a check's, or the one that
// authorised a password change), best effort: it only shortens how long the token
// stays usable, so a failure does not fail the caller. It is a warning all the same,
// since such a token, the rotation's above all, stays valid until it expires.
func (b *backend) revokeQuietly(ctx context.Context, c *client.Client, token string) {
	if token == "" {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Revoke(rctx, token); err != nil && !errors.Is(err, client.ErrRevokeUnsupported) {
		b.Logger().Warn("could not revoke a token the engine no longer needs; it stays valid until it expires", "error", err)
	}
}

// settleLocked finds out which of the pending and current secrets the tenant accepts,
// by a grant with the pending one and, when full and that is refused, the current one,
// and keeps the one it accepts. A refused pending secret is kept for pendingGrace, in
// case a change still in flight lands late; after that it is dropped if the current one
// works, and both are kept, unresolved, if neither does. If the tenant cannot be asked,
// nothing changes and the error says why. changed reports whether the stored secret
// changed. The caller holds configMu.
func (b *backend) settleLocked(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, full bool) (_ *cyberarkConfig, changed bool, _ error) {
	pending := cfg.Rotation.PendingSecret
	if pending == "" {
		return cfg, false, nil
	}
	now := b.now().UTC()
	accepted, err := b.accepts(ctx, cfg.withSecret(pending))
	if err != nil {
		return cfg, false, fmt.Errorf("checking the new secret at the tenant: %w", err)
	}
	if accepted {
		cfg.ClientSecret = pending
		cfg.Rotation = rotationState{
			LastRotation: now,
			NextRotation: cfg.nextRotation(now, cfg.Rotation.NextRotation),
			RotationID:   cfg.Rotation.RotationID,
		}
		if err := b.storeConfig(ctx, s, cfg); err != nil {
			// The pending secret is still stored, and the next settle promotes it.
			return cfg, false, fmt.Errorf("storing the new secret, which the tenant accepts (it stays stored as pending and is settled later): %w", err)
		}
		b.Logger().Info("root rotation: the tenant accepts the new secret; it is now the stored one")
		b.count(metricRotation, "outcome", "success")
		return cfg, true, nil
	}
	cfg.Rotation.LastCheck = now
	graceOver := now.Sub(cfg.Rotation.PendingSince) > pendingGrace
	currentWorks := false
	if full {
		if currentWorks, err = b.accepts(ctx, cfg); err != nil {
			return cfg, false, fmt.Errorf("checking the current secret at the tenant: %w", err)
		}
	}
	switch {
	case !full:
		cfg.Rotation.LastError = "the tenant refused the new secret at the last check"
	case currentWorks && graceOver:
		cfg.Rotation.PendingSecret, cfg.Rotation.PendingSince, cfg.Rotation.Unresolved = "", time.Time{}, false
		cfg.Rotation.LastError = "the tenant refused the new secret and still accepts the current one"
		b.Logger().Warn("root rotation: the tenant still accepts the current secret; the new one was dropped")
		b.count(metricRotation, "outcome", "kept_current")
	case currentWorks:
		cfg.Rotation.LastError = "the tenant accepts the current secret and not yet the new one; both are kept until " +
			cfg.Rotation.PendingSince.Add(pendingGrace).UTC().Format(time.RFC3339) + " in case a late change lands"
		b.Logger().Warn("root rotation: the tenant does not accept the new secret yet; both are kept for now", "pending_since", cfg.Rotation.PendingSince)
	case graceOver:
		cfg.Rotation.Unresolved = true
		cfg.Rotation.LastError = "the tenant refused both the current and the new secret"
		b.Logger().Error("root rotation unresolved: the tenant refuses both the current and the new secret; both are kept. Check the service user at the tenant, then write the secret it accepts to config (client_secret)",
			"pending_since", cfg.Rotation.PendingSince)
		b.count(metricRotation, "outcome", "unresolved")
	default:
		cfg.Rotation.LastError = "the tenant refused both the current and the new secret at the last check; both are kept and checked again"
		b.Logger().Error("root rotation: the tenant refuses both the current and the new secret; both are kept and checked again", "pending_since", cfg.Rotation.PendingSince)
	}
	if err := b.storeConfig(ctx, s, cfg); err != nil {
		return cfg, false, fmt.Errorf("recording the rotation's state: %w", err)
	}
	return cfg, false, nil
}

// accepts says whether the tenant grants a token to cfg's client: true or false when it
// answered, an error when it could not be asked.
func (b *backend) accepts(ctx context.Context, cfg *cyberarkConfig) (bool, error) {
	c, err := b.newTenantClient(cfg, cfg.AppID)
	if err != nil {
		return false, err
	}
	defer c.Close()
	tok, err := b.grant(ctx, c, cfg.Scopes)
	var te *client.Error
	switch {
	case err == nil:
		if cfg.revokes() {
			b.revokeQuietly(ctx, c, tok.AccessToken) // it only proved a point
		}
		return true, nil
	case errors.As(err, &te) && te.Refused():
		return false, nil
	default:
		return false, err
	}
}

// settleWhy says what asks for a settle, which decides how eagerly it asks the tenant.
type settleWhy int

const (
	// settleOnStart: the plugin started. It checks every pending rotation, an
	// unresolved one too, since a restart is rare and often follows a fix.
	settleOnStart settleWhy = iota
	// settlePeriodic: about once a minute; it checks at most every settleInterval and
	// leaves an unresolved rotation to the operator.
	settlePeriodic
	// settleOnRefusal: a token read was refused. It asks only about the pending
	// secret (the read just showed the current one refused), at most every
	// readSettleInterval.
	settleOnRefusal
)

// settle resolves an interrupted rotation, if there is one, on the node that writes
// storage. changed reports whether the stored secret changed.
func (b *backend) settle(ctx context.Context, s logical.Storage, why settleWhy) (changed bool, err error) {
	if !b.WriteSafeReplicationState() {
		return false, nil
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := readConfig(ctx, s)
	if err != nil || cfg == nil || cfg.Rotation.PendingSecret == "" {
		return false, err
	}
	since := b.now().Sub(cfg.Rotation.LastCheck)
	switch {
	case why != settleOnStart && cfg.Rotation.Unresolved:
		return false, nil
	case why == settlePeriodic && since < settleInterval:
		return false, nil
	case why == settleOnRefusal && since < readSettleInterval:
		return false, nil
	}
	b.Logger().Warn("root rotation: settling an interrupted rotation", "pending_since", cfg.Rotation.PendingSince)
	_, changed, err = b.settleLocked(ctx, s, cfg, why != settleOnRefusal)
	return changed, err
}

// storeConfig writes cfg and drops every cache built from the old one.
func (b *backend) storeConfig(ctx context.Context, s logical.Storage, cfg *cyberarkConfig) error {
	entry, err := logical.StorageEntryJSON(configPath, cfg)
	if err != nil {
		return fmt.Errorf("encoding config: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return err
	}
	b.cache.resetConfig()
	return nil
}

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

// armSchedule sets the timer from the stored config.
func (b *backend) armSchedule(cfg *cyberarkConfig) {
	var due time.Time
	if cfg != nil {
		due = cfg.Rotation.NextRotation
	}
	b.schedule.arm(due, b.now(), func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 2*maxTotalTimeout)
		defer cancel()
		_ = b.rotateIfDue(ctx, b.storage) // it logs its own failures
	})
}

// rotateIfDue rotates when the schedule says so. It runs only where storage can be
// written (the active node, never a performance standby or secondary), and the due
// time is stored with the secret and acted on under configMu, so a rotation happens
// once per due time whichever of the timer and the periodic function gets there
// first. A failure is tried again after a backoff; an unresolved rotation is left to
// the operator.
func (b *backend) rotateIfDue(ctx context.Context, s logical.Storage) error {
	if s == nil || !b.WriteSafeReplicationState() {
		return nil
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := readConfig(ctx, s)
	if err != nil || cfg == nil {
		if err != nil {
			b.schedule.holdOff(b.now().Add(rotationRetryDelay))
		}
		return err
	}
	defer func() {
		cfg, err := readConfig(ctx, s)
		if err != nil {
			b.Logger().Warn("could not read the config to re-arm the rotation timer; the periodic function checks the schedule", "error", err)
			return
		}
		b.armSchedule(cfg)
	}()
	now := b.now()
	due := cfg.Rotation.NextRotation
	switch {
	case due.IsZero() || now.Before(due):
		return nil
	case cfg.Rotation.Unresolved:
		// Each try would be failed logins: the operator fixes the user first.
		b.schedule.holdOff(now.Add(rotationRetryDelay))
		return nil
	case cfg.RotationSchedule != "" && cfg.RotationWindow > 0 && now.After(due.Add(cfg.RotationWindow)):
		b.Logger().Warn("scheduled root rotation skipped: its window passed", "due", due.UTC(), "rotation_window", cfg.RotationWindow)
		cfg.Rotation.NextRotation = cfg.nextRotation(now, due)
		if err := b.storeConfig(ctx, s, cfg); err != nil {
			b.schedule.holdOff(now.Add(rotationRetryDelay))
			return err
		}
		return nil
	}
	b.Logger().Info("scheduled root rotation", "due", due.UTC())
	_, rerr := b.rotateRootLocked(ctx, s, false)
	if rerr == nil {
		b.schedule.holdOff(time.Time{})
		return nil
	}
	b.count(metricRotation, "outcome", "failed")
	// Back off whatever the failure: a refusal by the tenant's policy would otherwise
	// be asked again every period, forever.
	failures := cfg.Rotation.Failures + 1
	retry := min(rotationRetryDelay<<min(failures-1, 16), maxRotationRetryDelay)
	b.schedule.holdOff(now.Add(retry))
	b.Logger().Error("scheduled root rotation failed", "error", rerr, "failures_in_a_row", failures, "next_try", now.Add(retry).UTC())
	if cfg, err = readConfig(ctx, s); err != nil || cfg == nil {
		return errors.Join(rerr, err)
	}
	if !cfg.Rotation.NextRotation.After(now) {
		cfg.Rotation.NextRotation = now.Add(retry)
	}
	cfg.Rotation.Failures = failures
	cfg.Rotation.LastError = rerr.Error()
	if err := b.storeConfig(ctx, s, cfg); err != nil {
		return errors.Join(rerr, fmt.Errorf("storing the next rotation time: %w", err))
	}
	return rerr
}

// rotationStep is a hook for tests that stop a rotation between two steps.
func (b *backend) rotationStep(step string) {
	if b.afterRotationStep != nil {
		b.afterRotationStep(step)
	}
}
