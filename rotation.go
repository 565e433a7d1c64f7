package cyberark

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

const (
	defaultPasswordLength = 32
	// CyberArk Identity's default policy allows 8 to 64 characters; we never generate
	// fewer than 16.
	minPasswordLength = 16
	maxPasswordLength = 64

	// minRotationPeriod keeps a mistyped period from rotating the secret in a loop.
	minRotationPeriod = 5 * time.Second
	// rotationRetryDelay is how long a failed scheduled rotation waits before it is
	// tried again (or the period, when that is shorter).
	rotationRetryDelay = time.Minute

	changePasswordPath = "/UserMgmt/ChangeUserPassword"

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
	// Unresolved is set when the tenant accepted neither the pending nor the current
	// secret at the last check; both are kept until one works or an operator writes one.
	Unresolved bool `json:"unresolved,omitempty"`
	// LastRotation is when the secret was last changed by a rotation.
	LastRotation time.Time `json:"last_rotation,omitempty"`
	// NextRotation is when the engine's own scheduler rotates next; zero when nothing
	// is scheduled or Vault's rotation manager drives the schedule.
	NextRotation time.Time `json:"next_rotation,omitempty"`
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

// rotateRoot changes the client secret: generate, store as pending, change at the
// tenant, check with a grant, store as current. Each step is safe to die after: the
// stored config always holds every secret the tenant may accept, and settle finds out
// which one it does. Rotations and config writes are serialised by configMu.
func (b *backend) rotateRoot(ctx context.Context, s logical.Storage) (*cyberarkConfig, error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := b.rotateRootLocked(ctx, s)
	if err == nil {
		b.armSchedule(cfg)
	}
	return cfg, err
}

// rotateRootLocked is rotateRoot for a caller that holds configMu.
func (b *backend) rotateRootLocked(ctx context.Context, s logical.Storage) (*cyberarkConfig, error) {
	cfg, err := readConfig(ctx, s)
	switch {
	case err != nil:
		return nil, err
	case cfg == nil:
		return nil, &errRotation{"the engine is not configured: write the config first"}
	case cfg.changePasswordURL() == "":
		return nil, &errRotation{"rotation needs tenant_url: the secret is changed through the tenant's UserMgmt/ChangeUserPassword"}
	}
	if cfg.Rotation.PendingSecret != "" {
		// An earlier rotation did not finish: settle it before starting another.
		if cfg, err = b.settleLocked(ctx, s, cfg); err != nil {
			return nil, fmt.Errorf("settling an earlier rotation first: %w", err)
		}
		if cfg.Rotation.Unresolved {
			return nil, errUnresolved
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
	if err := b.storeConfig(ctx, s, cfg); err != nil {
		return nil, fmt.Errorf("storing the new secret before changing it at the tenant (nothing was changed): %w", err)
	}
	b.rotationStep("stored_pending")

	// Step 2: the tenant changes it.
	err = current.ChangePassword(ctx, cfg.changePasswordURL(), cfg.RotationScopes, secret)
	b.rotationStep("tenant_changed")
	if err != nil && !errors.Is(err, client.ErrOutcomeUnknown) {
		// The tenant said no, or was never asked: the pending secret is worthless.
		b.Logger().Error("root rotation: the tenant did not change the secret", "error", err)
		cfg.Rotation.PendingSecret, cfg.Rotation.PendingSince = "", time.Time{}
		cfg.Rotation.LastError = err.Error()
		if serr := b.storeConfig(ctx, s, cfg); serr != nil {
			b.Logger().Error("root rotation: could not drop the refused secret; it is settled later", "error", serr)
		}
		return nil, &errRotation{"the tenant did not change the secret, which stays as it was: " + err.Error()}
	}
	if err != nil {
		b.Logger().Warn("root rotation: no answer from the tenant to the change; finding out which secret it accepts", "error", err)
	}

	// Steps 3 and 4: a grant shows which secret the tenant accepts, and that one stays.
	if cfg, err = b.settleLocked(ctx, s, cfg); err != nil {
		return nil, err
	}
	switch {
	case cfg.Rotation.Unresolved:
		return nil, errUnresolved
	case cfg.ClientSecret != secret:
		return nil, &errRotation{"the tenant kept the current secret: " + cfg.Rotation.LastError}
	}
	return cfg, nil
}

// settleLocked finds out which of the pending and current secrets the tenant accepts,
// by a grant with each (pending first: after a change it is the likely one), and keeps
// that one. If the tenant accepts neither, both are kept and the state says so; if it
// cannot be reached, nothing changes and the error says why. The caller holds configMu.
func (b *backend) settleLocked(ctx context.Context, s logical.Storage, cfg *cyberarkConfig) (*cyberarkConfig, error) {
	pending := cfg.Rotation.PendingSecret
	if pending == "" {
		return cfg, nil
	}
	accepted, err := b.accepts(ctx, cfg.withSecret(pending))
	if err != nil {
		return cfg, fmt.Errorf("checking the new secret at the tenant: %w", err)
	}
	now := b.now().UTC()
	if accepted {
		cfg.ClientSecret = pending
		cfg.Rotation = rotationState{
			LastRotation: now,
			NextRotation: cfg.nextRotation(now, cfg.Rotation.NextRotation),
			RotationID:   cfg.Rotation.RotationID,
		}
		if err := b.storeConfig(ctx, s, cfg); err != nil {
			// The pending secret is still stored, and the next settle promotes it.
			return cfg, fmt.Errorf("storing the new secret, which the tenant accepts (it stays stored as pending and is settled later): %w", err)
		}
		b.Logger().Info("root rotation: the tenant accepts the new secret; it is now the stored one")
		b.count(metricRotation, "outcome", "success")
		return cfg, nil
	}
	accepted, err = b.accepts(ctx, cfg)
	if err != nil {
		return cfg, fmt.Errorf("checking the current secret at the tenant: %w", err)
	}
	if accepted {
		cfg.Rotation.PendingSecret, cfg.Rotation.PendingSince, cfg.Rotation.Unresolved = "", time.Time{}, false
		cfg.Rotation.LastError = "the tenant refused the new secret and still accepts the current one"
		if err := b.storeConfig(ctx, s, cfg); err != nil {
			return cfg, fmt.Errorf("dropping the new secret, which the tenant refuses: %w", err)
		}
		b.Logger().Warn("root rotation: the tenant still accepts the current secret; the new one was dropped")
		b.count(metricRotation, "outcome", "kept_current")
		return cfg, nil
	}
	cfg.Rotation.Unresolved = true
	cfg.Rotation.LastError = "the tenant refused both the current and the new secret"
	if err := b.storeConfig(ctx, s, cfg); err != nil {
		return cfg, fmt.Errorf("recording that the tenant refuses both secrets: %w", err)
	}
	b.Logger().Error("root rotation unresolved: the tenant refuses both the current and the new secret; both are kept. Check the service user at the tenant, then write the secret it accepts to config (client_secret)",
		"pending_since", cfg.Rotation.PendingSince)
	b.count(metricRotation, "outcome", "unresolved")
	return cfg, nil
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
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_ = c.Revoke(rctx, tok.AccessToken) // best effort: it only proved a point
		}
		return true, nil
	case errors.As(err, &te) && te.Refused():
		return false, nil
	default:
		return false, err
	}
}

// settle resolves an interrupted rotation, if there is one: on start, periodically,
// and when the tenant refuses a grant after a rotation. An unresolved one (the tenant
// refused both secrets) is tried again only when retryUnresolved says so, on start:
// every try is two failed logins, which could lock the service user.
func (b *backend) settle(ctx context.Context, s logical.Storage, retryUnresolved bool) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := readConfig(ctx, s)
	if err != nil || cfg == nil || cfg.Rotation.PendingSecret == "" {
		return err
	}
	if cfg.Rotation.Unresolved && !retryUnresolved {
		return nil
	}
	b.Logger().Warn("root rotation: settling an interrupted rotation", "pending_since", cfg.Rotation.PendingSince)
	_, err = b.settleLocked(ctx, s, cfg)
	return err
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

// newPassword generates a secret from the Vault password policy the config names, or
// our own: letters and digits, at least one digit, one upper-case and one lower-case
// letter (CyberArk Identity's default policy), password_length long.
func (b *backend) newPassword(ctx context.Context, cfg *cyberarkConfig) (string, error) {
	if cfg.PasswordPolicy != "" {
		secret, err := b.System().GeneratePasswordFromPolicy(ctx, cfg.PasswordPolicy)
		if err != nil {
			return "", &errRotation{fmt.Sprintf("password_policy %q: generating a password: %s", cfg.PasswordPolicy, err)}
		}
		if strings.TrimSpace(secret) != secret || checkText(secret, maxClientSecretLength) != nil {
			return "", &errRotation{fmt.Sprintf("password_policy %q makes passwords with white space at an end or characters a secret must not hold", cfg.PasswordPolicy)}
		}
		return secret, nil
	}
	n := cfg.PasswordLength
	if n == 0 {
		n = defaultPasswordLength
	}
	return generatePassword(n)
}

const (
	lowerChars = "abcdefghijklmnopqrstuvwxyz"
	upperChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digitChars = "0123456789"
)

// generatePassword draws n characters uniformly from letters and digits until the
// result has each kind: 62 symbols give 5.95 bits each, 190 bits for 32.
func generatePassword(n int) (string, error) {
	alphabet := lowerChars + upperChars + digitChars
	for {
		out := make([]byte, n)
		for i := range out {
			k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
			if err != nil {
				return "", fmt.Errorf("reading randomness: %w", err)
			}
			out[i] = alphabet[k.Int64()]
		}
		s := string(out)
		if strings.ContainsAny(s, lowerChars) && strings.ContainsAny(s, upperChars) && strings.ContainsAny(s, digitChars) {
			return s, nil
		}
	}
}

// nextRotation is when the engine's own scheduler rotates next after now, given the
// previous due time; zero when it schedules nothing. A period keeps its grid: a
// rotation late by a little does not push every later one back.
func (c *cyberarkConfig) nextRotation(now, prevDue time.Time) time.Time {
	switch {
	case c.DisableAutomatedRotation || c.Rotation.RotationID != "":
		return time.Time{}
	case c.RotationPeriod > 0:
		if prevDue.IsZero() || prevDue.After(now.Add(c.RotationPeriod)) {
			return now.Add(c.RotationPeriod)
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
}

// arm sets the timer to fire at due; a zero due disarms it.
func (sc *scheduler) arm(due time.Time, now time.Time, fire func()) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.timer != nil {
		sc.timer.Stop()
		sc.timer = nil
	}
	if sc.stopped || due.IsZero() {
		return
	}
	sc.timer = time.AfterFunc(max(due.Sub(now), 0), fire)
}

func (sc *scheduler) stop() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.stopped = true
	if sc.timer != nil {
		sc.timer.Stop()
		sc.timer = nil
	}
}

// armSchedule sets the timer from the stored config.
func (b *backend) armSchedule(cfg *cyberarkConfig) {
	var due time.Time
	if cfg != nil {
		due = cfg.Rotation.NextRotation
	}
	b.schedule.arm(due, b.now(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*maxTotalTimeout)
		defer cancel()
		_ = b.rotateIfDue(ctx, b.storage) // it logs its own failures
	})
}

