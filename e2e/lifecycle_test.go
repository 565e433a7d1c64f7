//go:build unix

package e2e

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestLeaseEndRevokesAtTenant checks that Vault's revocation of a lease reaches the
// tenant's revoke endpoint for a token of its own, and never for a shared token.
func TestLeaseEndRevokesAtTenant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	e.writeRole("own", map[string]any{"scopes": "read"})
	e.writeRole("shared", map[string]any{"scopes": "read", "token_reuse": true})

	own := e.readToken("token/own", nil)
	ownToken := accessToken(t, own)
	if err := e.client.Sys().RevokeWithContext(e.ctx, own.LeaseID); err != nil {
		t.Fatalf("sys/leases/revoke: %v", err)
	}
	if !e.tenant.emu.Revoked(ownToken) {
		t.Error("revoking the lease did not revoke its token at the tenant")
	}

	// A role on another application revokes there: the tenant only revokes a token at
	// the app that issued it.
	e.writeRole("other", map[string]any{"scopes": "read", "app_id": otherAppID})
	other := e.readToken("token/other", nil)
	if err := e.client.Sys().RevokeWithContext(e.ctx, other.LeaseID); err != nil {
		t.Fatalf("sys/leases/revoke: %v", err)
	}
	if !e.tenant.emu.Revoked(accessToken(t, other)) {
		t.Error("revoking the lease of a token from another app did not revoke it there")
	}

	first := e.readToken("token/shared", nil)
	second := e.readToken("token/shared", nil)
	sharedToken := accessToken(t, first)
	if accessToken(t, second) != sharedToken {
		t.Fatal("token_reuse: the second read got another token")
	}
	revokesBefore := e.tenant.emu.Stats().RevokeRequests
	if err := e.client.Sys().RevokeWithContext(e.ctx, first.LeaseID); err != nil {
		t.Fatalf("sys/leases/revoke of a shared token's lease: %v", err)
	}
	if e.tenant.emu.Revoked(sharedToken) || e.tenant.emu.Stats().RevokeRequests != revokesBefore {
		t.Error("revoking one lease of a shared token revoked it at the tenant")
	}
	// The other lease on the shared token is still there.
	if _, err := e.client.Sys().LookupWithContext(e.ctx, second.LeaseID); err != nil {
		t.Errorf("the other lease on the shared token: %v", err)
	}
}

// TestLeaseExpiryRevokesAtTenant lets a short lease run out: Vault's expiration manager,
// not a caller, ends it, and the token is revoked at the tenant. The role's ttl makes
// the lease 2s while the token lives an hour, so a slow expiration on a loaded machine
// cannot find the token already expired.
func TestLeaseExpiryRevokesAtTenant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	e.writeRole("own", map[string]any{"scopes": "read", "ttl": "2s"})
	sec := e.readToken("token/own", nil)
	token := accessToken(t, sec)

	deadline := time.Now().Add(30 * time.Second)
	for !e.tenant.emu.Revoked(token) {
		if time.Now().After(deadline) {
			t.Fatalf("the token was not revoked at the tenant 30s after its %ds lease", sec.LeaseDuration)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestConcurrentReadsThroughVault reads one role 200 times at once through Vault: with
// token_reuse the tenant sees one grant, without it one per read.
func TestConcurrentReadsThroughVault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	e.writeRole("reuse", map[string]any{"scopes": "read", "token_reuse": true})
	e.writeRole("fresh", map[string]any{"scopes": "read"})

	for _, tc := range []struct {
		role string
		want int64
	}{{"reuse", 1}, {"fresh", 200}} {
		// Counted as a difference: Reset would also drop the issued tokens the log
		// guard checks for.
		before := e.tenant.emu.Stats().Grants
		// A slow first answer makes the reads overlap the first grant.
		e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Delay: 300 * time.Millisecond})
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token/"+tc.role)
				if err == nil && (s == nil || s.Data["access_token"] == nil) {
					err = errNoToken
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("role %s: %v", tc.role, err)
		}
		grants := e.tenant.emu.Stats().Grants - before
		t.Logf("200 concurrent reads of role %s through Vault: %d grants", tc.role, grants)
		if grants != tc.want {
			t.Errorf("role %s: %d grants for 200 concurrent reads, want %d", tc.role, grants, tc.want)
		}
	}
}

var errNoToken = errors.New("read returned no access_token")
