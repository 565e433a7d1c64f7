package cyberark

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/errgroup"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// The break glass for a client (tokens/revoke-all): freeze its token reads, rotate its
// secret if asked, revoke every token the engine knows it handed out, and keep the
// reads frozen until tokens/unfreeze. Every step is stored before it is taken, so a run
// cut short (a tenant outage, Vault's request timeout, a killed plugin) is finished by
// running it again: nothing it had found to revoke is forgotten, and revoking a token
// twice is harmless (RFC 7009 answers 200 for a token already revoked).

const (
	incidentsPrefix = "incidents/"
	// revokeWorkers bounds the revocations in flight at the tenant: enough to revoke
	// a few thousand tokens across a WAN within Vault's request timeout, few enough
	// not to look like an attack to the tenant.
	revokeWorkers = 8
	// incidentSaveEvery is how many revocations may be lost to a kill: revoked again
	// by the next run.
	incidentSaveEvery = 50
)

// incident is a client's frozen state and the tokens still to revoke. It holds
// access tokens, so it is seal-wrapped like the config, and no answer shows them.
type incident struct {
	Client    string         `json:"client"`
	Since     time.Time      `json:"since"`
	RequestID string         `json:"request_id"`
	Runs      int            `json:"runs"`
	RotatedAt time.Time      `json:"rotated_at,omitzero"`
	Revoked   int            `json:"revoked"`
	Expired   int            `json:"expired"`
	Pending   []pendingToken `json:"pending"`
}

// pendingToken is a token revoke-all found and has not yet seen revoked.
type pendingToken struct {
	SHA256      string    `json:"sha256"`
	AppID       string    `json:"app_id"`
	ExpiresAt   time.Time `json:"expires_at"`
	From        string    `json:"from"` // tracked or cached
	AccessToken string    `json:"access_token"`
}

// freezeState is a client's incident switch as this instance knows it: read from
// storage once, then kept in memory, since every token read asks.
type freezeState struct {
	mu     sync.Mutex
	loaded bool
	since  time.Time // zero: not frozen
}

// frozenSince says since when the client's token reads are frozen, zero if they are not.
func (c *credential) frozenSince(ctx context.Context, s logical.Storage) (time.Time, error) {
	c.freeze.mu.Lock()
	loaded, since := c.freeze.loaded, c.freeze.since
	c.freeze.mu.Unlock()
	if loaded {
		return since, nil
	}
	inc, err := readIncident(ctx, s, c.name)
	if err != nil {
		return time.Time{}, err
	}
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	if !c.freeze.loaded {
		c.freeze.loaded = true
		if inc != nil {
			c.freeze.since = inc.Since
		}
	}
	return c.freeze.since, nil
}

// frozenNow is the switch as held in memory, for the check a read makes after its
// grant: set before revoke-all looks for tokens, so that a token is either found by it
// or never handed out.
func (c *credential) frozenNow() bool {
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	return !c.freeze.since.IsZero()
}

func (c *credential) setFrozen(since time.Time) {
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	c.freeze.loaded, c.freeze.since = true, since
}

// forgetFrozen drops the switch from memory: another node wrote it.
func (c *credential) forgetFrozen() {
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	c.freeze.loaded = false
}

// frozenError is the answer to a read of a frozen client: a 4xx, since a Vault client
// retries a 5xx, and retrying cannot help until someone unfreezes it.
func frozenError(name string, since time.Time) error {
	return logical.CodedError(http.StatusLocked, fmt.Sprintf(
		"client %q is frozen by tokens/revoke-all since %s (the incident switch): token reads are refused until the security team writes tokens/unfreeze",
		name, since.UTC().Format(time.RFC3339)))
}

func incidentKey(name string) string { return incidentsPrefix + name }

func readIncident(ctx context.Context, s logical.Storage, name string) (*incident, error) {
	entry, err := s.Get(ctx, incidentKey(name))
	if err != nil || entry == nil {
		return nil, err
	}
	inc := new(incident)
	if err := entry.DecodeJSON(inc); err != nil {
		return nil, fmt.Errorf("decoding the incident record: %w", err)
	}
	return inc, nil
}

