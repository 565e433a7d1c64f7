package cyberark

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-metrics"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// Identity providers lock a user out after a few failed logins in a window, and a
// locked service user takes every application that reads tokens, and the engine's own
// recovery, down with it. The engine therefore bounds the refused client
// authentications it causes: at most max_failed_logins per failed_login_window, counted
// for each credential across every call that authenticates with a stored secret (token
// reads, settles, rotation, verification, revocation), persisted so that a restart or
// a new leader does not start the count again.
const (
	defaultMaxFailedLogins   = 3
	maxMaxFailedLogins       = 100
	defaultFailedLoginWindow = 30 * time.Minute
	minFailedLoginWindow     = time.Minute
	maxFailedLoginWindow     = 24 * time.Hour

	// failedLoginsPrefix + the credential's name is the storage key of its count. It is
	// apart from the config, so a refusal's write does not reset the caches built from
	// the config, and is written only when a refusal happens.
	failedLoginsPrefix = "failed-logins/"
)

// loginLimits is a credential's budget, from its config.
type loginLimits struct {
	max    int
	window time.Duration
	// wait bounds how long a call waits for a password change or a free attempt.
	wait time.Duration
}

func (c *cyberarkConfig) loginLimits() loginLimits {
	l := loginLimits{max: c.MaxFailedLogins, window: c.FailedLoginWindow, wait: c.TotalTimeout}
	if l.max == 0 {
		l.max = defaultMaxFailedLogins
	}
	if l.window == 0 {
		l.window = defaultFailedLoginWindow
	}
	if l.wait == 0 {
		l.wait = defaultTotalTimeout
	}
	return l
}

// loginRecord is what is persisted of a credential's refused logins.
type loginRecord struct {
	// Refusals are the times of the refusals that may still count, newest last.
	Refusals []time.Time `json:"refusals,omitempty"`
	// Since and Total describe the refusals since the stored credentials last worked
	// as far as storage knows: a verified config write starts them again.
	Since time.Time `json:"since,omitempty"`
	Total int       `json:"total,omitempty"`
	// LastAnswer is the tenant's last refusal, without secrets.
	LastAnswer string `json:"last_answer,omitempty"`
}

// inWindow counts the refusals within window before now.
func (r *loginRecord) inWindow(now time.Time, window time.Duration) int {
	n := 0
	for _, t := range r.Refusals {
		if now.Sub(t) < window {
			n++
		}
	}
	return n
}

// freeAt is when the next attempt may be made once max refusals are in the window:
// when the oldest of the newest max leaves it.
func (r *loginRecord) freeAt(l loginLimits) time.Time {
	if len(r.Refusals) < l.max {
		return time.Time{}
	}
	return r.Refusals[len(r.Refusals)-l.max].Add(l.window)
}

func (r *loginRecord) add(now time.Time, answer string, l loginLimits) {
	kept := r.Refusals[:0]
	for _, t := range r.Refusals {
		if now.Sub(t) < l.window {
			kept = append(kept, t)
		}
	}
	r.Refusals = append(kept, now)
	if r.Total == 0 {
		r.Since = now
	}
	r.Total++
	r.LastAnswer = answer
}

// callKind says how a call to the tenant is let through the gate.
type callKind int

const (
	// callRead: token reads and revocations. They wait while a password change is at
	// the tenant, then start over with the secret it left, and spend the budget.
	callRead callKind = iota
	// callOwner: the credential's own steps (the change's grant, its checks, settles),
	// made by the holder of the owner lock, which a change in progress does not stop.
	callOwner
	// callOperator: an operator's verification grant, always allowed, even with the
	// budget spent: writing the secret the tenant accepts is how the operator recovers.
	callOperator
)

// errStaleView says that the stored secret may have changed since the caller took its
// view of the config (a password change began or ended meanwhile): take a new one.
var errStaleView = errors.New("the stored secret changed during the request")

