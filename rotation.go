package cyberark

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-metrics"
	"github.com/hashicorp/go-secure-stdlib/strutil"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// How one rotation happens: the credential type below owns a rotated secret and its
// persisted state. When rotations happen is schedule.go's.

const (
	// pendingGrace is how long a pending secret that the tenant refuses is kept, in
	// case a change request still in flight (cut off by a timeout, or by the death of
	// the process that sent it) is applied late. It outlasts the longest exchange
	// (request_timeout, at most 5m) with room to spare. Until it has passed, a refused
	// pending secret is neither dropped nor declared unresolved, and a written secret
	// does not replace it.
	pendingGrace = 10 * time.Minute
	// settleInterval spaces the checks of a pending rotation that the periodic function
	// and rotate-root make: each check may be a failed login.
	settleInterval = 2 * time.Minute
	// readSettleInterval spaces the checks that refused token reads trigger.
	readSettleInterval = 10 * time.Second

	changePasswordPath = "/UserMgmt/ChangeUserPassword" //nolint:gosec // an API path, not a credential
	resetPasswordPath  = "/UserMgmt/ResetUserPassword"  //nolint:gosec // an API path, not a credential

	rotationStateOK         = "ok"
	rotationStatePending    = "pending"
	rotationStateUnresolved = "unresolved"
)

// rotationState is what the engine remembers about a credential's rotation, stored in
// the config entry beside the secret, so that the secret and the state always change
// together. Its two halves change for different reasons: the protocol state says which
// secrets the tenant may accept, the schedule state when the next rotation is due. Both
// are written only by credential's methods. (Embedded, so the stored JSON keeps the
// field names of earlier releases.)
type rotationState struct {
	protocolState
	scheduleState
}

// protocolState says which secrets the tenant may accept.
type protocolState struct {
	// PendingSecret is a new secret that a rotation is setting, or set, at the tenant.
	// It is stored before the tenant is asked, so that no secret the tenant may accept
	// ever lives only in memory.
	PendingSecret string    `json:"pending_secret,omitempty"`
	PendingSince  time.Time `json:"pending_since,omitempty"`
	// ChangeConfirmed: the tenant answered the change with success, so the pending
	// secret is the one to try first.
	ChangeConfirmed bool `json:"change_confirmed,omitempty"`
	// CurrentRefused: the last check (or a read) found the current secret refused, so
	// the pending one is tried first.
	CurrentRefused bool `json:"current_refused,omitempty"`
	// Unresolved is set when the tenant has accepted neither the pending nor the current
	// secret for longer than pendingGrace; both are kept until one works or an operator
	// writes one.
	Unresolved bool `json:"unresolved,omitempty"`
	// LastCheck is when a settle last asked the tenant about a pending secret;
	// LastFullCheck when the periodic function or a start last did, which refused reads
	// cannot put off.
	LastCheck     time.Time `json:"last_check,omitempty"`
	LastFullCheck time.Time `json:"last_full_check,omitempty"`
	// LastRotation is when the secret was last changed by a rotation.
	LastRotation time.Time `json:"last_rotation,omitempty"`
	// LastError is the last failed rotation's error, or what its last check found;
	// without secrets.
	LastError string `json:"last_error,omitempty"`
}