func putIncident(ctx context.Context, s logical.Storage, inc *incident) error {
	entry, err := logical.StorageEntryJSON(incidentKey(inc.Client), inc)
	if err != nil {
		return fmt.Errorf("encoding the incident record: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("storing the incident record: %w", err)
	}
	return nil
}

// incidentStep is one line of revoke-all's report, in its answer and in the log.
type incidentStep struct {
	Step    string `json:"step"`
	Outcome string `json:"outcome"` // done, skipped or failed
	Detail  string `json:"detail"`
}

// incidentRun is one run of revoke-all.
type incidentRun struct {
	b     *backend
	c     *credential
	s     logical.Storage
	inc   *incident
	steps []incidentStep
	// failure is the first error that keeps the run from finishing; its status is the
	// answer's.
	failure error
}

func (r *incidentRun) report(step, outcome, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	r.steps = append(r.steps, incidentStep{Step: step, Outcome: outcome, Detail: detail})
	log := r.b.Logger().Warn
	if outcome == "failed" {
		log = r.b.Logger().Error
	}
	log("tokens/revoke-all: "+step, "client", r.c.name, "outcome", outcome, "detail", detail)
}

func (r *incidentRun) fail(step string, err error) {
	r.report(step, "failed", "%s", err)
	if r.failure == nil {
		r.failure = err
	}
}

// revokeAll runs the break glass for credential c. It holds the credential's incident
// lock, so two runs for one client do not interleave.
func (b *backend) revokeAll(ctx context.Context, req *logical.Request, c *credential, rotate bool) (*incidentRun, error) {
	c.incidentMu.Lock()
	defer c.incidentMu.Unlock()
	s := req.Storage
	inc, err := readIncident(ctx, s, c.name)
	if err != nil {
		return nil, err
	}
	r := &incidentRun{b: b, c: c, s: s, inc: inc}
	if err := r.freeze(ctx, req); err != nil {
		return nil, err
	}
	if rotate {
		r.rotate(ctx)
	}
	if r.failure == nil {
		if err := r.gather(ctx); err != nil {
			return nil, err
		}
		r.revoke(ctx)
	}
	if err := putIncident(ctx, s, r.inc); err != nil {
		return nil, err
	}
	return r, nil
}

// freeze stores the switch, then sets it in memory: from then on no read hands out a
// token of this client, including reads whose grant is already at the tenant.
func (r *incidentRun) freeze(ctx context.Context, req *logical.Request) error {
	if r.inc == nil {
		r.inc = &incident{Client: r.c.name, Since: r.b.now(), RequestID: req.ID}
	}
	r.inc.Runs++
	if err := putIncident(ctx, r.s, r.inc); err != nil {
		return err
	}
	r.c.setFrozen(r.inc.Since)
	outcome := "done"
	if r.inc.Runs > 1 {
		outcome = "skipped"
	}
	r.report("freeze", outcome, "token reads of client %q refused since %s, until tokens/unfreeze (run %d of this incident)",
		r.c.name, r.inc.Since.UTC().Format(time.RFC3339), r.inc.Runs)
	return nil
}

// rotate changes the client's secret once per incident: a run after a rotation that
// succeeded does not rotate again.
func (r *incidentRun) rotate(ctx context.Context) {
	if !r.inc.RotatedAt.IsZero() {
		r.report("rotate", "skipped", "rotated during this incident at %s", r.inc.RotatedAt.UTC().Format(time.RFC3339))
		return
	}
	if _, err := r.b.rotateClient(ctx, r.s, r.c, true); err != nil {
		r.fail("rotate", fmt.Errorf("rotating the client secret: %w; nothing was revoked yet, run tokens/revoke-all again", err))
		return
	}
	r.inc.RotatedAt = r.b.now()
	if err := putIncident(ctx, r.s, r.inc); err != nil {
		r.fail("rotate", fmt.Errorf("the secret was rotated, but the incident record could not be stored: %w", err))
		return
	}
	r.report("rotate", "done", "the client secret was changed at the tenant and stored")
}

// gather adds to the pending list every live tracked token of the client and every
// token its reuse cache holds, stores the list, and only then empties the caches.
func (r *incidentRun) gather(ctx context.Context) error {
	known := make(map[string]bool, len(r.inc.Pending))
	for _, p := range r.inc.Pending {
		known[p.SHA256] = true
	}
	before := len(r.inc.Pending)
	add := func(p pendingToken) {
		if !known[p.SHA256] {
			known[p.SHA256] = true
			r.inc.Pending = append(r.inc.Pending, p)
		}
	}
	tracked, err := r.b.liveTracked(ctx, r.s, r.c.name)
	if err != nil {
		return err
	}
	for _, rec := range tracked {
		add(pendingToken{SHA256: rec.SHA256, AppID: rec.AppID, ExpiresAt: rec.ExpiresAt, From: "tracked", AccessToken: rec.AccessToken})
	}
	cached := r.b.cache.heldTokens(r.c.name)
	for _, h := range cached {
		add(pendingToken{SHA256: h.tok.SHA256, AppID: h.appID, ExpiresAt: h.tok.Expiry, From: "cached", AccessToken: h.tok.AccessToken})
	}
	if err := putIncident(ctx, r.s, r.inc); err != nil {
		return err
	}
	r.b.cache.resetClient(r.c.name)
	r.report("gather", "done", "%d tracked and %d cached tokens found, %d left from an earlier run; the client's caches are emptied",
		len(tracked), len(cached), before)
	if cfg, err := r.c.load(ctx, r.s); err == nil && cfg != nil && !cfg.TrackTokens {
		r.report("untracked", "skipped",
			"track_tokens is off for client %q: tokens it handed out without token_reuse are not known to the engine; revoke their leases (vault lease revoke -force -prefix <mount>/token), which revokes each at the tenant",
			r.c.name)
	}
	return nil
}

// liveTracked is the client's tracked tokens not yet revoked nor expired.
func (b *backend) liveTracked(ctx context.Context, s logical.Storage, name string) ([]*tokenRecord, error) {
	keys, err := s.List(ctx, tokensPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing token records: %w", err)
	}
	now := b.now()
	var out []*tokenRecord
	for _, sha := range keys {
		rec, err := readTokenRecord(ctx, s, sha)
		if err != nil {
			return nil, err
		}
		if rec != nil && rec.Client == name && rec.RevokedAt.IsZero() && now.Before(rec.ExpiresAt) {
			out = append(out, rec)
		}
	}
	return out, nil
}

// revoke revokes the pending tokens at the tenant, a few at a time, and stores the
// progress every incidentSaveEvery tokens.
func (r *incidentRun) revoke(ctx context.Context) {
	now := r.b.now()
	var live []pendingToken
	for _, p := range r.inc.Pending {
		if now.Before(p.ExpiresAt) {
			live = append(live, p)
		} else {
			r.inc.Expired++
		}
	}
	r.inc.Pending = live
	var (
		mu       sync.Mutex
		done     = map[string]bool{}
		firstErr error
		failed   int
	)
	save := func() error {
		mu.Lock()
		defer mu.Unlock()
		return r.saveProgress(ctx, done)
	}
	g := new(errgroup.Group)
	g.SetLimit(revokeWorkers)
	for _, p := range live {
		g.Go(func() error {
			err := r.revokeOne(ctx, p)
			mu.Lock()
			switch {
			case err != nil:
				failed++
				firstErr = cmp.Or(firstErr, err)
			default:
				done[p.SHA256] = true
			}
			due := err == nil && len(done)%incidentSaveEvery == 0
			mu.Unlock()
			if due {
				return save()
			}
			return nil
		})
	}
	if err := cmp.Or(g.Wait(), save()); err != nil {
		r.fail("revoke", err)
		return
	}
	switch {
	case failed > 0:
		r.fail("revoke", fmt.Errorf("%d of %d tokens could not be revoked, and stay pending for the next run of tokens/revoke-all (first: %w)", failed, len(live), firstErr))
	default:
		r.report("revoke", "done", "%d tokens revoked at the tenant in this run, %d in all; %d had expired", len(done), r.inc.Revoked, r.inc.Expired)
	}
}

// saveProgress moves the tokens revoked so far off the pending list and stores it.
// The caller holds the lock over done.
func (r *incidentRun) saveProgress(ctx context.Context, done map[string]bool) error {
	before := len(r.inc.Pending)
	r.inc.Pending = slices.DeleteFunc(r.inc.Pending, func(p pendingToken) bool { return done[p.SHA256] })
	r.inc.Revoked += before - len(r.inc.Pending)
	return putIncident(ctx, r.s, r.inc)
}

// revokeOne revokes one pending token with the client's current secret.
func (r *incidentRun) revokeOne(ctx context.Context, p pendingToken) error {
	if err := r.b.revokeAt(ctx, r.s, r.c, p.AppID, p.AccessToken, p.SHA256); err != nil {
		return fmt.Errorf("token %s…: %w", p.SHA256[:12], err)
	}
	return nil
}

// revokeAt revokes a token of client c, granted for appID, at the tenant with the
// client's current secret; then drops it from the reuse cache, so no reader gets it
// again, and marks its record, so that its leases end without asking the tenant.
// A setting that makes it impossible is a 400; the tenant's refusal is its own error.
func (b *backend) revokeAt(ctx context.Context, s logical.Storage, c *credential, appID, token, sha string) error {
	for range maxReadTries {
		epoch := c.gate.epochNow()
		v, err := b.cache.view(ctx, s, c.name, "", appID)
		switch {
		case err != nil:
			return err
		case v.config == nil:
			return logical.CodedError(http.StatusBadRequest, fmt.Sprintf("client: %q, whose token this is, no longer exists", c.name))
		case v.config.revokeEndpoint(appID) == "":
			return logical.CodedError(http.StatusBadRequest, fmt.Sprintf("client: %q has no revocation endpoint (token_url without revoke_url)", c.name))
		}
		err = c.revoke(ctx, s, v, epoch, token)
		if errors.Is(err, errStaleView) {
			continue
		}
		if err != nil {
			return tenantFailure("revoking the token", err)
		}
		b.cache.dropToken(token)
		return b.markRevoked(ctx, s, sha)
	}
	return logical.CodedError(http.StatusServiceUnavailable, "the client secret changed during the revocation more often than it could follow; try again")
}

// markRevoked notes on a token's record, if it has one, that the tenant revoked it: its
// leases then end without asking the tenant again.
func (b *backend) markRevoked(ctx context.Context, s logical.Storage, sha string) error {
	return b.updateRecord(ctx, s, sha, func(rec *tokenRecord) bool {
		if !rec.RevokedAt.IsZero() {
			return false
		}
		rec.RevokedAt = b.now()
		return true
	})
}

// heldToken is a token in the reuse cache with the application it was granted for.
type heldToken struct {
	appID string
	tok   *client.Token
}

// heldTokens copies the client's reused tokens out of the cache.
func (c *cache) heldTokens(name string) []heldToken {
	c.mu.RLock()
	defer c.mu.RUnlock()
	prefix := clientKey(name, "")
	var out []heldToken
	for key, tok := range c.tokens {
		if rest, ok := strings.CutPrefix(key, prefix); ok {
			appID, _, _ := strings.Cut(rest, "\n")
			out = append(out, heldToken{appID: appID, tok: tok})
		}
	}
	return out
}

// unfreeze lifts the switch. Tokens still pending keep it down unless force says the
// security team accepts them valid until they expire. It returns no incident when the
// client is not frozen.
func (b *backend) unfreeze(ctx context.Context, s logical.Storage, c *credential, force bool) (*incident, error) {
	c.incidentMu.Lock()
	defer c.incidentMu.Unlock()
	inc, err := readIncident(ctx, s, c.name)
	switch {
	case err != nil || inc == nil:
		return nil, err
	case len(inc.Pending) > 0 && !force:
		latest := slices.MaxFunc(inc.Pending, func(a, b pendingToken) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
		return nil, logical.CodedError(http.StatusConflict, fmt.Sprintf(
			"client %q: %d tokens of this incident are not yet revoked; run tokens/revoke-all again, or unfreeze with force=true to leave them valid until they expire (the last at %s)",
			c.name, len(inc.Pending), latest.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	if err := s.Delete(ctx, incidentKey(c.name)); err != nil {
		return nil, fmt.Errorf("deleting the incident record: %w", err)
	}
	c.setFrozen(time.Time{})
	// A grant that was at the tenant when the client froze may have filled the cache.
	b.cache.resetClient(c.name)
	b.Logger().Warn("tokens/unfreeze: token reads allowed again", "client", c.name,
		"frozen_since", inc.Since.UTC(), "revoked", inc.Revoked, "left_valid", len(inc.Pending))
	return inc, nil
}
