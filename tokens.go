package cyberark

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// Token tracking (track_tokens): who got which token, for incident response. A grant
// is one storage write; a reused read adds its reader in memory, and the periodic
// function stores what changed, so a read served from the reuse cache costs no write.

const (
	tokensPrefix = "tokens/"
	// maxTrackedReaders caps the readers kept per reused token: the count goes on.
	maxTrackedReaders = 16
)

// tokenRecord is what the engine remembers of a handed-out token. The token itself is
// kept, as a lease keeps it, so that tokens/revoke can revoke by hash; no answer
// carries it.
type tokenRecord struct {
	SHA256       string        `json:"sha256"`
	Client       string        `json:"client"`
	Role         string        `json:"role,omitempty"`
	AppID        string        `json:"app_id"`
	IssuedAt     time.Time     `json:"issued_at"`
	ExpiresAt    time.Time     `json:"expires_at"`
	Reused       bool          `json:"reused"`
	Readers      []tokenReader `json:"readers"`
	ReadersTotal int           `json:"readers_total"`
	RevokedAt    time.Time     `json:"revoked_at,omitzero"`
	AccessToken  string        `json:"access_token"`
}

// tokenReader is one read that handed the token out.
type tokenReader struct {
	EntityID  string    `json:"entity_id,omitempty"`
	Accessor  string    `json:"token_accessor,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
	At        time.Time `json:"at"`
}

func readerOf(req *logical.Request, now time.Time) tokenReader {
	return tokenReader{EntityID: req.EntityID, Accessor: req.ClientTokenAccessor, RequestID: req.ID, At: now}
}

// tracker holds the readers of reused tokens not yet stored, by token hash, and when
// each stored record's token expires, so that pruning reads no record it keeps.
type tracker struct {
	mu      sync.Mutex
	pending map[string][]tokenReader
	// expiry is every stored record's expiry, once indexed is set: read from storage
	// by the first prune of this instance, then kept up to date by track.
	expiry  map[string]time.Time
	indexed bool
}

func newTracker() *tracker {
	return &tracker{pending: make(map[string][]tokenReader), expiry: make(map[string]time.Time)}
}

func (t *tracker) recorded(sha string, exp time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expiry[sha] = exp
}

// expired takes the records past their expiry off the index; ok is false until the
// index has been read from storage.
func (t *tracker) expired(now time.Time) (shas []string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.indexed {
		return nil, false
	}
	for sha, exp := range t.expiry {
		if now.After(exp) {
			shas = append(shas, sha)
			delete(t.expiry, sha)
		}
	}
	return shas, true
}

// index merges what storage holds into the index: records written since the scan
// began are in it already.
func (t *tracker) index(stored map[string]time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for sha, exp := range stored {
		if _, ok := t.expiry[sha]; !ok {
			t.expiry[sha] = exp
		}
	}
	t.indexed = true
}

func (t *tracker) addReader(sha string, r tokenReader) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending[sha] = append(t.pending[sha], r)
}

// peek copies the readers not yet stored.
func (t *tracker) peek() map[string][]tokenReader {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string][]tokenReader, len(t.pending))
	for sha, rs := range t.pending {
		out[sha] = slices.Clone(rs)
	}
	return out
}

// readBy says whether a reader with the Vault token accessor got the token.
func (rec *tokenRecord) readBy(accessor string) bool {
	return slices.ContainsFunc(rec.Readers, func(r tokenReader) bool { return r.Accessor == accessor })
}

func (t *tracker) take() map[string][]tokenReader {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := t.pending
	t.pending = make(map[string][]tokenReader)
	return out
}

func (rec *tokenRecord) addReaders(rs ...tokenReader) {
	for _, r := range rs {
		rec.ReadersTotal++
		if len(rec.Readers) < maxTrackedReaders {
			rec.Readers = append(rec.Readers, r)
		}
	}
}

// track records a token just granted for a read, one storage write.
func (b *backend) track(ctx context.Context, s logical.Storage, p *tokenPlan, tok *client.Token, reader tokenReader) error {
	rec := &tokenRecord{
		SHA256: tok.SHA256, Client: p.client, Role: p.role, AppID: p.appID,
		IssuedAt: b.now(), ExpiresAt: tok.Expiry, Reused: p.reuse, AccessToken: tok.AccessToken,
	}
	rec.addReaders(reader)
	if err := putTokenRecord(ctx, s, rec); err != nil {
		return err
	}
	b.tracker.recorded(rec.SHA256, rec.ExpiresAt)
	return nil
}

func putTokenRecord(ctx context.Context, s logical.Storage, rec *tokenRecord) error {
	entry, err := logical.StorageEntryJSON(tokensPrefix+rec.SHA256, rec)
	if err != nil {
		return fmt.Errorf("encoding the token record: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("storing the token record: %w", err)
	}
	return nil
}

func readTokenRecord(ctx context.Context, s logical.Storage, sha string) (*tokenRecord, error) {
	entry, err := s.Get(ctx, tokensPrefix+sha)
	if err != nil || entry == nil {
		return nil, err
	}
	rec := new(tokenRecord)
	if err := entry.DecodeJSON(rec); err != nil {
		return nil, fmt.Errorf("decoding the token record: %w", err)
	}
	return rec, nil
}

// flushTracked stores the readers of reused tokens gathered since the last flush and
// deletes the records of tokens past their expiry. The periodic function runs it. Only
// its first run on an instance reads every record, to learn their expiries.
func (b *backend) flushTracked(ctx context.Context, s logical.Storage) error {
	var errs []error
	for sha, readers := range b.tracker.take() {
		errs = append(errs, b.updateRecord(ctx, s, sha, func(rec *tokenRecord) bool {
			rec.addReaders(readers...)
			return true
		}))
	}
	expired, ok := b.tracker.expired(b.now())
	if !ok {
		stored, err := b.scanTracked(ctx, s)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		b.tracker.index(stored)
		expired, _ = b.tracker.expired(b.now())
	}
	for _, sha := range expired {
		errs = append(errs, s.Delete(ctx, tokensPrefix+sha))
	}
	return errors.Join(errs...)
}

// scanTracked reads every stored record's expiry.
func (b *backend) scanTracked(ctx context.Context, s logical.Storage) (map[string]time.Time, error) {
	keys, err := s.List(ctx, tokensPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing token records: %w", err)
	}
	out := make(map[string]time.Time, len(keys))
	for _, sha := range keys {
		rec, err := readTokenRecord(ctx, s, sha)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out[sha] = rec.ExpiresAt
		}
	}
	return out, nil
}

// updateRecord changes a token's record, if it has one, under the records lock: the
// periodic flush of readers and a revocation must not overwrite each other's change.
// change says whether there is anything to store.
func (b *backend) updateRecord(ctx context.Context, s logical.Storage, sha string, change func(*tokenRecord) bool) error {
	b.recordsMu.Lock()
	defer b.recordsMu.Unlock()
	rec, err := readTokenRecord(ctx, s, sha)
	if err != nil || rec == nil || !change(rec) {
		return err
	}
	return putTokenRecord(ctx, s, rec)
}