// budgetSpentError is the answer to a call that the budget does not allow. It names
// how often and since when the tenant refused, and what ends it.
// It holds values, not the gate's record, whose refusals later refusals rewrite in place.
type budgetSpentError struct {
	total      int
	since      time.Time
	lastAnswer string
	limits     loginLimits
	next       time.Time
}

func (e *budgetSpentError) Error() string {
	answer := e.lastAnswer
	if answer == "" {
		answer = "a refusal"
	}
	return fmt.Sprintf("the tenant refused the engine's stored credentials %d times since %s (last: %s). To keep the service user from being locked out, the engine makes no login attempt with them until %s (max_failed_logins=%d per failed_login_window=%s). Write the secret the tenant accepts to the config's client_secret, or wait until then for the next attempt",
		e.total, e.since.UTC().Format(time.RFC3339), answer, e.next.UTC().Format(time.RFC3339), e.limits.max, e.limits.window)
}

// Code makes the answer a 400: the engine's state refuses the request, and a Vault
// client must not retry it as it retries a 5xx.
func (e *budgetSpentError) Code() int { return http.StatusBadRequest }

// gate is what stands between a credential's callers and the tenant: it holds calls
// back while a password change is at the tenant, and it keeps the count of refused
// logins, so that no more calls are in flight than refusals are left in the budget.
// Its lock is a leaf: held for no call and no storage access.
type gate struct {
	key string // storage key of the login record

	mu sync.Mutex
	// changing is open while a password change is at the tenant and its outcome not
	// yet stored; calls that use the stored secret wait for it to close.
	changing chan struct{}
	// epoch moves when a change begins and ends: a caller that took its view before
	// that must take a new one.
	epoch uint64
	// inflight counts calls that may be refused and are not back yet.
	inflight int
	// wake is closed (and replaced) whenever a call ends or a change ends, to wake
	// callers waiting for either.
	wake   chan struct{}
	rec    loginRecord
	loaded bool
	// loads moves at each invalidation, so that a load from storage that began before
	// one is not kept over what the other node wrote.
	loads uint64
	// dirty: a refusal is counted in memory that storage does not hold yet. No call
	// is let through until it does, since a restart would forget it.
	dirty bool
	// version counts the refusals added in memory, so that a store knows whether what
	// it wrote is still the latest.
	version uint64

	// persist serialises writes of the record, outside mu.
	persist sync.Mutex
}

func newGate(key string) *gate {
	return &gate{key: key, wake: make(chan struct{})}
}

// epochNow is taken before a view of the config, and handed back to acquire.
func (g *gate) epochNow() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.epoch
}

// invalidate drops the record from memory: another node wrote it.
func (g *gate) invalidate() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.loaded = false
	g.loads++
}

// load reads the record from storage once; it is kept in memory after that, and the
// Invalidate hook drops it when another node writes it.
func (g *gate) load(ctx context.Context, s logical.Storage) error {
	for {
		g.mu.Lock()
		loaded, loads := g.loaded, g.loads
		g.mu.Unlock()
		if loaded {
			return nil
		}
		var rec loginRecord
		entry, err := s.Get(ctx, g.key)
		if err != nil {
			return fmt.Errorf("reading the failed-login count: %w", err)
		}
		if entry != nil {
			if err := entry.DecodeJSON(&rec); err != nil {
				return fmt.Errorf("decoding the failed-login count: %w", err)
			}
		}
		g.mu.Lock()
		if g.loaded || g.loads == loads {
			if !g.loaded {
				g.rec, g.loaded = rec, true
			}
			g.mu.Unlock()
			return nil
		}
		g.mu.Unlock() // another node wrote it during the read: read it again
	}
}

// ticket is one call let through the gate; done must be called with its outcome.
type ticket struct {
	g    *gate
	kind callKind
}

