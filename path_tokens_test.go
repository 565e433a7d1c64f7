package cyberark

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestTrackedTokenLookupAndRevoke: with track_tokens, a grant is recorded with its
// reader, a reused read adds its reader at the periodic flush without a write of its
// own, tokens/lookup answers by token or hash without the token, and tokens/revoke
// revokes at the tenant, drops the token from the reuse cache and makes the lease's
// end a no-op.
func TestTrackedTokenLookupAndRevoke(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configureTracked(t)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})

	read := func(entity string) *logical.Response {
		t.Helper()
		resp, err := e.b.HandleRequest(t.Context(), &logical.Request{
			Operation: logical.ReadOperation, Path: "token/shared", Storage: e.storage,
			MountPoint: "cyberark/", EntityID: entity, ClientTokenAccessor: "acc-" + entity, ID: "req-" + entity,
		})
		if err != nil || resp.IsError() {
			t.Fatalf("read as %s: %v %v", entity, resp.Error(), err)
		}
		return resp
	}
	first := read("alice")
	writes := e.countingPuts(t, func() { read("bob") })
	if writes != 0 {
		t.Errorf("a reused read made %d storage writes, want 0", writes)
	}
	sha := first.Data["token_sha256"].(string)
	// Bob's read is not stored yet: the accessor lookup finds it all the same.
	byBob := e.mustRequest(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token_accessor": "acc-bob"})
	if got := byBob.Data["tokens"].([]map[string]any); len(got) != 1 || got[0]["token_sha256"] != sha {
		t.Errorf("lookup by bob's accessor: %v", got)
	}
	if none := e.mustRequest(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token_accessor": "acc-mallory"}); len(none.Data["tokens"].([]map[string]any)) != 0 || len(none.Warnings) != 0 {
		t.Errorf("lookup by an accessor that read nothing, every client tracked: %v, warnings %v", none.Data["tokens"], none.Warnings)
	}
	// A client that does not track: an empty list says nothing of what it handed out.
	e.mustRequest(t, logical.CreateOperation, "clients/quiet", e.configData())
	if none := e.mustRequest(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token_accessor": "acc-mallory"}); !strings.Contains(strings.Join(none.Warnings, " "), "[quiet]") {
		t.Errorf("lookup by accessor with client quiet untracked: warnings %v, want one naming it", none.Warnings)
	}
	if err := e.b.flushTracked(t.Context(), e.storage); err != nil {
		t.Fatal(err)
	}

	look := e.mustRequest(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token_sha256": sha})
	raw, _ := json.Marshal(look.Data)
	if strings.Contains(string(raw), first.Data["access_token"].(string)) {
		t.Fatal("tokens/lookup answered with the token")
	}
	readers := look.Data["readers"].([]map[string]any)
	if look.Data["role"] != "shared" || look.Data["client"] != "default" || len(readers) != 2 ||
		readers[0]["entity_id"] != "alice" || readers[1]["entity_id"] != "bob" || readers[1]["request_id"] != "req-bob" {
		t.Errorf("lookup: role %v client %v readers %v", look.Data["role"], look.Data["client"], readers)
	}
	byToken := e.mustRequest(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token": first.Data["access_token"]})
	if byToken.Data["token_sha256"] != sha {
		t.Error("lookup by the token found another record")
	}

	e.mustRequest(t, logical.UpdateOperation, "tokens/revoke", map[string]any{"token_sha256": sha})
	if !e.emu.Revoked(first.Data["access_token"].(string)) {
		t.Fatal("tokens/revoke did not revoke the token at the tenant")
	}
	if again := read("carol"); again.Data["token_sha256"] == sha {
		t.Error("the reuse cache handed out the revoked token")
	}

	// A lease on a revoked token ends without another revocation.
	own := e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.mustRequest(t, logical.UpdateOperation, "tokens/revoke", map[string]any{"token": own.Data["access_token"]})
	before := e.emu.Stats().RevokeRequests
	if _, err := e.revoke(t, own.Secret); err != nil {
		t.Fatal(err)
	}
	if e.emu.Stats().RevokeRequests != before {
		t.Error("the lease's end asked the tenant again for a token tokens/revoke had revoked")
	}
}

// TestTokensPathsRefuse: bad names and untracked tokens.
func TestTokensPathsRefuse(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	resp, err := e.request(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token_sha256": "ABC"})
	assertBadRequest(t, resp, err, "token_sha256")
	resp, err = e.request(t, logical.UpdateOperation, "tokens/lookup", map[string]any{"token_accessor": "acc", "token_sha256": strings.Repeat("a", 64)})
	assertBadRequest(t, resp, err, "token_accessor")
	tok := e.mustRequest(t, logical.ReadOperation, "token", nil).Data["access_token"].(string)
	resp, err = e.request(t, logical.UpdateOperation, "tokens/revoke", map[string]any{"token": tok})
	if statusOf(resp, err) != http.StatusNotFound {
		t.Errorf("revoke of an untracked token: status %d, %v; want a 404", statusOf(resp, err), err)
	}
}

// putCounter counts storage writes.
type putCounter struct {
	logical.Storage
	puts int
}

func (p *putCounter) Put(ctx context.Context, e *logical.StorageEntry) error {
	p.puts++
	return p.Storage.Put(ctx, e)
}

// countingPuts runs f with the env's storage counted, and says how many writes it made.
func (e *testEnv) countingPuts(t *testing.T, f func()) int {
	t.Helper()
	inner := e.storage
	counted := &putCounter{Storage: inner}
	e.storage = counted
	defer func() { e.storage = inner }()
	f()
	return counted.puts
}

// getCounter counts storage reads.
type getCounter struct {
	logical.Storage
	gets int
}

func (g *getCounter) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	g.gets++
	return g.Storage.Get(ctx, key)
}

// TestTrackedRecordsPruned: a record outlives its token by at most one periodic run; a
// new instance learns the stored expiries once, and a later run with nothing to store
// reads no record.
func TestTrackedRecordsPruned(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	clock := newFakeClock(e)
	e.configureTracked(t)
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	e.restart(t)
	e.b.now = clock.Now
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	flush := func() (gets int) {
		t.Helper()
		counted := &getCounter{Storage: e.storage}
		if err := e.b.flushTracked(t.Context(), counted); err != nil {
			t.Fatal(err)
		}
		return counted.gets
	}
	if gets := flush(); gets != 2 {
		t.Errorf("the first flush of an instance read %d records, want both", gets)
	}
	if gets := flush(); gets != 0 {
		t.Errorf("a flush with nothing to store read %d records, want 0", gets)
	}
	if keys, _ := e.storage.List(t.Context(), tokensPrefix); len(keys) != 2 {
		t.Fatalf("%d records before expiry, want 2", len(keys))
	}
	clock.Advance(3601 * time.Second)
	flush()
	if keys, _ := e.storage.List(t.Context(), tokensPrefix); len(keys) != 0 {
		t.Errorf("%d records after their tokens expired, want 0", len(keys))
	}
}

// configureTracked writes the default client with track_tokens and a scope.
func (e *testEnv) configureTracked(tb testing.TB) {
	tb.Helper()
	data := e.configData()
	data["scopes"] = "read"
	data["track_tokens"] = true
	e.mustRequest(tb, logical.CreateOperation, "config", data)
}
