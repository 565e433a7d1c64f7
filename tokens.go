package cyberark

import (
	"context"
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

// tracker holds the readers of reused tokens not yet stored, by token hash.
type tracker struct {
	mu      sync.Mutex
	pending map[string][]tokenReader
}

func newTracker() *tracker {
	return &tracker{pending: make(map[string][]tokenReader)}
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
	return putTokenRecord(ctx, s, rec)
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
func (b *backend) flushTracked(ctx context.Context, s logical.Storage) error {
	var errs []error
	for sha, readers := range b.tracker.take() {
		errs = append(errs, b.updateRecord(ctx, s, sha, func(rec *tokenRecord) bool {
			rec.addReaders(readers...)
			return true
		}))
	}
	keys, err := s.List(ctx, tokensPrefix)
	if err != nil {
		return fmt.Errorf("listing token records: %w", err)
	}
	now := b.now()
	for _, sha := range keys {
		rec, err := readTokenRecord(ctx, s, sha)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec != nil && now.After(rec.ExpiresAt) {
			errs = append(errs, s.Delete(ctx, tokensPrefix+sha))
		}
	}
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
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