// rotateIfDue rotates when the schedule says so. It runs only where storage can be
// written (the active node, never a performance standby or secondary), and the due
// time is stored with the secret, so a rotation happens once per due time whichever
// of the timer and the periodic function gets there first.
func (b *backend) rotateIfDue(ctx context.Context, s logical.Storage) error {
	if s == nil || !b.WriteSafeReplicationState() {
		return nil
	}
	// The due time is read and acted on under one lock, so the timer and the periodic
	// function arriving together rotate once.
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := readConfig(ctx, s)
	if err != nil || cfg == nil {
		b.armSchedule(nil)
		return err
	}
	defer func() {
		if cfg, err := readConfig(ctx, s); err == nil {
			b.armSchedule(cfg)
		}
	}()
	now := b.now()
	due := cfg.Rotation.NextRotation
	if due.IsZero() || now.Before(due) {
		return nil
	}
	if cfg.RotationSchedule != "" && cfg.RotationWindow > 0 && now.After(due.Add(cfg.RotationWindow)) {
		// The window for this due time has passed: skip to the next one.
		b.Logger().Warn("scheduled root rotation skipped: its window passed", "due", due.UTC(), "rotation_window", cfg.RotationWindow)
		cfg.Rotation.NextRotation = cfg.nextRotation(now, due)
		return b.storeConfig(ctx, s, cfg)
	}
	b.Logger().Info("scheduled root rotation", "due", due.UTC())
	if _, rerr := b.rotateRootLocked(ctx, s); rerr != nil {
		b.count(metricRotation, "outcome", "failed")
		b.Logger().Error("scheduled root rotation failed; trying again later", "error", rerr)
		retry := rotationRetryDelay
		if cfg.RotationPeriod > 0 {
			retry = min(retry, cfg.RotationPeriod)
		}
		cfg, err := readConfig(ctx, s)
		if err != nil || cfg == nil {
			return errors.Join(rerr, err)
		}
		if cfg.Rotation.NextRotation.Equal(due) {
			cfg.Rotation.NextRotation = now.Add(retry)
		}
		cfg.Rotation.LastError = rerr.Error()
		if err := b.storeConfig(ctx, s, cfg); err != nil {
			return errors.Join(rerr, fmt.Errorf("storing the next rotation time: %w", err))
		}
		return rerr
	}
	return nil
}

// rotationStep is a hook for tests that stop a rotation between two steps.
func (b *backend) rotationStep(step string) {
	if b.afterRotationStep != nil {
		b.afterRotationStep(step)
	}
}
