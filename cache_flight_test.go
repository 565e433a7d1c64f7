package cyberark

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestReuseGrantInFlightAcrossAWrite: a reuse grant that began before a config or role
// write was made with the old settings. A read after the write must not join it, and
// once it lands it must not be cached for the readers that come after both. The role's
// scopes stay as they were, so the reuse key alone cannot tell the old grant from a new
// one: only the cache's generation can.
func TestReuseGrantInFlightAcrossAWrite(t *testing.T) {
	t.Parallel()
	writes := []struct {
		name  string
		write func(t *testing.T, e *testEnv)
	}{
		{"config write", func(t *testing.T, e *testEnv) {
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"request_timeout": "20s", "verify_connection": false})
		}},
		{"role write", func(t *testing.T, e *testEnv) {
			e.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"ttl": "1h"})
		}},
	}
	for _, tc := range writes {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.configure(t)
			e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "token_reuse": true})
			e.emu.Reset()
			// Long enough for the write and a whole second read to finish inside it,
			// also under -race.
			const delay = 1500 * time.Millisecond
			e.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Delay: delay})

			read := func(t *testing.T) string {
				t.Helper()
				resp, err := e.request(t, logical.ReadOperation, "token/r", nil)
				if err != nil {
					t.Errorf("read: %v", err)
					return ""
				}
				if resp.IsError() {
					t.Errorf("read: %v", resp.Error())
					return ""
				}
				return resp.Data["access_token"].(string)
			}
			before := make(chan string, 1)
			go func() { before <- read(t) }()
			waitFor(t, "the first read's grant to reach the tenant", func() bool { return e.emu.Stats().TokenRequests >= 1 })

			tc.write(t, e)
			if len(before) > 0 {
				t.Fatalf("the delayed grant ended before the write did: the %s delay is too short to test anything", delay)
			}
			after := read(t)
			stillInFlight := len(before) == 0
			old := <-before
			if old == "" || after == "" {
				t.FailNow()
			}
			if after == old {
				t.Fatal("a read after the write was handed the token of a grant made before it (it joined the old grant)")
			}
			if !stillInFlight {
				t.Fatalf("the delayed grant ended before the read after the write did: the %s delay is too short to test anything", delay)
			}

			later := read(t)
			if later == old {
				t.Error("a read after the write and the old grant was handed the old grant's token: it was cached for the new settings")
			}
			if later != after {
				t.Error("a read after both did not reuse the token granted after the write")
			}
			if g := e.emu.Stats().Grants; g != 2 {
				t.Errorf("grants = %d, want 2: the one before the write and the one after it", g)
			}
		})
	}
}

// waitFor polls cond until it holds, and fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