// acquire lets one call through, waiting (up to l.wait and ctx) while a change is at
// the tenant or the calls in flight already hold every attempt the budget has left.
// A read whose view is older than the last change gets errStaleView; a call the budget
// does not allow gets *budgetSpentError at once.
func (g *gate) acquire(ctx context.Context, s logical.Storage, l loginLimits, kind callKind, epoch uint64, now func() time.Time) (*ticket, error) {
	if err := g.load(ctx, s); err != nil {
		return nil, err
	}
	if err := g.flush(ctx, s); err != nil {
		return nil, logical.CodedError(http.StatusServiceUnavailable,
			"the failed-login count could not be stored, and the engine makes no login attempt it could not count: "+err.Error())
	}
	timer := time.NewTimer(l.wait)
	defer timer.Stop()
	wait := func(ch <-chan struct{}, what string) error {
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-timer.C:
			return logical.CodedError(http.StatusServiceUnavailable, fmt.Sprintf("waited %s for %s; try again", l.wait, what))
		}
	}
	for {
		g.mu.Lock()
		if kind == callRead && g.changing != nil {
			ch := g.changing
			g.mu.Unlock()
			if err := wait(ch, "a password change at the tenant to finish"); err != nil {
				return nil, err
			}
			return nil, errStaleView
		}
		if kind == callRead && epoch != g.epoch {
			g.mu.Unlock()
			return nil, errStaleView
		}
		if kind != callOperator {
			t := now()
			used := g.rec.inWindow(t, l.window)
			if used >= l.max {
				err := &budgetSpentError{total: g.rec.Total, since: g.rec.Since, lastAnswer: g.rec.LastAnswer, limits: l, next: g.rec.freeAt(l)}
				g.mu.Unlock()
				return nil, err
			}
			if used+g.inflight >= l.max {
				ch := g.wake
				g.mu.Unlock()
				if err := wait(ch, "a login attempt left in the failed-login budget"); err != nil {
					return nil, err
				}
				continue
			}
		}
		g.inflight++
		g.mu.Unlock()
		return &ticket{g: g, kind: kind}, nil
	}
}

// storeTries is how often a refusal's count is tried to be stored before the call
// returns; a count still not stored holds every later call back until it is.
const storeTries = 3

// done ends the call with its error, and records a refusal of the credentials:
// in memory at once, then in storage (persist: only the node that writes storage).
// It reports whether the call was such a refusal, the refusals now in the window,
// and the errors of the tries to store the count (storeTries of them: not stored).
func (t *ticket) done(ctx context.Context, s logical.Storage, l loginLimits, err error, now time.Time, persist bool) (refused bool, inWindow int, storeErrs []error) {
	g := t.g
	var te *client.Error
	refused = errors.As(err, &te) && te.CredentialsRefused()
	g.mu.Lock()
	g.inflight--
	if refused {
		g.rec.add(now, te.Error(), l)
		g.version++
		g.dirty = g.dirty || persist
	}
	inWindow = g.rec.inWindow(now, l.window)
	close(g.wake)
	g.wake = make(chan struct{})
	g.mu.Unlock()
	if !refused || !persist {
		return refused, inWindow, nil
	}
	// A storage hiccup must not lose a refusal: a few tries now, and the next call
	// tries again before it goes out.
	for try := range storeTries {
		serr := g.flush(ctx, s)
		if serr == nil {
			break
		}
		storeErrs = append(storeErrs, serr)
		if try < storeTries-1 {
			time.Sleep(time.Duration(try+1) * 50 * time.Millisecond)
		}
	}
	return refused, inWindow, storeErrs
}

