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

// The break glass for a client (tokens/revoke-all): freeze its token reads, put every
// token of its reuse cache on the list, rotate its secret if asked, revoke every token
// the engine knows it handed out, and keep the reads frozen until tokens/unfreeze. The
// list is made before the rotation, since a rotation empties the client's caches. What it must revoke is in storage before it
// empties a cache: tracked tokens have their records, and a token known only to the
// reuse cache gets an entry of its own. A run cut short (a tenant outage, Vault's
// request timeout, a killed plugin) is finished by running it again, and revoking a
// token twice is harmless (RFC 7009 answers 200 for a token already revoked).

const (
	incidentsPrefix = "incidents/"
	// incidentTokensPrefix holds, per client, the tokens of an incident that only the
	// reuse cache knew: incident-tokens/<client>/<sha256>.
	incidentTokensPrefix = "incident-tokens/"
	// revokeWorkers bounds the revocations in flight at the tenant. The failed-login
	// gate bounds them further, to the refusals the budget has left.
	revokeWorkers = 8
	// defaultDrainLimit bounds the wait for the token reads that began before the
	// freeze: well within the minute a Vault client waits for the answer, and Vault's
	// 90 s for the request, so that the revocations and the answer still fit.
	defaultDrainLimit = 20 * time.Second
)

// incident is a client's frozen state and what its runs did.
type incident struct {
	Client    string    `json:"client"`
	Since     time.Time `json:"since"`
	RequestID string    `json:"request_id"`
	Runs      int       `json:"runs"`
	RotatedAt time.Time `json:"rotated_at,omitzero"`
	// Gathered: a run has put every token of the reuse cache on the list and emptied
	// the cache. Before that, tokens only the cache knows are on no list, so an empty
	// list does not mean that nothing is left valid.
	Gathered bool `json:"gathered,omitempty"`
	Revoked  int  `json:"revoked"`
	Expired  int  `json:"expired"`
}

// revokeTarget is a token to revoke, with where it may be revoked: the service user
// and endpoint it was granted through.
type revokeTarget struct {
	SHA256         string    `json:"sha256"`
	AppID          string    `json:"app_id"`
	ClientID       string    `json:"client_id"`
	RevokeEndpoint string    `json:"revoke_endpoint"`
	ExpiresAt      time.Time `json:"expires_at"`
	AccessToken    string    `json:"access_token"`
	// tracked: the token has a record (tokens/<sha>), which marks it revoked;
	// otherwise it has an incident entry, which is deleted.
	tracked bool
}

func (rec *tokenRecord) target() revokeTarget {
	return revokeTarget{SHA256: rec.SHA256, AppID: rec.AppID, ClientID: rec.ClientID, RevokeEndpoint: rec.RevokeEndpoint,
		ExpiresAt: rec.ExpiresAt, AccessToken: rec.AccessToken, tracked: true}
}

// freezeState is a client's incident switch as this instance knows it: read from
// storage once, then kept in memory, since every token read asks.
type freezeState struct {
	mu     sync.Mutex
	loaded bool
	since  time.Time // zero: not frozen
	// gen moves whenever the switch is set or forgotten, so that a load from storage
	// that began before is not saved over what came after.
	gen uint64
}

// frozenSince says since when the client's token reads are frozen, zero if they are not.
func (c *credential) frozenSince(ctx context.Context, s logical.Storage) (time.Time, error) {
	for {
		c.freeze.mu.Lock()
		loaded, since, gen := c.freeze.loaded, c.freeze.since, c.freeze.gen
		c.freeze.mu.Unlock()
		if loaded {
			return since, nil
		}
		inc, err := readIncident(ctx, s, c.name)
		if err != nil {
			return time.Time{}, err
		}
		c.freeze.mu.Lock()
		if c.freeze.gen == gen {
			// Nothing set or forgot the switch during the load: what it read stands.
			since = time.Time{}
			if inc != nil {
				since = inc.Since
			}
			c.freeze.loaded, c.freeze.since = true, since
			c.freeze.mu.Unlock()
			return since, nil
		}
		c.freeze.mu.Unlock() // changed meanwhile: look again
	}
}

