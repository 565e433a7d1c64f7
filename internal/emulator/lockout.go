package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// lockedDescription is the error_description of a client authentication refused because
// the service user is locked out. CyberArk does not document what the tenant answers a
// locked confidential client, and no report we know of quotes it: this wording, the
// access_denied code and Config.ErrorStatus are the emulator's guess, chosen to look like
// the tenant's other client-authentication refusals. A client must not parse it.
const lockedDescription = "user is locked out"

// LockoutPolicy is a tenant's account lockout policy, applied to service users: after
// Threshold failed client authentications within Window the user is locked for Duration,
// and every authentication of that user is refused, even with the right secret, until
// the lock ends or Unlock lifts it.
//
// A failed authentication is a token, revoke or introspect request that names a known
// client ID with the wrong secret. An unknown client ID, a disallowed auth mode and a
// request refused for another reason (a bad grant type, a scope) are not failures of
// that user's password. The lock belongs to the service user, so it holds on every app
// that lists the client.
//
// Refusals while the user is locked count in Stats.FailedLogins but neither extend the
// lock nor count towards the next one: a client that keeps retrying with a stale secret
// is locked out for Duration from the lock, not for ever. Whether the real tenant
// extends a lock on retries is unverified. Tokens issued before the lock stay valid.
//
// In JSON, Window and Duration are Go duration strings ("15m", "30s") or integer
// nanoseconds, as Fault's delay.
type LockoutPolicy struct {
	// Threshold is how many failed authentications within Window lock the user; at
	// least 1.
	Threshold int `json:"threshold"`
	// Window is the capture window: a failure older than Window no longer counts. 0
	// keeps every failure since the user was last locked or unlocked.
	Window time.Duration `json:"window"`
	// Duration is how long the user stays locked; 0 locks it until Unlock (or Reset).
	Duration time.Duration `json:"duration"`
	// ResetOnSuccess makes a successful authentication forget the failures before it,
	// so that only consecutive failures lock, as many directories do. Off (the default),
	// every failure within Window counts, successes in between or not, which is the
	// stricter reading. What the tenant does is unverified.
	ResetOnSuccess bool `json:"reset_on_success"`
}

type lockoutPlain LockoutPolicy

// MarshalJSON writes Window and Duration as duration strings, which read back the same.
func (p LockoutPolicy) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		lockoutPlain
		Window   string `json:"window,omitempty"`
		Duration string `json:"duration,omitempty"`
	}{lockoutPlain: lockoutPlain(p), Window: durationString(p.Window), Duration: durationString(p.Duration)})
}

// UnmarshalJSON accepts Window and Duration as duration strings or nanoseconds, and
// rejects unknown fields: LoadConfig's strictness does not reach a type's own decoder.
func (p *LockoutPolicy) UnmarshalJSON(data []byte) error {
	var aux struct {
		lockoutPlain
		Window   json.RawMessage `json:"window"`
		Duration json.RawMessage `json:"duration"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return fmt.Errorf("lockout: %w", err)
	}
	window, err := parseDuration(aux.Window, "lockout window")
	if err != nil {
		return err
	}
	duration, err := parseDuration(aux.Duration, "lockout duration")
	if err != nil {
		return err
	}
	*p = LockoutPolicy(aux.lockoutPlain)
	p.Window, p.Duration = window, duration
	return nil
}

func (p LockoutPolicy) validate() error {
	if p.Threshold < 1 {
		return fmt.Errorf("threshold %d: want at least 1 (leave lockout out to turn it off)", p.Threshold)
	}
	if p.Window < 0 {
		return fmt.Errorf("window %s is negative", p.Window)
	}
	if p.Duration < 0 {
		return fmt.Errorf("duration %s is negative", p.Duration)
	}
	return nil
}

// lockState is a service user's standing under the lockout policy. It is guarded by
// Emulator.mu, as the rest of the user's mutable fields.
type lockState struct {
	// failures are the times of the failed authentications that may still count
	// towards a lock, oldest first.
	failures []time.Time
	locked   bool
	// lockedUntil ends the lock; zero means until unlocked.
	lockedUntil time.Time
}

// lockedAt reports whether the user is locked at now, ending a lock whose time is up.
// The caller holds Emulator.mu.
func (u *user) lockedAt(now time.Time) bool {
	if u.lock.locked && !u.lock.lockedUntil.IsZero() && !now.Before(u.lock.lockedUntil) {
		u.unlock()
	}
	return u.lock.locked
}

// unlock lifts a lock and forgets the failures, so the user starts afresh. The caller
// holds Emulator.mu.
func (u *user) unlock() {
	u.lock = lockState{}
}

// loginFailed records a refused authentication of u at now. countsTowardsLock is false
// for a refusal because the user is locked, which does not extend the lock.
func (e *Emulator) loginFailed(u *user, now time.Time, countsTowardsLock bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stats.FailedLogins++
	cs := e.countClient(u.id)
	cs.FailedLogins++
	p := e.lockout
	// The user may have been locked by a concurrent failure since the caller looked;
	// this failure then joins the refusals while locked.
	if !countsTowardsLock || p == nil || u.lockedAt(now) {
		return
	}
	kept := u.lock.failures[:0]
	for _, t := range u.lock.failures {
		if p.Window == 0 || now.Sub(t) < p.Window {
			kept = append(kept, t)
		}
	}
	u.lock.failures = append(kept, now)
	if len(u.lock.failures) < p.Threshold {
		return
	}
	u.lock = lockState{locked: true}
	if p.Duration > 0 {
		u.lock.lockedUntil = now.Add(p.Duration)
	}
	e.stats.Lockouts++
	cs.Lockouts++
}

// loginSucceeded forgets u's failures when the policy counts consecutive ones only.
func (e *Emulator) loginSucceeded(u *user) {
	if e.lockout == nil || !e.lockout.ResetOnSuccess { // fixed after New
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	u.lock.failures = nil
}

// errUnknownClient is what the control endpoints answer for a client ID no app lists.
var errUnknownClient = errors.New("unknown client")

// Locked reports whether the service user clientID is locked out now. An unknown client
// is not locked.
func (e *Emulator) Locked(clientID string) bool {
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	u := e.users.byID[clientID]
	return u != nil && u.lockedAt(now)
}

// Unlock lifts the lockout of the service user clientID, as an administrator would at
// the tenant, and forgets its failed authentications so far. It does nothing for an
// unknown client or a user that is not locked (whose failures it still forgets).
func (e *Emulator) Unlock(clientID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if u := e.users.byID[clientID]; u != nil {
		u.unlock()
	}
}

// knownClient reports whether any app lists clientID.
func (e *Emulator) knownClient(clientID string) bool {
	return e.users.byID[clientID] != nil // never written after New
}
