//go:build unix

package e2e

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestRevocationDuringOutage has the tenant drop every revocation while 50 revocable
// leases (and a few that never reach the tenant) are outstanding, and times what an
// operator then does: "vault lease revoke -sync -prefix" (Sys().RevokePrefix), retried
// until it goes through, and "vault secrets disable", which fails the same way, then the
// the recovery in docs/leases.md ("Clearing leases while the tenant is down": revoke -force -prefix,
// then disable). No lease may be left behind, irrevocable or otherwise.
//
// The bounds follow from the rules, with total_timeout=1s and max_retries=0:
//   - One engine revocation is one HTTP attempt and never outlasts total_timeout (1s):
//     the engine bounds the whole call, attempts and waits included. The first attempt
//     meets a tenant that hangs, and takes all of it; the others have their connection
//     dropped and fail at once.
//   - A synchronous revocation of a prefix, and the disable of a mount (Vault revokes
//     its prefix synchronously), goes through the leases one by one and stops at the
//     first that fails (vault/expiration.go revokePrefixCommon). Leases that never reach
//     the tenant (token_reuse, revoke_tokens=false) end at once. So each call fails
//     after one attempt: bound total_timeout plus Vault's own time (callSlack).
//   - The engine ends a lease, with an error in its log, at its 5th failure for the
//     token (maxRevokeAttempts in secret_access_token.go); the token's expiry and the
//     lease's natural end are an hour away here. So a revoke-prefix retried until it
//     succeeds makes exactly 5 attempts per lease: 250 in all, in 4 x 50 + 1 calls, and
//     takes at most 250 x total_timeout (+ callSlack per call): a large bound, which the
//     test states and measures against.
//   - Vault's own retry schedule (20s, 40s, 80s... after each failure, irrevocable at the
//     6th) applies only to revocations its expiration manager runs (expiry, or a revoke
//     without -sync, which only queues); a synchronous call that fails leaves the lease
//     as it was, with no failure counted against it, so none becomes irrevocable.
//   - "revoke -force -prefix" makes one attempt per lease and removes each whatever the
//     outcome: at most 50 x total_timeout.
func TestRevocationDuringOutage(t *testing.T) {
	t.Parallel()
	const (
		revocable    = 50
		totalTimeout = time.Second
		attempts     = 5 // maxRevokeAttempts in secret_access_token.go
		// callSlack is Vault's own time for one call on a loaded 2-core machine.
		callSlack = 5 * time.Second
	)
	e := newEnv(t, 3600)
	c := e.client
	e.configure()
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{
		"total_timeout": "1s", "request_timeout": "1s", "max_retries": 0,
	}); err != nil {
		t.Fatalf("lowering the timeouts: %v", err)
	}
	e.writeRole("own", map[string]any{"scopes": "read"})
	e.writeRole("shared", map[string]any{"scopes": "read", "token_reuse": true})
	e.writeRole("keep", map[string]any{"scopes": "read", "revoke_tokens": false})
	readLeases := func(role string, n int) []string {
		var tokens []string
		for range n {
			tokens = append(tokens, accessToken(t, e.readToken("token/"+role, nil)))
		}
		return tokens
	}
	own := readLeases("own", revocable)
	readLeases("shared", 5)
	readLeases("keep", 5)
	checkLeases(t, e, map[string]int{"own": revocable, "shared": 5, "keep": 5})

	// The outage: the tenant first hangs (a revocation waits for it until total_timeout
	// runs out), then drops every revocation's connection for as long as it lasts.
	e.tenant.emu.AddFaults(
		emulator.Fault{Endpoint: "revoke", Times: 1, Delay: time.Minute},
		emulator.Fault{Endpoint: "revoke", DropConnection: true},
	)
	revokes := func() int64 { return e.tenant.emu.Stats().RevokeRequests }
	base := revokes()

	// One synchronous revoke-prefix: it fails at the first revocable lease, once the
	// hanging tenant has used up total_timeout.
	start := time.Now()
	err := c.Sys().RevokePrefixWithContext(e.ctx, mountPath+"/token")
	took := time.Since(start)
	t.Logf("revoke-prefix during the outage: %s, %v", took.Round(time.Millisecond), shortErr(err))
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "failed to revoke") {
		t.Errorf("revoke-prefix during the outage: %d %q, want Vault's 400 saying a revocation failed", re.StatusCode, re.Errors)
	}
	if bound := totalTimeout + callSlack; took > bound || took < totalTimeout-100*time.Millisecond {
		t.Errorf("revoke-prefix against a hanging tenant took %s; want total_timeout (%s) and at most %s", took, totalTimeout, bound)
	}
	if got := revokes() - base; got != 1 {
		t.Errorf("one revoke-prefix made %d revocation attempts at the tenant, want 1", got)
	}
	// The revocable leases all stay, and none is irrevocable. (Those that never reach
	// the tenant end when Vault's walk reaches them, before or after.)
	checkLeases(t, e, map[string]int{"own": revocable})

	// Retried until it goes through, as "vault lease revoke -sync" leaves to its caller.
	wantCalls := 1 + (attempts-1)*revocable
	bound := time.Duration(attempts*revocable)*totalTimeout + time.Duration(wantCalls)*callSlack/100
	calls := 1
	for err != nil {
		// A call that fails for another reason than the tenant (a context that ended)
		// would spin here: so would an engine that never gives up, and twice the calls
		// it should take says so long before the time bound does.
		if time.Since(start) > bound || calls > 2*wantCalls || e.ctx.Err() != nil {
			t.Fatalf("revoke-prefix still fails after %d calls and %s (want %d calls, bound %s): %v",
				calls, time.Since(start), wantCalls, bound, shortErr(err))
		}
		calls++
		err = c.Sys().RevokePrefixWithContext(e.ctx, mountPath+"/token")
	}
	took = time.Since(start)
	t.Logf("revoke-prefix retried until it succeeded: %d calls, %d attempts at the tenant, %s (bound %s)",
		calls, revokes()-base, took.Round(time.Millisecond), bound)
	if got := revokes() - base; got != attempts*revocable {
		t.Errorf("the tenant saw %d revocation attempts, want %d (%d per lease)", got, attempts*revocable, attempts)
	}
	if calls != wantCalls {
		t.Errorf("revoke-prefix succeeded after %d calls, want %d", calls, wantCalls)
	}
	checkLeases(t, e, map[string]int{"own": 0, "shared": 0, "keep": 0})
	for i, tok := range own {
		if e.tenant.emu.Revoked(tok) {
			t.Errorf("token %d was revoked at the tenant during the outage", i+1)
		}
	}

	// Disabling the mount with leases outstanding fails the same way, after one attempt.
	readLeases("own", revocable)
	checkLeases(t, e, map[string]int{"own": revocable})
	base = revokes()
	start = time.Now()
	err = c.Sys().UnmountWithContext(e.ctx, mountPath)
	took = time.Since(start)
	t.Logf("secrets disable during the outage: %s, %v", took.Round(time.Millisecond), shortErr(err))
	if err == nil {
		t.Fatal("secrets disable succeeded with revocable leases outstanding and the tenant down")
	}
	if bound := totalTimeout + callSlack; took > bound {
		t.Errorf("secrets disable during the outage took %s, over its bound %s", took, bound)
	}
	if got := revokes() - base; got != 1 {
		t.Errorf("one secrets disable made %d revocation attempts at the tenant, want 1", got)
	}
	checkLeases(t, e, map[string]int{"own": revocable})
	// The failed disable leaves the mount listed, and tainted: Vault routes only
	// revocations to it.
	_, listed := mustListMounts(t, e)[mountPath+"/"]
	status := 0
	if resp, err := c.Logical().ReadRawWithContext(e.ctx, mountPath+"/token/own"); resp != nil {
		status = resp.StatusCode
		resp.Body.Close()
	} else if re := (*api.ResponseError)(nil); errors.As(err, &re) {
		status = re.StatusCode
	}
	t.Logf("after the failed disable: the mount is listed: %t; a token read is a %d", listed, status)
	if status == http.StatusOK {
		t.Error("the mount serves token reads after a disable that failed")
	}

	// The recovery in docs/leases.md: force the leases out, then disable.
	base = revokes()
	start = time.Now()
	if err := c.Sys().RevokeForceWithContext(e.ctx, mountPath+"/token/"); err != nil {
		t.Fatalf("revoke -force -prefix: %v", err)
	}
	took = time.Since(start)
	bound = revocable*totalTimeout + callSlack
	t.Logf("revoke -force -prefix: %s for %d leases, %d attempts at the tenant (bound %s)", took.Round(time.Millisecond), revocable, revokes()-base, bound)
	if took > bound {
		t.Errorf("revoke -force -prefix took %s, over its bound %s", took, bound)
	}
	if got := revokes() - base; got != revocable {
		t.Errorf("revoke -force -prefix made %d attempts at the tenant, want one per lease (%d)", got, revocable)
	}
	checkLeases(t, e, map[string]int{"own": 0})
	start = time.Now()
	if err := c.Sys().UnmountWithContext(e.ctx, mountPath); err != nil {
		t.Fatalf("secrets disable after the forced revocation: %v", err)
	}
	took = time.Since(start)
	t.Logf("secrets disable after the forced revocation: %s", took.Round(time.Millisecond))
	if took > callSlack {
		t.Errorf("secrets disable with no leases left took %s, over %s", took, callSlack)
	}
	if _, ok := mustListMounts(t, e)[mountPath+"/"]; ok {
		t.Error("the mount is still there after secrets disable")
	}
	checkNoIrrevocable(t, e)
	if s, err := c.Logical().ListWithContext(e.ctx, "sys/leases/lookup/"+mountPath+"/"); err != nil || s != nil {
		t.Errorf("sys/leases/lookup/%s/ after the disable: %v, %v; want nothing", mountPath, s, err)
	}
}