// inflight counts calls in progress, and lets one wait for those that began before a
// moment (a mark) while later ones come and go.
type inflight struct {
	mu     sync.Mutex
	epoch  uint64        // moves at each mark
	before int           // calls in progress that entered before the last mark
	since  int           // calls in progress that entered after it
	wake   chan struct{} // closed when a call ends; nil until a waiter needs one
}

// enter counts a call and returns what leave needs.
func (f *inflight) enter() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.since++
	return f.epoch
}

func (f *inflight) leave(epoch uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch == f.epoch {
		f.since--
	} else {
		f.before--
	}
	if f.wake != nil {
		close(f.wake)
		f.wake = nil
	}
}

// waitBefore marks this moment and returns once no call that entered before it is in
// progress, or with how many still are when ctx ends.
func (f *inflight) waitBefore(ctx context.Context) (left int) {
	f.mu.Lock()
	f.epoch++
	f.before += f.since
	f.since = 0
	f.mu.Unlock()
	for {
		f.mu.Lock()
		left = f.before
		if left == 0 {
			f.mu.Unlock()
			return 0
		}
		if f.wake == nil {
			f.wake = make(chan struct{})
		}
		wake := f.wake
		f.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return left
		}
	}
}

// beforeMark is how many calls that entered before the last mark are still in progress.
func (f *inflight) beforeMark() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.before
}

func (c *credential) setFrozen(since time.Time) {
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	c.freeze.loaded, c.freeze.since = true, since
	c.freeze.gen++
}

// frozenInMemory is the switch as this instance holds it, without asking storage.
func (c *credential) frozenInMemory() time.Time {
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	if !c.freeze.loaded {
		return time.Time{}
	}
	return c.freeze.since
}

// forgetFrozen drops the switch from memory: another node wrote it.
func (c *credential) forgetFrozen() {
	c.freeze.mu.Lock()
	defer c.freeze.mu.Unlock()
	c.freeze.loaded = false
	c.freeze.gen++
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
	// left is how many tokens this run could not revoke.
	left int
	// undrained is how many token reads that began before the freeze had not ended
	// when the list was made.
	undrained int
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
	r.drain(ctx)
	if err := r.gather(ctx); err != nil {
		return nil, err
	}
	if rotate {
		r.rotate(ctx)
	}
	if r.failure == nil {
		if err := r.revoke(ctx); err != nil {
			return nil, err
		}
	} else if targets, err := b.targets(ctx, s, c.name); err == nil {
		r.left = len(targets) // not revoked after the failed rotation: all still to do
	}
	if r.undrained > 0 {
		// Reported last, so that what could be revoked was.
		r.fail("drain", logical.CodedError(http.StatusServiceUnavailable, fmt.Sprintf(
			"%d token reads of client %q that began before the freeze were still in progress after %s, so a token one of them hands out may be on no list; run tokens/revoke-all again",
			r.undrained, r.c.name, r.b.drainLimit)))
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
	err := putIncident(ctx, r.s, r.inc)
	// Set in memory even if the write is reported failed: it may have landed, or
	// land later (a storage that timed out after committing), and a read may be
	// loading the switch from storage right now. Fail closed: this node refuses reads
	// until a run stores the switch or an unfreeze finds no record and lifts it.
	r.c.setFrozen(r.inc.Since)
	if err != nil {
		return err
	}
	outcome := "done"
	if r.inc.Runs > 1 {
		outcome = "skipped"
	}
	r.report("freeze", outcome, "token reads of client %q refused since %s, until tokens/unfreeze (run %d of this incident)",
		r.c.name, r.inc.Since.UTC().Format(time.RFC3339), r.inc.Runs)
	return nil
}

// drain waits for the client's token reads that began before the freeze. Each either
// hands its token out before it ends, with a record or in the reuse cache, or sees the
// freeze and revokes it: the list made after this holds whatever they handed out.
func (r *incidentRun) drain(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.b.drainLimit)
	defer cancel()
	r.undrained = r.c.reads.waitBefore(ctx)
}