// scheduleState says when the next rotation is due.
type scheduleState struct {
	// NextRotation is when the engine's own scheduler rotates next; zero when nothing
	// is scheduled or Vault's rotation manager drives the schedule. A retry never moves
	// it: only a rotation that lands, or a window that passed, does.
	NextRotation time.Time `json:"next_rotation,omitempty"`
	// RetryAt holds a failed scheduled rotation back; Failures counts those in a row,
	// for the backoff.
	RetryAt  time.Time `json:"retry_at,omitempty"`
	Failures int       `json:"failures,omitempty"`
	// RotationID is set while Vault's rotation manager (Enterprise) holds the job.
	RotationID string `json:"rotation_id,omitempty"`
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

// graceOver says whether a change sent for the pending secret can no longer land.
func (r *rotationState) graceOver(now time.Time) bool {
	return now.Sub(r.PendingSince) > pendingGrace
}

// changePasswordURL is where the service user's password is changed; rotation needs
// the tenant, so it is empty without tenant_url.
func (c *cyberarkConfig) changePasswordURL() string {
	if c.TenantURL == "" {
		return ""
	}
	return strings.TrimRight(c.TenantURL, "/") + changePasswordPath
}

// resetPasswordURL is where a manager sets a managed user's password.
func (c *cyberarkConfig) resetPasswordURL() string {
	if c.TenantURL == "" {
		return ""
	}
	return strings.TrimRight(c.TenantURL, "/") + resetPasswordPath
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
// retry would be failed logins towards locking the service user.
var errUnresolved = logical.CodedError(http.StatusConflict,
	"root rotation unresolved: the tenant accepts neither the current nor the new secret, and both are kept; fix the service user at the tenant, then write the secret it accepts to client_secret (see the rotation runbook)")

// unsettledError says an earlier (or this) rotation is not settled: both secrets are
// kept while a late change may still land, and the engine checks on its own. A 409, so
// that no Vault client retries it.
func unsettledError(r *rotationState, now time.Time) error {
	next := r.LastCheck.Add(settleInterval)
	if next.Before(now) {
		next = now
	}
	return logical.CodedError(http.StatusConflict, fmt.Sprintf(
		"root rotation pending since %s and not settled: both secrets are kept until the tenant is seen to accept one (a change may land until %s); the engine checks again from %s on its own, nothing needs retrying. Last check: %s",
		r.PendingSince.UTC().Format(time.RFC3339), r.PendingSince.Add(pendingGrace).UTC().Format(time.RFC3339),
		next.UTC().Format(time.RFC3339), orNone(r.LastError)))
}

func orNone(s string) string {
	if s == "" {
		return "none yet"
	}
	return s
}

// credential is one client secret that the engine stores and rotates. Its methods are
// the only writers of the entry that holds the secret and its rotation state, one
// method per transition, each one storage write. mu, the owner lock, serialises them
// with operator writes; no token read takes it (reads meet a rotation only at gate).
type credential struct {
	b    *backend
	name string
	// key is the storage key of the config entry holding the secret and state.
	key  string
	mu   sync.Mutex
	gate *gate
	// sched fires the credential's scheduled rotations (schedule.go).
	sched *scheduler
	// freeze is the incident switch; incidentMu serialises tokens/revoke-all and
	// tokens/unfreeze (incident.go).
	freeze     freezeState
	incidentMu sync.Mutex
	// reads counts the token reads in flight, which revoke-all waits for.
	reads inflight
}

func newCredential(b *backend, name, key string) *credential {
	return &credential{b: b, name: name, key: key, gate: newGate(failedLoginsPrefix + name), sched: newScheduler()}
}

func (c *credential) load(ctx context.Context, s logical.Storage) (*cyberarkConfig, error) {
	return readConfigAt(ctx, s, c.key)
}

// store writes cfg and drops every cache built from the old one. Only the transition
// methods below call it.
func (c *credential) store(ctx context.Context, s logical.Storage, cfg *cyberarkConfig) error {
	if err := c.put(ctx, s, cfg); err != nil {
		return err
	}
	c.b.cache.resetClient(c.name)
	return nil
}

// storeState writes cfg whose secret and settings are as stored, only its rotation
// state changed: the tenant clients and reused tokens stay, so that reads served from
// the reuse cache go on through a rotation.
func (c *credential) storeState(ctx context.Context, s logical.Storage, cfg *cyberarkConfig) error {
	if err := c.put(ctx, s, cfg); err != nil {
		return err
	}
	c.b.cache.refreshClient(c.name)
	return nil
}

func (c *credential) put(ctx context.Context, s logical.Storage, cfg *cyberarkConfig) error {
	entry, err := logical.StorageEntryJSON(c.key, cfg)
	if err != nil {
		return fmt.Errorf("encoding config: %w", err)
	}
	return s.Put(ctx, entry)
}

// The transitions. Each changes cfg as the step says and stores it; on a failed write
// the caller's cfg is as the step left it, and storage as before.

// begin: OK → PENDING. The new secret is in Vault before the tenant hears of it.
func (c *credential) begin(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, secret string, now time.Time) error {
	cfg.Rotation.protocolState = protocolState{
		PendingSecret: secret,
		PendingSince:  now.UTC(),
		LastRotation:  cfg.Rotation.LastRotation,
	}
	return c.storeState(ctx, s, cfg)
}

// changeSent: the tenant confirmed the change, so the pending secret is tried first.
// It is stored with the check that follows at once (promote, or checked), not by a
// write of its own: a rotation killed in between is settled as one whose answer was
// lost, at the cost of one failed login at most.
func (c *credential) changeSent(cfg *cyberarkConfig) {
	cfg.Rotation.ChangeConfirmed = true
}

// promote: PENDING → OK with the pending secret, which the tenant accepts. The due
// time moves past now on the schedule's grid: this rotation served it.
func (c *credential) promote(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, now time.Time) error {
	cfg.ClientSecret = cfg.Rotation.PendingSecret
	cfg.Rotation.protocolState = protocolState{LastRotation: now.UTC()}
	cfg.Rotation.NextRotation = cfg.nextRotation(now, cfg.Rotation.NextRotation)
	cfg.Rotation.RetryAt, cfg.Rotation.Failures = time.Time{}, 0
	if err := c.store(ctx, s, cfg); err != nil {
		return fmt.Errorf("storing the new secret, which the tenant accepts (it stays stored as pending and is settled later): %w", err)
	}
	c.b.Logger().Info("root rotation: the tenant accepts the new secret; it is now the stored one", "credential", c.name)
	if cfg.PasswordChangeEndsTokens {
		c.b.Logger().Warn(endedTokensWarning, "credential", c.name)
	}
	return nil
}

// drop: PENDING → OK with the current secret: the tenant never took the pending one
// and no change can land any more.
func (c *credential) drop(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, why string) error {
	cfg.Rotation.protocolState = protocolState{LastRotation: cfg.Rotation.LastRotation, LastError: why}
	return c.storeState(ctx, s, cfg)
}

// unresolved: PENDING → UNRESOLVED: the tenant refused both secrets after the grace.
func (c *credential) unresolved(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, now time.Time, full bool) error {
	cfg.Rotation.Unresolved, cfg.Rotation.CurrentRefused = true, true
	cfg.Rotation.LastCheck = now.UTC()
	if full {
		cfg.Rotation.LastFullCheck = now.UTC()
	}
	cfg.Rotation.LastError = "the tenant refused both the current and the new secret"
	return c.storeState(ctx, s, cfg)
}

// checked: PENDING → PENDING, with what the check found.
func (c *credential) checked(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, now time.Time, full, currentRefused bool, found string) error {
	cfg.Rotation.LastCheck = now.UTC()
	if full {
		cfg.Rotation.LastFullCheck = now.UTC()
	}
	cfg.Rotation.CurrentRefused = currentRefused
	cfg.Rotation.LastError = found
	if err := c.storeState(ctx, s, cfg); err != nil {
		return fmt.Errorf("recording the rotation's state: %w", err)
	}
	return nil
}

// failed: a rotation failed before anything changed at the tenant. A scheduled one is
// held back, doubling each time; its due time stays where it is.
func (c *credential) failed(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, now time.Time, scheduled bool, err error) (retry time.Time, serr error) {
	cfg.Rotation.LastError = err.Error()
	if scheduled {
		cfg.Rotation.Failures++
		retry = now.Add(min(rotationRetryDelay<<min(cfg.Rotation.Failures-1, 16), maxRotationRetryDelay))
		cfg.Rotation.RetryAt = retry
	}
	return retry, c.storeState(ctx, s, cfg)
}

// operatorWrite stores an operator's config write: next is the merged config, old the
// stored one (nil on create). A written secret settles a rotation, except while a change
// sent for the pending secret may still land: the tenant could then switch to it after
// the write (CyberArk's change is reported not to check oldPassword), so the pending
// secret is kept beside the written one, which is tried first, until the grace is over.
// A verified write starts the failed-login count again.
func (c *credential) operatorWrite(ctx context.Context, s logical.Storage, old, next *cyberarkConfig, secretGiven, verified bool) error {
	now := c.b.now()
	if secretGiven && old != nil && old.Rotation.PendingSecret != "" {
		r := &next.Rotation
		switch {
		case next.ClientSecret == r.PendingSecret || r.graceOver(now):
			r.protocolState = protocolState{LastRotation: r.LastRotation}
		default:
			// The written secret was just seen to work: it is the one to try first.
			r.Unresolved, r.CurrentRefused, r.ChangeConfirmed = false, false, false
			r.LastError = "a secret was written while a change for the pending one may still land (until " +
				r.PendingSince.Add(pendingGrace).UTC().Format(time.RFC3339) + "); both are kept, the written one first"
		}
	}
	if err := c.store(ctx, s, next); err != nil {
		return err
	}
	if verified {
		// Only once the write is stored: a write that failed restarts nothing. If the
		// count cannot be reset, it stands, which errs on the side of fewer attempts.
		if err := c.gate.reset(ctx, s); err != nil {
			c.b.Logger().Error("the config was stored, but the failed-login count could not be reset", "credential", c.name, "error", err)
		} else {
			c.b.metrics.SetGaugeWithLabels(metricFailedLoginsInWindow, 0, []metrics.Label{{Name: "client", Value: c.name}})
		}
	}
	return nil
}

// remove deletes the entry and ends its schedule, all under the owner lock: a write
// that follows must find neither its timer disarmed nor its rotation job deregistered
// by this delete.
func (c *credential) remove(ctx context.Context, s logical.Storage, mountPoint string) (*cyberarkConfig, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, err := c.load(ctx, s)
	if err != nil {
		return nil, err
	}
	if err := s.Delete(ctx, c.key); err != nil {
		return nil, fmt.Errorf("deleting config: %w", err)
	}
	c.b.cache.resetClient(c.name)
	if cfg != nil && cfg.Rotation.RotationID != "" {
		// After the delete: a job left behind finds no config and rotates nothing,
		// while a config left behind would name a job that no longer runs.
		if err := c.b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{MountPoint: mountPoint, ReqPath: c.key}); err != nil {
			c.b.Logger().Error("config deleted, but its rotation job could not be removed from Vault's rotation manager", "error", err)
		}
	}
	c.armSchedule(nil)
	return cfg, nil
}

// call makes one tenant call that authenticates with a stored secret, through the gate:
// it waits for a change in progress, spends the failed-login budget, and counts a
// refusal. what names the call for the metrics.
func (c *credential) call(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, kind callKind, epoch uint64, what string, fn func() error) error {
	l := cfg.loginLimits()
	t, err := c.gate.acquire(ctx, s, l, kind, epoch, c.b.now)
	if err != nil {
		var spent *budgetSpentError
		if errors.As(err, &spent) {
			c.b.countFor(metricLoginBudget, c.name, "call", what)
		}
		return err
	}
	err = fn()
	refused, n, storeErrs := t.done(ctx, s, l, err, c.b.now(), c.b.WriteSafeReplicationState())
	if refused {
		c.b.countFailedLogin(c.name, what, n)
		c.b.Logger().Warn("the tenant refused the engine's credentials: a failed login towards locking the service user",
			"credential", c.name, "call", what, "refused_in_window", n, "max_failed_logins", l.max, "error", err)
	}
	switch {
	case len(storeErrs) == storeTries:
		c.b.Logger().Error("could not store the failed-login count; no call goes to the tenant until it is stored", "credential", c.name, "error", storeErrs[0])
	case len(storeErrs) > 0:
		c.b.Logger().Warn("storing the failed-login count failed, and succeeded on a retry", "credential", c.name, "tries", len(storeErrs)+1, "error", storeErrs[0])
	}
	return err
}

// accepts says whether the tenant grants a token to cfg's client with secret: true or
// false when it answered, an error when it could not be asked (or the budget is spent).
func (c *credential) accepts(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, secret string) (bool, error) {
	probe := cfg.withSecret(secret)
	tc, err := c.b.newTenantClient(probe, probe.AppID)
	if err != nil {
		return false, err
	}
	defer tc.Close()
	var tok *client.Token
	err = c.call(ctx, s, cfg, callOwner, 0, "check", func() (err error) {
		tok, err = c.b.grant(ctx, c.name, tc, probe.Scopes)
		return err
	})
	var te *client.Error
	switch {
	case err == nil:
		if probe.revokes() {
			c.revokeQuietly(ctx, s, probe, tc, tok.AccessToken) // it only proved a point
		}
		return true, nil
	case errors.As(err, &te) && te.Refused():
		return false, nil
	default:
		return false, err
	}
}

// verify is an operator's verification grant with cfg before it is stored: allowed
// even with the budget spent, and counted like any other.
func (c *credential) verify(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, tc *client.Client) (*client.Token, error) {
	var tok *client.Token
	err := c.call(ctx, s, cfg, callOperator, 0, "verify", func() (err error) {
		tok, err = c.b.grant(ctx, c.name, tc, cfg.Scopes)
		return err
	})
	return tok, err
}

// revokeQuietly revokes a token the engine no longer needs (a check's, or the one that
// authorised a password change), best effort: it only shortens how long the token
// stays usable, so a failure does not fail the caller. It is a warning all the same,
// since such a token, the rotation's above all, stays valid until it expires.
func (c *credential) revokeQuietly(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, tc *client.Client, token string) {
	if token == "" {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := c.call(rctx, s, cfg, callOwner, 0, "revoke", func() error { return tc.Revoke(rctx, token) })
	if err != nil && !errors.Is(err, client.ErrRevokeUnsupported) {
		c.b.Logger().Warn("could not revoke a token the engine no longer needs; it stays valid until it expires", "error", err)
	}
}

// settleWhy says what asks for a settle, which decides how eagerly it asks the tenant.
type settleWhy int

const (
	// settleOnStart: the plugin started. It checks every pending rotation, an
	// unresolved one too, since a restart is rare and often follows a fix.
	settleOnStart settleWhy = iota
	// settlePeriodic: about once a minute; it checks at most every settleInterval since
	// the last full check (refused reads cannot put it off) and leaves an unresolved
	// rotation to the operator.
	settlePeriodic
	// settleOnRefusal: a token read was refused with the current secret. It asks only
	// about the pending one: at once when the current one worked at the last check, else
	// at most every readSettleInterval; the read counts as the check of the current one.
	settleOnRefusal
	// settleForRotation: a rotation found an earlier one pending, and a check is due.
	settleForRotation
	// settleAfterChange: the rotation's own check, right after its change.
	settleAfterChange
)

// settleDue says whether a settle for why would ask the tenant now.
func settleDue(r *rotationState, why settleWhy, now time.Time) bool {
	switch {
	case r.PendingSecret == "":
		return false
	case why == settleOnStart || why == settleAfterChange:
		return true
	case why == settlePeriodic:
		return !r.Unresolved && now.Sub(r.LastFullCheck) >= settleInterval
	case why == settleOnRefusal:
		// A refusal of a current secret that worked at the last check is news (a late
		// change landed, or the password was changed elsewhere): ask at once. Once it
		// is known refused, further refusals say nothing new.
		return !r.Unresolved && (!r.CurrentRefused || now.Sub(r.LastCheck) >= readSettleInterval)
	default:
		return now.Sub(r.LastCheck) >= settleInterval
	}
}

// settle finds out which of the pending and current secrets the tenant accepts and
// keeps that one. It tries first the one most likely to work (the current one, unless
// the change was confirmed or the current one was last refused), so that a change
// that never reached the tenant costs no failed login. A refused pending secret is
// kept until the grace is over; then it is dropped if the current one works, and both
// are kept, unresolved, if neither does. If the tenant cannot be asked, nothing
// changes and the error says why. The caller holds mu.
func (c *credential) settle(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, why settleWhy) (*cyberarkConfig, error) {
	r := &cfg.Rotation
	if r.PendingSecret == "" {
		return cfg, nil
	}
	now := c.b.now()
	full := why != settleOnRefusal
	// currentRefused: the current secret was refused after the change was sent, by the
	// read that asked for this settle or at an earlier check. Only an administrator at
	// the tenant can make it work again, and a read with it would show that: asking
	// again here would only be another failed login.
	currentRefused := why == settleOnRefusal || r.CurrentRefused
	pendingFirst := currentRefused || r.ChangeConfirmed || why == settleAfterChange

	tryPending := func() (bool, error) {
		ok, err := c.accepts(ctx, s, cfg, r.PendingSecret)
		if err != nil {
			return false, fmt.Errorf("checking the new secret at the tenant: %w", err)
		}
		return ok, nil
	}
	tryCurrent := func() (bool, error) {
		ok, err := c.accepts(ctx, s, cfg, cfg.ClientSecret)
		if err != nil {
			return false, fmt.Errorf("checking the current secret at the tenant: %w", err)
		}
		return ok, nil
	}

	currentWorks := false
	if pendingFirst {
		ok, err := tryPending()
		if err != nil {
			return cfg, err
		}
		if ok {
			return cfg, c.promote(ctx, s, cfg, now)
		}
		if !currentRefused {
			if currentWorks, err = tryCurrent(); err != nil {
				return cfg, err
			}
		}
	} else {
		ok, err := tryCurrent()
		if err != nil {
			return cfg, err
		}
		currentWorks = ok
		if !currentWorks {
			ok, err := tryPending()
			if err != nil {
				return cfg, err
			}
			if ok {
				return cfg, c.promote(ctx, s, cfg, now)
			}
		}
	}

	// The pending secret was not seen to work.
	graceOver := r.graceOver(now)
	switch {
	case currentWorks && graceOver:
		c.b.Logger().Warn("root rotation: the tenant still accepts the current secret; the new one was dropped", "credential", c.name)
		c.b.countFor(metricRotation, c.name, "outcome", "kept_current")
		return cfg, c.drop(ctx, s, cfg, "the tenant never took the new secret and still accepts the current one")
	case currentWorks:
		return cfg, c.checked(ctx, s, cfg, now, full, false, "the tenant accepts the current secret and not yet the new one; both are kept until "+
			r.PendingSince.Add(pendingGrace).UTC().Format(time.RFC3339)+" in case a late change lands")
	case graceOver:
		if !r.Unresolved {
			c.b.Logger().Error("root rotation unresolved: the tenant refuses both the current and the new secret; both are kept. Check the service user at the tenant, then write the secret it accepts to config (client_secret)",
				"credential", c.name, "pending_since", r.PendingSince)
			c.b.countFor(metricRotation, c.name, "outcome", "unresolved")
		}
		if err := c.unresolved(ctx, s, cfg, now, full); err != nil {
			return cfg, fmt.Errorf("recording the rotation's state: %w", err)
		}
		return cfg, nil
	default:
		c.b.Logger().Error("root rotation: the tenant refuses both the current and the new secret; both are kept and checked again",
			"credential", c.name, "pending_since", r.PendingSince)
		return cfg, c.checked(ctx, s, cfg, now, full, true, "the tenant refused both the current and the new secret at the last check; both are kept and checked again")
	}
}

// settleIf settles when why makes a check due. It runs only where storage can be
// written. A settle for a refused read does not wait for the owner lock: whoever holds
// it is asking the tenant already. changed reports whether the stored secret changed.
func (c *credential) settleIf(ctx context.Context, s logical.Storage, why settleWhy) (changed bool, err error) {
	if !c.b.WriteSafeReplicationState() {
		return false, nil
	}
	if why == settleOnRefusal {
		if !c.mu.TryLock() {
			return false, nil
		}
	} else {
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	cfg, err := c.load(ctx, s)
	if err != nil || cfg == nil || !settleDue(&cfg.Rotation, why, c.b.now()) {
		return false, err
	}
	before := cfg.ClientSecret
	c.b.Logger().Warn("root rotation: settling an unfinished rotation", "credential", c.name, "pending_since", cfg.Rotation.PendingSince)
	cfg, err = c.settle(ctx, s, cfg, why)
	return cfg.ClientSecret != before, err
}

// currentAccepted: a read was granted with the current secret while the state says
// the tenant refused it. The pending secret is dropped if no change can land any more,
// else kept with the current one as the one to try first. It does not wait for the
// owner lock: whoever holds it is settling already.
func (c *credential) currentAccepted(ctx context.Context, s logical.Storage) {
	if !c.b.WriteSafeReplicationState() || !c.mu.TryLock() {
		return
	}
	defer c.mu.Unlock()
	cfg, err := c.load(ctx, s)
	if err != nil || cfg == nil || !cfg.Rotation.CurrentRefused || cfg.Rotation.PendingSecret == "" {
		return
	}
	now := c.b.now()
	if cfg.Rotation.graceOver(now) {
		c.b.Logger().Warn("root rotation: the tenant accepts the current secret again; the new one was dropped", "credential", c.name)
		err = c.drop(ctx, s, cfg, "the tenant accepts the current secret again, and never took the new one")
	} else {
		cfg.Rotation.Unresolved = false
		err = c.checked(ctx, s, cfg, now, false, false, "a token read was granted with the current secret; the new one is kept until "+
			cfg.Rotation.PendingSince.Add(pendingGrace).UTC().Format(time.RFC3339)+" in case a late change lands")
	}
	if err != nil {
		c.b.Logger().Error("could not record that the tenant accepts the current secret again", "credential", c.name, "error", err)
	}
}

// rotationTrigger says who asks for a rotation.
type rotationTrigger struct {
	// manual: an operator's rotate-root, which may check an unresolved rotation again.
	manual bool
	// due is the due time a scheduled rotation serves; zero otherwise.
	due time.Time
}

// errNotDue: a scheduled rotation found its due time already served (an earlier
// rotation for it landed, as a settle just found).
var errNotDue = errors.New("the scheduled rotation was already made")

// rotate changes the client secret: generate, store as pending, change at the tenant,
// check with a grant, store as current. Each step is safe to die after: the stored
// config always holds every secret the tenant may accept, and settle finds out which
// one it does. The caller holds mu.
func (c *credential) rotate(ctx context.Context, s logical.Storage, why rotationTrigger) (*cyberarkConfig, error) {
	cfg, err := c.load(ctx, s)
	switch {
	case err != nil:
		return nil, err
	case cfg == nil:
		return nil, &errRotation{"the engine is not configured: write the config first"}
	case cfg.changePasswordURL() == "":
		return nil, &errRotation{"rotation needs tenant_url: the secret is changed through the tenant's UserMgmt/ChangeUserPassword"}
	case cfg.managed() && cfg.PinnedSub == "":
		return nil, &errRotation{"rotation of a managed client needs its service user's ID, which a verified write pins (pinned_sub): write its client_secret with verify_connection=true"}
	case !cfg.managed() && len(cfg.RotationScopes) == 0:
		return nil, &errRotation{"rotation needs rotation_scopes: the scope whose token may call UserMgmt/ChangeUserPassword, which no workload token may carry; without it the change would be authorised by the same default grant workloads get"}
	case !c.b.WriteSafeReplicationState():
		return nil, errors.New("root rotation runs only on the node that writes storage (the active node of the primary cluster)")
	}
	now := c.b.now()
	if r := &cfg.Rotation; r.PendingSecret != "" {
		switch {
		case r.Unresolved && !why.manual:
			return nil, errUnresolved
		case !settleDue(r, settleForRotation, now):
			// Asking again so soon would only be failed logins: the answer is the state.
			if r.Unresolved {
				return nil, errUnresolved
			}
			return nil, unsettledError(r, now)
		}
		if cfg, err = c.settle(ctx, s, cfg, settleForRotation); err != nil {
			return nil, fmt.Errorf("settling an earlier rotation first: %w", err)
		}
		switch {
		case cfg.Rotation.Unresolved:
			return nil, errUnresolved
		case cfg.Rotation.PendingSecret != "":
			return nil, unsettledError(&cfg.Rotation, now)
		}
	}
	if !why.due.IsZero() && cfg.Rotation.NextRotation.After(now) {
		return cfg, errNotDue
	}

	secret, err := c.b.newPassword(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// Step 1: the new secret is in Vault before the tenant hears of it.
	if err := c.begin(ctx, s, cfg, secret, now); err != nil {
		return nil, fmt.Errorf("storing the new secret before changing it at the tenant (nothing was changed): %w", err)
	}
	c.b.rotationStep("stored_pending")
	return c.change(ctx, s, cfg, secret)
}

// change is steps 2 to 4 of rotate: the tenant changes the password while reads are
// held back, a grant shows which secret it accepts, and that one stays.
func (c *credential) change(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, secret string) (*cyberarkConfig, error) {
	current, err := c.b.newTenantClient(cfg, cfg.AppID)
	if err != nil {
		return nil, c.abandon(ctx, s, cfg, err)
	}
	defer current.Close()

	// Reads with the current secret in flight come back first; reads after this wait
	// for the outcome rather than each adding a failed login with a secret the tenant
	// may no longer take.
	end, err := c.gate.startChange(ctx)
	if err != nil {
		return nil, c.abandon(ctx, s, cfg, err)
	}
	defer end()

	// Step 2: a token for the change, then the change, sent once. total_timeout bounds
	// both, as it bounds every call. A managed client's password is reset with its
	// manager's token instead.
	if cfg.managed() {
		return c.reset(ctx, s, cfg, current, secret)
	}
	var bearer *client.Token
	err = c.call(ctx, s, cfg, callOwner, 0, "change", func() (err error) {
		bearer, err = c.b.grant(ctx, c.name, current, cfg.RotationScopes)
		return err
	})
	if err != nil {
		return nil, c.abandon(ctx, s, cfg, fmt.Errorf("getting a token to change the password: %w", err))
	}
	err = current.SendPasswordChange(ctx, cfg.changePasswordURL(), bearer.AccessToken, secret)
	c.b.rotationStep("tenant_changed")
	switch {
	case err == nil:
		c.changeSent(cfg)
	case errors.Is(err, client.ErrOutcomeUnknown):
		c.b.Logger().Warn("root rotation: no answer from the tenant to the change; finding out which secret it accepts", "error", err)
	default:
		// The tenant said no: the pending secret is worthless.
		c.revokeQuietly(ctx, s, cfg, current, bearer.AccessToken)
		return nil, c.abandon(ctx, s, cfg, err)
	}

	// Steps 3 and 4: a grant shows which secret the tenant accepts, and that one stays.
	cfg, serr := c.settle(ctx, s, cfg, settleAfterChange)
	end()
	// The token that could change the password has served; the secret the tenant now
	// takes authenticates its revocation. When it takes neither, asking would only be
	// another failed login: the token lives until it expires, and the log says so.
	if cfg.Rotation.CurrentRefused {
		c.b.Logger().Warn("root rotation: the token that authorised the change cannot be revoked while the tenant refuses both secrets; it stays valid until it expires", "expires_at", bearer.Expiry.UTC())
	} else if kept, cerr := c.b.newTenantClient(cfg, cfg.AppID); cerr == nil {
		c.revokeQuietly(ctx, s, cfg, kept, bearer.AccessToken)
		kept.Close()
	}
	return c.settled(cfg, serr, secret)
}

// reset is change for a managed client: its manager's token, asked for with the
// manager's management_scopes through the manager's gate and budget, resets the
// password through ResetUserPassword; then the managed client's own grant shows which
// secret the tenant accepts, as after a change. The manager's secret is not touched,
// so its lock is not taken.
func (c *credential) reset(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, current *client.Client, secret string) (*cyberarkConfig, error) {
	m := c.b.credential(cfg.Manager)
	mcfg, err := m.load(ctx, s)
	switch {
	case err != nil:
		return nil, c.abandon(ctx, s, cfg, fmt.Errorf("reading the manager client %q: %w", cfg.Manager, err))
	case mcfg == nil || !strutil.StrListContainsGlob(mcfg.ManagedClients, c.name) || len(mcfg.ManagementScopes) == 0:
		return nil, c.abandon(ctx, s, cfg, &errRotation{fmt.Sprintf("the manager client %q does not exist, does not list %q in managed_clients, or sets no management_scopes", cfg.Manager, c.name)})
	case !sameTenant(mcfg, cfg):
		// The manager's token may reset passwords: it never goes to another tenant.
		return nil, c.abandon(ctx, s, cfg, &errRotation{fmt.Sprintf("the manager client %q is on another tenant than %q", cfg.Manager, c.name)})
	}
	mc, err := c.b.newTenantClient(mcfg, mcfg.AppID)
	if err != nil {
		return nil, c.abandon(ctx, s, cfg, err)
	}
	defer mc.Close()
	var bearer *client.Token
	err = m.call(ctx, s, mcfg, callRead, m.gate.epochNow(), "manage", func() (err error) {
		bearer, err = c.b.grant(ctx, m.name, mc, mcfg.ManagementScopes)
		return err
	})
	if err != nil {
		return nil, c.abandon(ctx, s, cfg, fmt.Errorf("getting the manager's token to reset the password: %w", err))
	}
	defer m.revokeQuietly(ctx, s, mcfg, mc, bearer.AccessToken)
	err = current.SendPasswordReset(ctx, cfg.resetPasswordURL(), bearer.AccessToken, cfg.PinnedSub, secret)
	c.b.rotationStep("tenant_changed")
	switch {
	case err == nil:
		c.changeSent(cfg)
	case errors.Is(err, client.ErrOutcomeUnknown):
		c.b.Logger().Warn("root rotation: no answer from the tenant to the reset; finding out which secret it accepts", "client", c.name, "error", err)
	default:
		return nil, c.abandon(ctx, s, cfg, err)
	}
	cfg, serr := c.settle(ctx, s, cfg, settleAfterChange)
	return c.settled(cfg, serr, secret)
}

// settled says how a rotation whose change was sent ended, from the settle after it.
func (c *credential) settled(cfg *cyberarkConfig, serr error, secret string) (*cyberarkConfig, error) {
	switch {
	case serr != nil:
		return nil, logical.CodedError(http.StatusConflict, fmt.Sprintf(
			"root rotation: the change was sent, but checking which secret the tenant accepts failed; both secrets are kept and the engine settles it on its own: %s", serr))
	case cfg.Rotation.Unresolved:
		return nil, errUnresolved
	case cfg.Rotation.PendingSecret != "":
		return nil, unsettledError(&cfg.Rotation, c.b.now())
	case cfg.ClientSecret != secret:
		return nil, &errRotation{"the tenant kept the current secret: " + cfg.Rotation.LastError}
	}
	return cfg, nil
}

// abandon ends a rotation whose change the tenant never made: the pending secret is
// dropped (if that write fails, the next settle drops it) and err says why.
func (c *credential) abandon(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, err error) error {
	c.b.Logger().Error("root rotation: the tenant did not change the secret", "credential", c.name, "error", err)
	if serr := c.drop(ctx, s, cfg, err.Error()); serr != nil {
		c.b.Logger().Error("root rotation: could not drop the unused secret; it is settled later", "error", serr)
	}
	var te *client.Error
	var me *client.ManagementError
	var spent *budgetSpentError
	switch {
	case errors.As(err, &spent):
		return err
	case errors.As(err, &me) || errors.As(err, &te) && te.Refused():
		return &errRotation{"the tenant did not change the secret, which stays as it was: " + err.Error()}
	}
	return fmt.Errorf("the secret stays as it was: %w", err)
}

// rotateClient is a rotation asked for by an operator or Vault's rotation manager: the
// owner lock, the rotation, its metric, and the schedule re-armed.
func (b *backend) rotateClient(ctx context.Context, s logical.Storage, c *credential, manual bool) (*cyberarkConfig, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, err := c.rotate(ctx, s, rotationTrigger{manual: manual})
	b.countRotation(c.name, err)
	if err == nil {
		c.armSchedule(cfg)
	}
	return cfg, err
}

// countRotation counts every rotation, manual or scheduled, by how it ended.
func (b *backend) countRotation(client string, err error) {
	var coded logical.HTTPCodedError
	switch {
	case err == nil:
		b.countFor(metricRotation, client, "outcome", "success")
	case errors.Is(err, errNotDue):
	case errors.As(err, &coded) && coded.Code() == http.StatusConflict:
		b.countFor(metricRotation, client, "outcome", "unsettled")
	default:
		b.countFor(metricRotation, client, "outcome", "failed")
	}
}

// rotationStep is a hook for tests that stop a rotation between two steps.
func (b *backend) rotationStep(step string) {
	if b.afterRotationStep != nil {
		b.afterRotationStep(step)
	}
}

// grantFor is a token read's grant with the view's client, through the gate. A
// refusal while a rotation is pending asks for a settle, which may find that the
// tenant took the pending secret: the read then starts over with it (errStaleView).
func (c *credential) grantFor(ctx context.Context, s logical.Storage, v *view, epoch uint64, scopes []string) (*client.Token, error) {
	var tok *client.Token
	err := c.call(ctx, s, v.config, callRead, epoch, "read", func() (err error) {
		tok, err = c.b.grant(ctx, c.name, v.client, scopes)
		return err
	})
	var te *client.Error
	if err == nil && v.config.Rotation.CurrentRefused {
		// The tenant takes the current secret again (an administrator set it back):
		// settles, which no longer ask about it, must know.
		c.currentAccepted(ctx, s)
	}
	if err == nil || !errors.As(err, &te) || !te.CredentialsRefused() || v.config.Rotation.PendingSecret == "" {
		return tok, err
	}
	r := &v.config.Rotation
	if !c.b.WriteSafeReplicationState() {
		// This node cannot settle a rotation (that writes storage). A performance
		// standby hands the read to the active node, which Vault does for a request
		// that answers ErrReadOnly, but only when that node would settle now:
		// otherwise the active node would only repeat the refused grant. A performance
		// secondary never does, since its lease would then live on the primary.
		if settleDue(r, settleOnRefusal, c.b.now()) && c.b.System().ReplicationState().HasState(consts.ReplicationPerformanceStandby) {
			return nil, logical.ErrReadOnly
		}
		return nil, err
	}
	changed, serr := c.settleIf(ctx, s, settleOnRefusal)
	switch {
	case serr != nil:
		c.b.Logger().Error("could not settle an unfinished root rotation", "error", serr)
	case changed:
		return nil, errStaleView
	}
	return nil, err
}

// revoke revokes a leased token at the tenant with the view's client, through the
// gate: it waits for a change in progress and starts over with the secret it left.
func (c *credential) revoke(ctx context.Context, s logical.Storage, v *view, epoch uint64, token string) error {
	return c.call(ctx, s, v.config, callRead, epoch, "revoke", func() error { return v.client.Revoke(ctx, token) })
}
