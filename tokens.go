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
// kept, as a lease keeps it, so that tokens/revoke can revoke by hash, and only where
// the client has a revocation endpoint; no answer carries it. ClientID and
// RevokeEndpoint pin where it may be revoked: a config rewritten since names another
// service user or host, which must never receive it.
type tokenRecord struct {
	SHA256         string        `json:"sha256"`
	Client         string        `json:"client"`
	Role           string        `json:"role,omitempty"`
	AppID          string        `json:"app_id"`
	ClientID       string        `json:"client_id"`
	RevokeEndpoint string        `json:"revoke_endpoint,omitempty"`
	IssuedAt       time.Time     `json:"issued_at"`
	ExpiresAt      time.Time     `json:"expires_at"`
	Reused         bool          `json:"reused"`
	Readers        []tokenReader `json:"readers"`
	ReadersTotal   int           `json:"readers_total"`
	RevokedAt      time.Time     `json:"revoked_at,omitzero"`
	AccessToken    string        `json:"access_token,omitempty"`
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

// tracker holds the readers of reused tokens not yet stored, by token hash, and an
// index of the stored records (client and expiry), so that pruning and revoke-all read
// no record they do not need.
type tracker struct {
	mu      sync.Mutex
	pending map[string][]tokenReader
	// stored is every stored record once indexed is set: read from storage by the
	// first use of this instance, then kept up to date by track.
	stored  map[string]indexed
	indexed bool
}

// indexed is what the index keeps of a record.
type indexed struct {
	client string
	expiry time.Time
}

func newTracker() *tracker {
	return &tracker{pending: make(map[string][]tokenReader), stored: make(map[string]indexed)}
}

func (t *tracker) recorded(sha string, e indexed) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stored[sha] = e
}

func (t *tracker) forget(sha string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.stored, sha)
}

// matching lists the indexed records that match; ok is false until the index has been
// read from storage.
func (t *tracker) matching(match func(indexed) bool) (shas []string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.indexed {
		return nil, false
	}
	for sha, e := range t.stored {
		if match(e) {
			shas = append(shas, sha)
		}
	}
	return shas, true
}

// index merges what storage holds into the index: records written since the scan
// began are in it already.
func (t *tracker) index(stored map[string]indexed) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for sha, e := range stored {
		if _, ok := t.stored[sha]; !ok {
			t.stored[sha] = e
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

// requeue puts back readers a flush could not store, ahead of newer ones.
func (t *tracker) requeue(sha string, rs []tokenReader) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending[sha] = append(rs, t.pending[sha]...)
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
func (b *backend) track(ctx context.Context, s logical.Storage, v *view, p *tokenPlan, tok *client.Token, reader tokenReader) error {
	rec := &tokenRecord{
		SHA256: tok.SHA256, Client: p.client, Role: p.role, AppID: p.appID,
		ClientID: v.config.ClientID, RevokeEndpoint: v.config.revokeEndpoint(p.appID),
		IssuedAt: b.now(), ExpiresAt: tok.Expiry, Reused: p.reuse,
	}
	if rec.RevokeEndpoint != "" {
		rec.AccessToken = tok.AccessToken // nothing could use it otherwise
	}
	rec.addReaders(reader)
	if err := putTokenRecord(ctx, s, rec); err != nil {
		return err
	}
	b.tracker.recorded(rec.SHA256, indexed{client: rec.Client, expiry: rec.ExpiresAt})
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
// deletes the records of tokens past their expiry. The periodic function runs it.
// Readers it could not store wait for the next run.
func (b *backend) flushTracked(ctx context.Context, s logical.Storage) error {
	var errs []error
	for sha, readers := range b.tracker.take() {
		err := b.updateRecord(ctx, s, sha, func(rec *tokenRecord) bool {
			rec.addReaders(readers...)
			return true
		})
		if err != nil {
			b.tracker.requeue(sha, readers)
			errs = append(errs, err)
		}
	}
	now := b.now()
	expired, err := b.indexedRecords(ctx, s, func(e indexed) bool { return now.After(e.expiry) })
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, sha := range expired {
		if err := s.Delete(ctx, tokensPrefix+sha); err != nil {
			errs = append(errs, err) // still indexed: the next run tries again
			continue
		}
		b.tracker.forget(sha)
	}
	return errors.Join(errs...)
}

// indexedRecords lists the records whose index entry matches. Only the first call on
// an instance reads every record, to build the index.
func (b *backend) indexedRecords(ctx context.Context, s logical.Storage, match func(indexed) bool) ([]string, error) {
	if shas, ok := b.tracker.matching(match); ok {
		return shas, nil
	}
	stored, err := b.scanTracked(ctx, s)
	if err != nil {
		return nil, err
	}
	b.tracker.index(stored)
	shas, _ := b.tracker.matching(match)
	return shas, nil
}

// scanTracked reads every stored record's index entry.
func (b *backend) scanTracked(ctx context.Context, s logical.Storage) (map[string]indexed, error) {
	keys, err := s.List(ctx, tokensPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing token records: %w", err)
	}
	out := make(map[string]indexed, len(keys))
	for _, sha := range keys {
		rec, err := readTokenRecord(ctx, s, sha)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out[sha] = indexed{client: rec.Client, expiry: rec.ExpiresAt}
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
