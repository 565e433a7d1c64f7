package cyberark

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// BenchmarkTrackedTokenRecord measures what track_tokens stores per token, and times a
// tracked uncached read (one grant from the emulated tenant and the record's write) to
// set beside BenchmarkTokenRead/token_reuse=false. The sizes are those of the stored
// entries themselves, read back from the storage the engine wrote them to, for the
// emulator's JWT access tokens and readers with Vault's identifiers (entity ID and
// request ID as UUIDs, a 24-character token accessor):
//
//   - B/token: the access token's length (the record holds the token itself);
//   - B/record: the record of an uncached read's token, with its one reader;
//   - B/reader: what each further reader of a reused token adds, once the periodic
//     function has stored it (the mean over the 2nd to the 16th);
//   - B/record-16-readers: a reused token's record at the cap (maxTrackedReaders);
//     later readers only raise readers_total.
//
// Vault adds to each entry its storage key (logical/<mount UUID>/tokens/<64 hex>,
// 116 bytes) and the barrier's 33 bytes of encryption (term, version, nonce, tag); seal
// wrapping in Enterprise adds more, not measured here. Run with
// `go test -run '^$' -bench TrackedTokenRecord .`.
func BenchmarkTrackedTokenRecord(b *testing.B) {
	e := newTestEnv(b)
	e.configureTracked(b)
	e.mustRequest(b, logical.CreateOperation, "roles/uncached", map[string]any{"token_reuse": false})
	e.mustRequest(b, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})

	ctx := b.Context()
	var reader atomic.Int64
	// Each read comes from another reader.
	try := func(path string) (*logical.Response, error) {
		i := reader.Add(1)
		resp, err := e.b.HandleRequest(ctx, &logical.Request{
			Operation: logical.ReadOperation, Path: path, Storage: e.storage, MountPoint: "cyberark/",
			EntityID:            fmt.Sprintf("%08x-7e57-4c1e-9a0b-%012x", i, i),
			ClientTokenAccessor: fmt.Sprintf("bench%019d", i),
			ID:                  fmt.Sprintf("%08x-1d5e-4f00-8b1e-%012x", i, i),
		})
		if err == nil && resp.IsError() {
			err = resp.Error()
		}
		return resp, err
	}
	read := func(path string) *logical.Response {
		resp, err := try(path)
		if err != nil {
			b.Fatalf("read %s: %v", path, err)
		}
		return resp
	}
	size := func(resp *logical.Response) int {
		key := tokensPrefix + resp.Data["token_sha256"].(string)
		entry, err := e.storage.Get(ctx, key)
		if err != nil || entry == nil {
			b.Fatalf("no record at %s: %v", key, err)
		}
		return len(entry.Value)
	}
	// What the periodic function does in Vault once a minute: store the readers.
	flush := func() {
		if _, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage, MountPoint: "cyberark/"}); err != nil {
			b.Fatal(err)
		}
	}

	uncached := read("token/uncached")
	token := len(uncached.Data["access_token"].(string))
	record := size(uncached)

	shared := read("token/shared")
	first := size(shared)
	atCap := first
	for n := 2; n <= maxTrackedReaders+1; n++ {
		if again := read("token/shared"); again.Data["token_sha256"] != shared.Data["token_sha256"] {
			b.Fatal("the reused token changed while its readers were counted")
		}
		flush()
		if n == maxTrackedReaders {
			atCap = size(shared)
		}
	}
	// One reader past the cap only raises readers_total, which keeps its digits.
	if past := size(shared); past != atCap {
		b.Fatalf("a reader past the cap changed the record from %d to %d bytes", atCap, past)
	}

	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := try("token/uncached"); err != nil {
				b.Error(err) // not Fatal: this is not the benchmark's goroutine
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(token), "B/token")
	b.ReportMetric(float64(record), "B/record")
	b.ReportMetric(float64(atCap-first)/float64(maxTrackedReaders-1), "B/reader")
	b.ReportMetric(float64(atCap), fmt.Sprintf("B/record-%d-readers", maxTrackedReaders))
}
