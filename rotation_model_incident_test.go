package cyberark

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The model test's incidents: in half the histories (by the seed), the security team
// breaks glass on the rotated client (tokens/revoke-all, with or without rotate) and
// lifts it (tokens/unfreeze, forced or not), between the rotation events, with storage
// failures and plugin deaths in the middle. Half of those track tokens. A shared role
// (token_reuse) puts tokens in the reuse cache, which revoke-all must gather. What the
// security team relies on is checked after every event:
//   - the stored incident record is the switch: while it exists no read hands out a
//     token, and no read is refused as frozen without it, except on the instance
//     whose freeze write failed (it fails closed until an unfreeze or a restart);
//   - once revoke-all answers complete, or an unforced unfreeze succeeds, every token
//     the engine handed out that has not expired is revoked at the tenant: with
//     track_tokens, every token; without, every token that left the reuse cache during
//     a run, whatever the run answered (tokens the cache let go otherwise, on a config
//     write or a restart, are known to no one, as the docs say);
//   - the rotation invariants (no secret lost, the failed-login budget) hold through
//     revocations, which log in with the client's secret.

// handedToken is a token a read handed out.
type handedToken struct {
	token  string
	expiry time.Time
}

// incidentModel is what an incident history adds to a history.
type incidentModel struct {
	incidents bool
	tracking  bool
	// sharedPath is the token read of the client's role with token_reuse.
	sharedPath string
	handed     []handedToken
	// cached are the tokens that left the reuse cache during a revoke-all, since the
	// last unfreeze.
	cached map[string]time.Time
	// nodeFrozen: a revoke-all's freeze write failed without landing, so the running
	// instance alone is frozen, failing closed.
	nodeFrozen bool
}

// sharedRole is the name of the target's role with token_reuse.
func (t target) sharedRole() string {
	if t.managed {
		return modelManagedRole + "-shared"
	}
	return "shared"
}

// setupIncidents decides from the seed whether the history has incidents and tracks
// tokens, and adds to the config data written next.
func (h *history) setupIncidents(data map[string]any) {
	h.incidents = h.rng.IntN(2) == 0
	if !h.incidents {
		return
	}
	h.tracking = h.rng.IntN(2) == 0
	data["track_tokens"] = h.tracking
	if h.managed {
		data["allowed_roles"] = modelManagedRole + "," + h.sharedRole()
	}
}

// writeSharedRole stores the shared role, once the client exists.
func (h *history) writeSharedRole() error {
	if !h.incidents {
		return nil
	}
	h.sharedPath = "token/" + h.sharedRole()
	_, err := h.call(logical.CreateOperation, "roles/"+h.sharedRole(), map[string]any{"client": h.name, "scopes": "read", "token_reuse": true})
	return err
}

// readPath is the token read of the next read: the shared role's now and then.
func (h *history) readPath() string {
	if h.sharedPath != "" && h.rng.IntN(3) == 0 {
		return h.sharedPath
	}
	return h.tokenPath
}

// frozenStored says whether the client's incident record exists: the switch, as every
// node will see it.
func (h *history) frozenStored() (bool, error) {
	inc, err := readIncident(context.Background(), h.storage.Storage, h.name)
	return inc != nil, err
}

// sawRead checks one token read: it never hands out a token the tenant has revoked
// (after tokens/revoke, revoke-all or a lease's end); in an incident history, it obeys
// the switch, and what it handed out is noted.
func (h *history) sawRead(resp *logical.Response, err error) error {
	if err == nil && resp != nil {
		if tok, _ := resp.Data["access_token"].(string); tok != "" && h.emu.Revoked(tok) {
			return errors.New("REVOKED TOKEN HANDED OUT: a read handed out a token the tenant has revoked")
		}
	}
	if !h.incidents {
		return nil
	}
	frozen, ferr := h.frozenStored()
	if ferr != nil {
		return ferr
	}
	switch {
	case err == nil && frozen:
		return errors.New("TOKEN IN A FREEZE: a read handed out a token while the client's incident record says it is frozen")
	case err == nil && h.nodeFrozen:
		return errors.New("TOKEN AFTER A FAILED FREEZE: a read handed out a token on the instance whose freeze write failed")
	case errorCode(err) == "423" && !frozen && !h.nodeFrozen:
		return errors.New("FROZEN WITHOUT AN INCIDENT: a read was refused as frozen, but no incident record exists to unfreeze")
	case err != nil || resp == nil:
		return nil
	}
	tok, _ := resp.Data["access_token"].(string)
	if tok == "" {
		return errors.New("a read succeeded without an access_token")
	}
	expiry := h.clock.Now().Add(time.Hour)
	if resp.Secret != nil {
		expiry = time.Unix(int64Of(resp.Secret.InternalData["expires_at"]), 0)
	}
	h.handed = append(h.handed, handedToken{token: tok, expiry: expiry})
	return nil
}