// checkLeases checks how many leases each role has under the mount's token path, and
// that Vault holds no irrevocable lease.
func checkLeases(t *testing.T, e *env, want map[string]int) {
	t.Helper()
	for role, n := range want {
		s, err := e.client.Logical().ListWithContext(e.ctx, "sys/leases/lookup/"+mountPath+"/token/"+role+"/")
		if err != nil {
			t.Fatalf("listing the leases of role %s: %v", role, err)
		}
		got := 0
		if s != nil {
			if ks, ok := s.Data["keys"].([]any); ok {
				got = len(ks)
			}
		}
		if got != n {
			t.Errorf("role %s has %d leases, want %d", role, got, n)
		}
	}
	checkNoIrrevocable(t, e)
}

// checkNoIrrevocable asks Vault 1.19's sys/leases/count and sys/leases for irrevocable
// leases, in every namespace.
func checkNoIrrevocable(t *testing.T, e *env) {
	t.Helper()
	params := map[string][]string{"type": {"irrevocable"}, "include_child_namespaces": {"true"}}
	count, err := e.client.Logical().ReadWithDataWithContext(e.ctx, "sys/leases/count", params)
	if err != nil || count == nil {
		t.Fatalf("sys/leases/count type=irrevocable: %v", err)
	}
	if n := intField(t, count.Data, "lease_count"); n != 0 {
		t.Errorf("Vault holds %d irrevocable leases", n)
	}
	list, err := e.client.Logical().ReadWithDataWithContext(e.ctx, "sys/leases", params)
	if err != nil || list == nil {
		t.Fatalf("sys/leases type=irrevocable: %v", err)
	}
	if leases, _ := list.Data["leases"].([]any); len(leases) != 0 {
		t.Errorf("sys/leases lists %d irrevocable leases", len(leases))
	}
}

func mustListMounts(t *testing.T, e *env) map[string]*api.MountOutput {
	t.Helper()
	m, err := e.client.Sys().ListMountsWithContext(e.ctx)
	if err != nil {
		t.Fatalf("listing mounts: %v", err)
	}
	return m
}

// shortErr is an error's Vault messages, without the request URL.
func shortErr(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return strings.Join(re.Errors, "; ")
	}
	if err == nil {
		return "ok"
	}
	return err.Error()
}