// rotate changes the client's secret once per incident: a run after a rotation that
// succeeded does not rotate again.
func (r *incidentRun) rotate(ctx context.Context) {
	if !r.inc.RotatedAt.IsZero() {
		r.report("rotate", "skipped", "rotated during this incident at %s", r.inc.RotatedAt.UTC().Format(time.RFC3339))
		return
	}
	if _, err := r.b.rotateClient(ctx, r.s, r.c, true); err != nil {
		r.fail("rotate", fmt.Errorf("rotating the client secret: %w; the tokens are on the list but nothing was revoked yet: fix what the rotation says, or run tokens/revoke-all without rotate=true to revoke now and rotate afterwards", err))
		return
	}
	r.inc.RotatedAt = r.b.now()
	if err := putIncident(ctx, r.s, r.inc); err != nil {
		r.fail("rotate", fmt.Errorf("the secret was rotated, but the incident record could not be stored: %w", err))
		return
	}
	r.report("rotate", "done", "the client secret was changed at the tenant and stored")
}

// gather stores an entry for every token the client's reuse cache holds that has no
// record, and only then empties the client's caches. Tracked tokens need nothing: their
// records are the list.
func (r *incidentRun) gather(ctx context.Context) error {
	// The pins first: a config written after this empties the cache, so every token
	// heldTokens returns was granted under them.
	cfg, err := r.c.load(ctx, r.s)
	if err != nil {
		return err
	}
	var stored int
	if cfg != nil {
		for _, h := range r.b.cache.heldTokens(r.c.name) {
			if rec, err := readTokenRecord(ctx, r.s, h.tok.SHA256); err != nil || rec != nil {
				if err != nil {
					return err
				}
				continue // tracked: its record is on the list
			}
			t := revokeTarget{SHA256: h.tok.SHA256, AppID: h.appID, ClientID: cfg.ClientID, RevokeEndpoint: cfg.revokeEndpoint(h.appID),
				ExpiresAt: h.tok.Expiry, AccessToken: h.tok.AccessToken}
			if err := putIncidentToken(ctx, r.s, r.c.name, t); err != nil {
				return err
			}
			stored++
		}
	}
	r.b.cache.resetClient(r.c.name)
	r.inc.Gathered = true
	r.report("gather", "done", "%d tokens known only to the reuse cache put on record; the client's caches are emptied", stored)
	if cfg != nil && !cfg.TrackTokens {
		r.report("untracked", "skipped",
			"track_tokens is off for client %q: tokens it handed out that are not in its reuse cache now (every token of a role without token_reuse, and reused tokens the cache has let go) are known only to their leases; revoke the leases of its roles (vault lease revoke -prefix <mount>/token/<role>), which revokes each token at the tenant",
			r.c.name)
	}
	return nil
}

// targets is what the client's incident has left to revoke: its live tracked tokens
// not yet revoked, and its incident entries.
func (b *backend) targets(ctx context.Context, s logical.Storage, name string) ([]revokeTarget, error) {
	now := b.now()
	shas, err := b.indexedRecords(ctx, s, func(e indexed) bool { return e.client == name && now.Before(e.expiry) })
	if err != nil {
		return nil, err
	}
	var out []revokeTarget
	for _, sha := range shas {
		rec, err := readTokenRecord(ctx, s, sha)
		if err != nil {
			return nil, err
		}
		if rec != nil && rec.RevokedAt.IsZero() {
			out = append(out, rec.target())
		}
	}
	entries, err := listIncidentTokens(ctx, s, name)
	if err != nil {
		return nil, err
	}
	return append(out, entries...), nil
}