// leftValid counts the tokens the incident should have revoked that the tenant still
// honours: neither revoked nor expired.
func (h *history) leftValid() int {
	valid := func(tok string, expiry time.Time) bool { return h.clock.Now().Before(expiry) && !h.emu.Revoked(tok) }
	n := 0
	if h.tracking {
		for _, t := range h.handed {
			if valid(t.token, t.expiry) {
				n++
			}
		}
		return n
	}
	for tok, expiry := range h.cached {
		if valid(tok, expiry) {
			n++
		}
	}
	return n
}

// cacheNow is the client's reuse cache: token and expiry.
func (h *history) cacheNow() map[string]time.Time {
	out := map[string]time.Time{}
	for _, t := range h.b.cache.heldTokens(h.name) {
		out[t.tok.AccessToken] = t.tok.Expiry
	}
	return out
}

// mustRevoke adds tokens to those the incident must revoke.
func (h *history) mustRevoke(tokens map[string]time.Time) {
	if h.cached == nil {
		h.cached = map[string]time.Time{}
	}
	maps.Copy(h.cached, tokens)
}

// instanceGone: the running instance is replaced (a restart, a leader change), and
// with it its memory of a freeze that was not stored.
func (h *history) instanceGone() { h.nodeFrozen = false }

// revokeAllEvent: the security team breaks glass, now and then with a storage write
// that fails on the way.
func (h *history) revokeAllEvent() error {
	if !h.incidents {
		return h.reads()
	}
	rotate := h.rng.IntN(2) == 0
	fault := h.rng.IntN(4) == 0
	committed := h.rng.IntN(2) == 0
	if fault {
		// Which write fails: the freeze, the rotation's, an entry or a mark.
		h.storage.armAfter(h.rng.IntN(4), 1, committed)
	}
	before := h.cacheNow()
	resp, err := h.call(logical.UpdateOperation, "tokens/revoke-all", map[string]any{"client": h.name, "rotate": rotate})
	h.storage.disarm()
	after := h.cacheNow()
	maps.DeleteFunc(before, func(tok string, _ time.Time) bool { _, kept := after[tok]; return kept })
	h.mustRevoke(before)
	if frozen, ferr := h.frozenStored(); ferr != nil {
		return ferr
	} else if !frozen && err != nil {
		h.nodeFrozen = true
	}
	complete := err == nil && resp != nil && resp.Data["complete"] == true
	h.logf("tokens/revoke-all (rotate %t, a storage write fails %t, committed %t): %d complete %t %s",
		rotate, fault, committed, statusOf(resp, err), complete, shortErr(err))
	if complete {
		if n := h.leftValid(); n > 0 {
			return fmt.Errorf("TOKENS LEFT VALID: revoke-all answered complete, but %d tokens the engine handed out are neither revoked nor expired", n)
		}
	}
	return nil
}

// revokeOneEvent: the security team revokes one handed-out token (tokens/revoke), which
// needs its record.
func (h *history) revokeOneEvent() error {
	if !h.tracking || len(h.handed) == 0 {
		return h.reads()
	}
	t := h.handed[h.rng.IntN(len(h.handed))]
	_, err := h.call(logical.UpdateOperation, "tokens/revoke", map[string]any{"token": t.token})
	h.logf("tokens/revoke of a handed-out token: %s %s", errorCode(err), shortErr(err))
	if err == nil && h.clock.Now().Before(t.expiry) && !h.emu.Revoked(t.token) {
		return errors.New("REVOKE NOT DONE: tokens/revoke succeeded, but the tenant still honours the token")
	}
	return nil
}

// unfreezeEvent: the security team lifts the switch, forced one time in three.
func (h *history) unfreezeEvent() error {
	if !h.incidents {
		return h.tick()
	}
	force := h.rng.IntN(3) == 0
	_, err := h.call(logical.UpdateOperation, "tokens/unfreeze", map[string]any{"client": h.name, "force": force})
	h.logf("tokens/unfreeze (force %t): %s %s", force, errorCode(err), shortErr(err))
	if err == nil && !force {
		if n := h.leftValid(); n > 0 {
			return fmt.Errorf("UNFROZEN WITH TOKENS VALID: an unforced unfreeze succeeded, but %d tokens the engine handed out are neither revoked nor expired", n)
		}
	}
	if err == nil {
		h.cached, h.nodeFrozen = nil, false
	}
	return nil
}

// crashInIncident: a revoke-all with rotate whose rotation dies after step; the plugin
// restarts. Its gather step, before the rotation, was done: what the cache held is on
// the list.
func (h *history) crashInIncident(step string) error {
	b, c := h.b, h.cred()
	b.afterRotationStep = func(s string) {
		if s == step {
			runtime.Goexit()
		}
	}
	h.mustRevoke(h.cacheNow())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req := &logical.Request{ID: "model-incident", Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: h.storage, MountPoint: "cyberark/"}
		_, _ = b.revokeAll(context.Background(), req, c, true)
	}()
	<-done
	h.logf("a revoke-all with rotate dies in its rotation after %s; the plugin restarts", step)
	return h.restart()
}