// flush stores the count when memory holds refusals storage does not. It writes the
// record as it is when the write begins, not as it was when a caller's refusal was
// counted: concurrent refusals (revoke-all's workers, reads in parallel) reach the
// write lock in any order, and a copy taken earlier could overwrite a later count with
// a smaller one, which a restart would then believe. A caller that finds the count
// already stored by another writes nothing. dirty is cleared only if no refusal was
// counted during the write; if the write fails, the count in memory still holds this
// node back.
func (g *gate) flush(ctx context.Context, s logical.Storage) error {
	g.mu.Lock()
	dirty := g.dirty
	g.mu.Unlock()
	if !dirty { // every token read passes here: no write lock unless needed
		return nil
	}
	g.persist.Lock()
	defer g.persist.Unlock()
	g.mu.Lock()
	if !g.dirty {
		g.mu.Unlock()
		return nil
	}
	rec, version := g.rec, g.version
	rec.Refusals = append([]time.Time(nil), g.rec.Refusals...)
	g.mu.Unlock()
	entry, err := logical.StorageEntryJSON(g.key, rec)
	if err != nil {
		return err
	}
	if err := s.Put(context.WithoutCancel(ctx), entry); err != nil {
		return err
	}
	g.mu.Lock()
	if g.version == version {
		g.dirty = false
	}
	g.mu.Unlock()
	return nil
}

// reset forgets every refusal: an operator is writing a secret the tenant accepted.
// Storage is touched only when there is something to forget.
func (g *gate) reset(ctx context.Context, s logical.Storage) error {
	if err := g.load(ctx, s); err != nil {
		return err
	}
	g.persist.Lock()
	defer g.persist.Unlock()
	g.mu.Lock()
	empty := g.rec.Total == 0 && len(g.rec.Refusals) == 0
	g.mu.Unlock()
	if empty {
		return nil
	}
	if err := s.Delete(ctx, g.key); err != nil {
		return err
	}
	g.mu.Lock()
	g.rec, g.loaded, g.dirty = loginRecord{}, true, false
	close(g.wake)
	g.wake = make(chan struct{})
	g.mu.Unlock()
	return nil
}

// status is the record as it stands, for a config read and the metrics.
func (g *gate) status(ctx context.Context, s logical.Storage) (loginRecord, error) {
	if err := g.load(ctx, s); err != nil {
		return loginRecord{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	rec := g.rec
	rec.Refusals = append([]time.Time(nil), g.rec.Refusals...)
	return rec, nil
}

// startChange holds every read back from now until end is called, once the calls in
// flight (which use the secret being changed) are back. It fails, with nothing held,
// if they are not back within ctx.
func (g *gate) startChange(ctx context.Context) (end func(), err error) {
	g.mu.Lock()
	g.changing = make(chan struct{})
	g.epoch++
	for g.inflight > 0 {
		ch := g.wake
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			g.endChange()
			return nil, fmt.Errorf("waiting for token requests in flight before changing the password: %w", ctx.Err())
		}
		g.mu.Lock()
	}
	g.mu.Unlock()
	var once sync.Once
	return func() { once.Do(g.endChange) }, nil
}

func (g *gate) endChange() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.changing != nil {
		close(g.changing)
		g.changing = nil
	}
	g.epoch++
	close(g.wake)
	g.wake = make(chan struct{})
}

// countFailedLogin records a refusal in the metrics: what kind of call it was, and how
// many refusals the window now holds.
func (b *backend) countFailedLogin(client, call string, inWindow int) {
	b.countFor(metricFailedLogin, client, "call", call)
	b.metrics.SetGaugeWithLabels(metricFailedLoginsInWindow, float32(inWindow), []metrics.Label{{Name: "client", Value: client}})
}

// addLoginStatus adds the failed-login count to a config read.
func (c *credential) addLoginStatus(ctx context.Context, s logical.Storage, cfg *cyberarkConfig, data map[string]any) error {
	rec, err := c.gate.status(ctx, s)
	if err != nil {
		return err
	}
	l := cfg.loginLimits()
	now := c.b.now()
	used := rec.inWindow(now, l.window)
	data["failed_logins"] = used
	data["failed_logins_total"] = rec.Total
	if rec.Total > 0 {
		data["failed_logins_since"] = rec.Since.UTC()
		data["last_failed_login"] = rec.LastAnswer
	}
	if used >= l.max {
		data["next_login_attempt"] = rec.freeAt(l).UTC()
	}
	return nil
}