// revoke revokes the targets at the tenant, a few at a time. Each success is stored as
// it happens (a record marked, an entry deleted), so a run cut short loses nothing.
func (r *incidentRun) revoke(ctx context.Context) error {
	targets, err := r.b.targets(ctx, r.s, r.c.name)
	if err != nil {
		return err
	}
	var (
		mu                       sync.Mutex
		revoked, expired, failed int
		firstErr                 error
	)
	now := r.b.now()
	g := new(errgroup.Group)
	g.SetLimit(revokeWorkers)
	for _, t := range targets {
		g.Go(func() error {
			var err error
			gone := !now.Before(t.ExpiresAt)
			if !gone {
				err = r.b.revokeAt(ctx, r.s, r.c, t)
			}
			if err == nil && !t.tracked {
				err = deleteIncidentToken(ctx, r.s, r.c.name, t.SHA256)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failed++
				firstErr = cmp.Or(firstErr, fmt.Errorf("token %s…: %w", t.SHA256[:min(12, len(t.SHA256))], err))
			case gone:
				expired++
			default:
				revoked++
			}
			return nil
		})
	}
	_ = g.Wait()
	r.inc.Revoked += revoked
	r.inc.Expired += expired
	r.left = failed
	if failed > 0 {
		r.fail("revoke", fmt.Errorf("%d of %d tokens could not be revoked and stay on the list for the next run of tokens/revoke-all (first: %w)", failed, len(targets), firstErr))
		return nil
	}
	r.report("revoke", "done", "%d tokens revoked at the tenant in this run, %d in this incident; %d had expired", revoked, r.inc.Revoked, expired)
	return nil
}

// revokeAt revokes a token of client c at the tenant with the client's current secret,
// but only where the token was granted: the same service user and revocation endpoint.
// A config rewritten since (another host, another user) never receives the token; it
// stays on the list and the answer says why. Then the token leaves the reuse cache and
// its record is marked, so that its leases end without asking the tenant. A setting
// that makes it impossible is a 400; the tenant's answer is its own error.
func (b *backend) revokeAt(ctx context.Context, s logical.Storage, c *credential, t revokeTarget) error {
	if t.AccessToken == "" || t.RevokeEndpoint == "" {
		return logical.CodedError(http.StatusBadRequest, "the client had no revocation endpoint when it handed this token out (token_url without revoke_url); revoke it at the tenant by other means or let it expire")
	}
	for range maxReadTries {
		epoch := c.gate.epochNow()
		v, err := b.cache.view(ctx, s, c.name, "", t.AppID)
		switch {
		case err != nil:
			return err
		case v.config == nil:
			return logical.CodedError(http.StatusBadRequest, fmt.Sprintf("client: %q, whose token this is, no longer exists; its config is needed to revoke it", c.name))
		case v.config.ClientID != t.ClientID || v.config.revokeEndpoint(t.AppID) != t.RevokeEndpoint:
			return logical.CodedError(http.StatusConflict, fmt.Sprintf(
				"client %q now names another service user or revocation endpoint than the one that granted this token (%s): it is not sent there; restore the config, or revoke it at the tenant by hand",
				c.name, t.RevokeEndpoint))
		}
		err = c.revoke(ctx, s, v, epoch, t.AccessToken)
		var coded logical.HTTPCodedError
		switch {
		case errors.Is(err, errStaleView):
			continue
		case errors.As(err, &coded):
			return err // the failed-login gate's own answer, with its status
		case err != nil:
			return tenantFailure("revoking the token", err)
		}
		b.cache.dropToken(t.AccessToken)
		if !t.tracked {
			return nil
		}
		return b.markRevoked(ctx, s, t.SHA256)
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

func incidentTokenKey(client, sha string) string { return incidentTokensPrefix + client + "/" + sha }

func putIncidentToken(ctx context.Context, s logical.Storage, client string, t revokeTarget) error {
	entry, err := logical.StorageEntryJSON(incidentTokenKey(client, t.SHA256), t)
	if err != nil {
		return fmt.Errorf("encoding an incident token: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("storing an incident token: %w", err)
	}
	return nil
}

func deleteIncidentToken(ctx context.Context, s logical.Storage, client, sha string) error {
	if err := s.Delete(ctx, incidentTokenKey(client, sha)); err != nil {
		return fmt.Errorf("deleting an incident token: %w", err)
	}
	return nil
}

func listIncidentTokens(ctx context.Context, s logical.Storage, client string) ([]revokeTarget, error) {
	keys, err := s.List(ctx, incidentTokensPrefix+client+"/")
	if err != nil {
		return nil, fmt.Errorf("listing incident tokens: %w", err)
	}
	var out []revokeTarget
	for _, sha := range keys {
		entry, err := s.Get(ctx, incidentTokenKey(client, sha))
		if err != nil || entry == nil {
			if err != nil {
				return nil, fmt.Errorf("reading an incident token: %w", err)
			}
			continue
		}
		var t revokeTarget
		if err := entry.DecodeJSON(&t); err != nil {
			return nil, fmt.Errorf("decoding an incident token: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
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
// client is not frozen, and how many tokens it left valid.
func (b *backend) unfreeze(ctx context.Context, s logical.Storage, c *credential, force bool) (*incident, int, error) {
	c.incidentMu.Lock()
	defer c.incidentMu.Unlock()
	inc, err := readIncident(ctx, s, c.name)
	if err != nil || inc == nil {
		if err != nil {
			return nil, 0, err
		}
		// No record, but this node may be frozen in memory, failing closed after a
		// freeze or an unfreeze whose write was reported failed. A freeze that was
		// never stored revoked nothing, so only force lifts it.
		since := c.frozenInMemory()
		if !since.IsZero() && !force {
			return nil, 0, logical.CodedError(http.StatusConflict, fmt.Sprintf(
				"client %q is frozen on this node only: a tokens/revoke-all run could not store its freeze (its answer said why) and revoked nothing; run tokens/revoke-all again, or unfreeze with force=true to serve reads without it",
				c.name))
		}
		c.setFrozen(time.Time{}) // as storage says
		if since.IsZero() {
			return nil, 0, nil
		}
		b.Logger().Warn("tokens/unfreeze: token reads allowed again; the client was frozen on this node only, by a run whose freeze was not stored",
			"client", c.name, "frozen_since", since.UTC())
		return &incident{Client: c.name, Since: since}, 0, nil
	}
	left, err := b.targets(ctx, s, c.name)
	if err != nil {
		return nil, 0, err
	}
	if !inc.Gathered && !force {
		return nil, 0, logical.CodedError(http.StatusConflict, fmt.Sprintf(
			"client %q: no run of tokens/revoke-all has got as far as gathering the tokens of its reuse cache (the run's answer says what stopped it), so tokens may be left that no list holds; run tokens/revoke-all again, or unfreeze with force=true to leave them valid until they expire",
			c.name))
	}
	if n := c.reads.beforeMark(); n > 0 && !force {
		// Such a read may still get a token, and would hand it out once unfrozen; once
		// it ends frozen, it has withheld and revoked it.
		return nil, 0, logical.CodedError(http.StatusConflict, fmt.Sprintf(
			"client %q: %d token reads that began before the last tokens/revoke-all run are still in progress, and a token one of them gets would be handed out once unfrozen; unfreeze again once they end (each ends within the client's total_timeout), or with force=true",
			c.name, n))
	}
	if len(left) > 0 && !force {
		latest := slices.MaxFunc(left, func(a, b revokeTarget) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
		return nil, 0, logical.CodedError(http.StatusConflict, fmt.Sprintf(
			"client %q: %d tokens of this incident are not yet revoked; run tokens/revoke-all again (its answer says why they failed), or unfreeze with force=true to leave them valid until they expire (the last at %s)",
			c.name, len(left), latest.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	for _, t := range left {
		if !t.tracked {
			if err := deleteIncidentToken(ctx, s, c.name, t.SHA256); err != nil {
				return nil, 0, err
			}
		}
	}
	if err := s.Delete(ctx, incidentKey(c.name)); err != nil {
		// The delete may have landed. This unfreeze passed its checks, so storage
		// decides: the next read loads the switch. (Kept frozen in memory, the node
		// would need force=true to lift a freeze that did revoke everything.)
		c.forgetFrozen()
		return nil, 0, fmt.Errorf("deleting the incident record: %w", err)
	}
	c.setFrozen(time.Time{})
	// A grant that was at the tenant when the client froze may have filled the cache.
	b.cache.resetClient(c.name)
	b.Logger().Warn("tokens/unfreeze: token reads allowed again", "client", c.name,
		"frozen_since", inc.Since.UTC(), "revoked", inc.Revoked, "left_valid", len(left))
	return inc, len(left), nil
}
