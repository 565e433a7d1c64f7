package cyberark

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// statusOf is the HTTP status of an answer: a coded error's, a raw answer's, 400 for an
// error response, else 200.
func statusOf(resp *logical.Response, err error) int {
	var coded logical.HTTPCodedError
	if errors.As(err, &coded) {
		return coded.Code()
	}
	switch {
	case err != nil:
		return http.StatusInternalServerError
	case resp != nil && resp.Data[logical.HTTPStatusCode] != nil:
		return resp.Data[logical.HTTPStatusCode].(int)
	case resp != nil && resp.IsError():
		return http.StatusBadRequest
	}
	return http.StatusOK
}

// rawData decodes the data of an answer made with RespondWithStatusCode.
func rawData(t *testing.T, resp *logical.Response) map[string]any {
	t.Helper()
	var body struct {
		Data     map[string]any `json:"data"`
		Warnings []string       `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(resp.Data[logical.HTTPRawBody].(string)), &body); err != nil {
		t.Fatal(err)
	}
	body.Data["warnings"] = body.Warnings
	return body.Data
}

// TestRevokeAllBreaksGlass: revoke-all with rotate changes the secret, revokes the
// tracked and the cached tokens at the tenant, refuses reads with a 423 naming the
// switch until unfreeze, answers every step without a token, and a second run neither
// rotates again nor finds anything left.
func TestRevokeAllBreaksGlass(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"track_tokens": true})
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	own := e.mustRequest(t, logical.ReadOperation, "token", nil).Data["access_token"].(string)
	shared := e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"].(string)
	oldSecret := e.stored(t).ClientSecret

	resp := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", map[string]any{"rotate": true})
	if resp.Data["complete"] != true || resp.Data["revoked"] != 2 || resp.Data["pending"] != 0 || resp.Data["rotated_at"] == nil {
		t.Fatalf("revoke-all: %v", resp.Data)
	}
	raw, _ := json.Marshal(resp.Data)
	for _, tok := range []string{own, shared} {
		if strings.Contains(string(raw), tok) {
			t.Fatal("revoke-all answered with a token")
		}
		if !e.emu.Revoked(tok) {
			t.Error("a token handed out before revoke-all is still valid at the tenant")
		}
	}
	if e.stored(t).ClientSecret == oldSecret {
		t.Error("rotate=true left the secret unchanged")
	}
	steps := resp.Data["steps"].([]incidentStep)
	if len(steps) != 3+1 || steps[0].Step != "freeze" || steps[1].Step != "gather" || steps[2].Step != "rotate" || steps[3].Step != "revoke" {
		t.Errorf("steps: %+v", steps)
	}

	for _, path := range []string{"token", "token/shared"} {
		resp, err := e.request(t, logical.ReadOperation, path, nil)
		if statusOf(resp, err) != http.StatusLocked || !strings.Contains(err.Error(), "tokens/unfreeze") {
			t.Fatalf("read of %s while frozen: status %d, %v; want a 423 naming tokens/unfreeze", path, statusOf(resp, err), err)
		}
	}
	grants := e.emu.Stats().Grants
	again := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", map[string]any{"rotate": true})
	if again.Data["runs"] != 2 || again.Data["revoked"] != 2 || again.Data["steps"].([]incidentStep)[2].Outcome != "skipped" {
		t.Errorf("second run: %v", again.Data)
	}
	if e.emu.Stats().Grants != grants {
		t.Error("a run after a rotation rotated again")
	}
	un := e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	if un.Data["revoked"] != 2 || un.Data["left_valid"] != 0 {
		t.Errorf("unfreeze: %v", un.Data)
	}
	e.assertWorkingSecret(t)
	resp, err := e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	assertBadRequest(t, resp, err, "client")
}

// untrackedSharedToken is an engine with track_tokens off and a role with token_reuse,
// and the token a read of it handed out, which only the reuse cache knows.
func untrackedSharedToken(t *testing.T) (*testEnv, string) {
	t.Helper()
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	return e, e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"].(string)
}

// TestRevokeAllFinishesAfterAKill: a run the tenant fails half-way keeps what it found,
// the client stays frozen across a restart of the plugin (which forgets the reuse
// cache), unfreeze refuses while tokens are pending, and a second run revokes the
// cached token the first one found.
func TestRevokeAllFinishesAfterAKill(t *testing.T) {
	t.Parallel()
	e, shared := untrackedSharedToken(t)

	e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: http.StatusServiceUnavailable})
	resp, err := e.request(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if statusOf(resp, err) != http.StatusBadGateway {
		t.Fatalf("revoke-all with the tenant failing: status %d, %v; want a 502 with the steps", statusOf(resp, err), err)
	}
	first := rawData(t, resp)
	if first["complete"] != false || first["pending"] != float64(1) || !strings.Contains(strings.Join(first["warnings"].([]string), " "), "run it again") {
		t.Fatalf("first run: %v", first)
	}
	if e.emu.Revoked(shared) {
		t.Fatal("the fault let the revocation through")
	}

	e.emu.ClearFaults()
	e.restart(t)
	resp, err = e.request(t, logical.ReadOperation, "token/shared", nil)
	if statusOf(resp, err) != http.StatusLocked {
		t.Fatalf("read after a restart mid-incident: status %d, %v; want 423", statusOf(resp, err), err)
	}
	resp, err = e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	if statusOf(resp, err) != http.StatusConflict || !strings.Contains(err.Error(), "force=true") {
		t.Fatalf("unfreeze with a token pending: status %d, %v; want a 409", statusOf(resp, err), err)
	}
	second := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if second.Data["complete"] != true || second.Data["revoked"] != 1 || !e.emu.Revoked(shared) {
		t.Fatalf("second run: %v, revoked at the tenant: %v", second.Data, e.emu.Revoked(shared))
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	if next := e.mustRequest(t, logical.ReadOperation, "token/shared", nil); next.Data["access_token"] == shared {
		t.Error("the revoked token was handed out again")
	}
}

// TestFreezeCatchesAGrantInFlight: a read whose grant is at the tenant when the client
// freezes does not hand its token out, and the token is revoked.
func TestFreezeCatchesAGrantInFlight(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Delay: 2 * time.Second, Times: 1})
	before := e.emu.Stats().TokenRequests // the config write's verification
	var (
		wg   sync.WaitGroup
		resp *logical.Response
		err  error
	)
	wg.Go(func() { resp, err = e.request(t, logical.ReadOperation, "token", nil) })
	for e.emu.Stats().TokenRequests == before {
		time.Sleep(5 * time.Millisecond)
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	wg.Wait()
	if statusOf(resp, err) != http.StatusLocked {
		// Never the answer itself: it would print the token.
		t.Fatalf("a read whose grant was in flight at the freeze: status %d, %v; want 423", statusOf(resp, err), err)
	}
	// The config write's verification grant, then the read's.
	issued := e.emu.Issued()
	if len(issued) != 2 || !e.emu.Revoked(issued[1]) {
		t.Errorf("the grant in flight was not revoked (%d issued)", len(issued))
	}
}

// TestRevokeAllRefuses: an unknown client, a bad name, and a client that is not frozen.
func TestRevokeAllRefuses(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	resp, err := e.request(t, logical.UpdateOperation, "tokens/revoke-all", map[string]any{"client": "nope"})
	assertBadRequest(t, resp, err, "client")
	resp, err = e.request(t, logical.UpdateOperation, "tokens/revoke-all", map[string]any{"client": "Default"})
	assertBadRequest(t, resp, err, "client")
	resp, err = e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	assertBadRequest(t, resp, err, "client")
}

// TestRevokeAllManyTokens: far more tokens than workers, under the race detector, all
// revoked, none twice, none skipped.
func TestRevokeAllManyTokens(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configureTracked(t)
	const n = 130
	for range n {
		e.mustRequest(t, logical.ReadOperation, "token", nil)
	}
	before := e.emu.Stats().RevokeRequests
	resp := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if resp.Data["complete"] != true || resp.Data["revoked"] != n {
		t.Fatalf("revoke-all of %d tokens: %v", n, resp.Data)
	}
	if got := e.emu.Stats().RevokeRequests - before; got != n {
		t.Errorf("%d revocations sent for %d tokens", got, n)
	}
	for i, tok := range e.emu.Issued() {
		if !e.emu.Revoked(tok) && i > 0 { // the first is the config write's check, revoked when verified
			t.Errorf("issued token #%d is still valid", i)
		}
	}
}

// TestRevokeAllKeepsTokensFromAnotherDestination: a config rewritten to another service
// user after a token was handed out does not receive that token at revocation; the
// token stays on the list and the answer says why.
func TestRevokeAllKeepsTokensFromAnotherDestination(t *testing.T) {
	t.Parallel()
	const otherID, otherSecret = "svc-other@tenant.example", "Other-Secret-4567"
	e := newTestEnvWith(t, func(c *emulator.Config) {
		c.Apps[0].Clients = append(c.Apps[0].Clients, emulator.Client{ID: otherID, Secret: otherSecret})
	})
	e.configureTracked(t)
	tok := e.mustRequest(t, logical.ReadOperation, "token", nil).Data["access_token"].(string)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_id": otherID, "client_secret": otherSecret})

	before := e.emu.Stats().RevokeRequests
	resp, err := e.request(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if statusOf(resp, err) != http.StatusConflict {
		t.Fatalf("revoke-all: status %d, %v; want a 409 for the token it would not send", statusOf(resp, err), err)
	}
	body := rawData(t, resp)
	if body["pending"] != float64(1) || !strings.Contains(strings.Join(body["warnings"].([]string), " "), "another service user") {
		t.Errorf("answer: pending %v, warnings %v", body["pending"], body["warnings"])
	}
	if e.emu.Stats().RevokeRequests != before || e.emu.Revoked(tok) {
		t.Error("the token was sent for revocation under the rewritten config")
	}
	resp, err = e.request(t, logical.UpdateOperation, "tokens/revoke", map[string]any{"token": tok})
	if statusOf(resp, err) != http.StatusConflict {
		t.Errorf("tokens/revoke under the rewritten config: status %d, %v; want 409", statusOf(resp, err), err)
	}
}

// TestUnfreezeOnAnotherNode: a node that learns through Invalidate that the incident
// record is gone serves reads again, and one that learns of a new one refuses them.
func TestUnfreezeOnAnotherNode(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if err := e.storage.Delete(t.Context(), incidentKey(defaultClient)); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(t.Context(), incidentKey(defaultClient))
	e.mustRequest(t, logical.ReadOperation, "token", nil)

	if err := putIncident(t.Context(), e.storage, &incident{Client: defaultClient, Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(t.Context(), incidentKey(defaultClient))
	resp, err := e.request(t, logical.ReadOperation, "token", nil)
	if statusOf(resp, err) != http.StatusLocked {
		t.Errorf("read after another node froze the client: status %d, want 423", statusOf(resp, err))
	}
}

// TestUnfreezeWaitsForTheGather: a run whose gather step failed (a storage write of its
// list) left tokens that only the reuse cache knows; an unforced unfreeze refuses until
// a run has gathered them, and the next run gathers and revokes them.
func TestUnfreezeWaitsForTheGather(t *testing.T) {
	t.Parallel()
	e, shared := untrackedSharedToken(t)

	fs := newFaultStorage(e.storage, storageFault{op: "Put", prefix: incidentTokensPrefix, nth: 1})
	resp, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: fs, MountPoint: "cyberark/",
	})
	if fs.fired() != 1 || err == nil {
		t.Fatalf("revoke-all whose list cannot be stored: status %d, %v; want an error", statusOf(resp, err), err)
	}
	resp, err = e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	if statusOf(resp, err) != http.StatusConflict || !strings.Contains(err.Error(), "gathering") {
		t.Fatalf("unfreeze before any gather: status %d, %v; want a 409 that says the gather is missing", statusOf(resp, err), err)
	}
	if e.emu.Revoked(shared) {
		t.Fatal("the failed run revoked the token")
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if !e.emu.Revoked(shared) {
		t.Fatal("the second run did not revoke the cached token")
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", nil)
}

// TestRevokeAllWithRotateRevokesTheCache: with track_tokens off, the reuse cache's
// tokens are gathered before the rotation, which empties the cache.
func TestRevokeAllWithRotateRevokesTheCache(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	shared := e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"].(string)
	resp := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", map[string]any{"rotate": true})
	if resp.Data["complete"] != true || resp.Data["rotated_at"] == nil || !e.emu.Revoked(shared) {
		t.Fatalf("revoke-all with rotate: complete %v, rotated %v, the cached token revoked %t",
			resp.Data["complete"], resp.Data["rotated_at"] != nil, e.emu.Revoked(shared))
	}
}

// TestFreezeWriteThatLanded: a freeze whose storage write is reported failed but
// landed (a storage that timed out after committing) freezes reads, as storage says
// and every other node would, not as this instance's memory said before.
func TestFreezeWriteThatLanded(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.ReadOperation, "token", nil) // memory now says: not frozen
	landed := newFaultStorage(e.storage, storageFault{op: "Put", prefix: incidentsPrefix, nth: 1, landed: true})
	_, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: landed, MountPoint: "cyberark/",
	})
	if err == nil || landed.fired() != 1 {
		t.Fatalf("revoke-all whose freeze write fails: %v; want an error", err)
	}
	resp, err := e.request(t, logical.ReadOperation, "token", nil)
	if statusOf(resp, err) != http.StatusLocked {
		t.Fatalf("a read after a freeze write that landed: status %d; want 423", statusOf(resp, err))
	}
}

// TestFreezeWriteThatFailed: a freeze whose write fails without landing still freezes
// this node (fail closed: the write may land later); it revoked nothing, so only a
// forced unfreeze lifts it, and reads are served again.
func TestFreezeWriteThatFailed(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	fs := newFaultStorage(e.storage, storageFault{op: "Put", prefix: incidentsPrefix})
	if _, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: fs, MountPoint: "cyberark/",
	}); err == nil || fs.fired() != 1 {
		t.Fatalf("revoke-all whose freeze write fails: %v; want an error", err)
	}
	resp, err := e.request(t, logical.ReadOperation, "token", nil)
	if statusOf(resp, err) != http.StatusLocked {
		t.Fatalf("a read after a freeze write that failed: status %d; want 423 (fail closed)", statusOf(resp, err))
	}
	resp, err = e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	if statusOf(resp, err) != http.StatusConflict || !strings.Contains(err.Error(), "this node only") {
		t.Fatalf("unforced unfreeze of a freeze that revoked nothing: status %d, %v; want a 409", statusOf(resp, err), err)
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", map[string]any{"force": true})
	e.mustRequest(t, logical.ReadOperation, "token", nil)
}

// TestFreezeWhileAReadLoadsTheSwitch: a read that loads the switch from storage before
// the freeze is stored, and saves what it read after the freeze's write failed (but
// landed), does not leave the node serving tokens.
func TestFreezeWhileAReadLoadsTheSwitch(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	release, answer := readHeldAtTheSwitch(t, e)
	landed := newFaultStorage(e.storage, storageFault{op: "Put", prefix: incidentsPrefix, nth: 1, landed: true})
	if _, ferr := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: landed, MountPoint: "cyberark/",
	}); ferr == nil || landed.fired() != 1 {
		t.Fatalf("revoke-all whose freeze write fails: %v; want an error", ferr)
	}
	release()
	resp, err := answer()
	if statusOf(resp, err) != http.StatusLocked {
		// Never the answer itself: it would print the token.
		t.Errorf("the read that loaded the switch during the freeze: status %d; want 423", statusOf(resp, err))
	}
	resp, err = e.request(t, logical.ReadOperation, "token", nil)
	if statusOf(resp, err) != http.StatusLocked {
		t.Errorf("a later read: status %d; want 423", statusOf(resp, err))
	}
}

// readHeldAtTheSwitch starts a token read whose first load of the freeze switch from
// storage has read it but is held before it answers. It returns once the read is held:
// release lets it go on, and answer waits for its result.
func readHeldAtTheSwitch(t *testing.T, e *testEnv) (release func(), answer func() (*logical.Response, error)) {
	t.Helper()
	held := &blockingStorage{Storage: e.storage, key: incidentKey(defaultClient), reached: make(chan struct{}), release: make(chan struct{})}
	var (
		resp *logical.Response
		err  error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err = e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.ReadOperation, Path: "token", Storage: held, MountPoint: "cyberark/"})
	}()
	<-held.reached
	return func() { close(held.release) }, func() (*logical.Response, error) { <-done; return resp, err }
}

// TestStandbyCacheFollowsTheIncident: a node that serves reads from its own reuse cache
// (a performance standby) drops a token another node marked revoked, keeps one whose
// record only gained a reader, and empties the client's cache when another node
// freezes or unfreezes it, so that no token the incident revoked, or could not reach,
// is handed out again from there.
func TestStandbyCacheFollowsTheIncident(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configureTracked(t)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	shared := func() string {
		return e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"].(string)
	}
	first := shared()
	sum := sha256.Sum256([]byte(first))
	sha := hex.EncodeToString(sum[:])
	// A record that gained a reader: the token stays cached.
	e.b.invalidate(t.Context(), tokensPrefix+sha)
	if shared() != first {
		t.Fatal("a record's change that is not a revocation dropped the token from the cache")
	}
	// Marked revoked, as tokens/revoke on the active node does.
	if err := e.b.markRevoked(t.Context(), e.storage, sha); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(t.Context(), tokensPrefix+sha)
	second := shared()
	if second == first {
		t.Fatal("a token another node revoked was handed out again from the cache")
	}
	// The incident record changed (here it is gone: an unfreeze, as this node sees it).
	e.b.invalidate(t.Context(), incidentKey(defaultClient))
	if shared() == second {
		t.Error("after another node's unfreeze the cached token was handed out again")
	}
}

// TestRevokeAllUnderReads: readers of an own and a shared role run throughout, while
// revoke-all and unfreeze take turns. However their calls interleave, every token a
// reader received before a run answered complete is revoked at the tenant by then
// (track_tokens), and no read begun between a run's answer and the next unfreeze
// receives a token.
func TestRevokeAllUnderReads(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configureTracked(t)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	var (
		mu       sync.Mutex
		received []string
		frozen   bool // from a complete run's answer until just before the next unfreeze
		cycle    int  // counts the answers
		late     int  // tokens received by reads that began and ended within one frozen span
		refused  int
	)
	stop := repeatInGoroutines(t, 6, func(i int) bool {
		path := []string{"token", "token/shared"}[i%2]
		mu.Lock()
		frozenAtStart, cycleAtStart := frozen, cycle
		mu.Unlock()
		resp, err := e.request(t, logical.ReadOperation, path, nil)
		mu.Lock()
		switch {
		case err == nil && resp != nil && !resp.IsError():
			received = append(received, resp.Data["access_token"].(string))
			// Begun after the answer and ended before the unfreeze was sent.
			if frozenAtStart && frozen && cycle == cycleAtStart {
				late++
			}
		case statusOf(resp, err) == http.StatusLocked:
			refused++
		}
		mu.Unlock()
		return true
	})
	for range 5 {
		time.Sleep(30 * time.Millisecond)
		resp := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
		mu.Lock()
		frozen = true
		cycle++
		got := slices.Clone(received)
		mu.Unlock()
		if resp.Data["complete"] != true {
			t.Fatalf("revoke-all: complete %v, pending %v", resp.Data["complete"], resp.Data["pending"])
		}
		valid := 0
		for _, tok := range got {
			if !e.emu.Revoked(tok) {
				valid++
			}
		}
		if valid > 0 {
			t.Errorf("%d of the %d tokens received before a complete run are still valid at the tenant", valid, len(got))
		}
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		frozen = false
		mu.Unlock()
		e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	}
	stop()
	if late > 0 {
		t.Errorf("%d tokens were received while the client was frozen", late)
	}
	if len(received) == 0 || refused == 0 {
		t.Errorf("the readers received %d tokens and %d refusals: the test did not interleave", len(received), refused)
	}
	t.Logf("%d tokens received, %d reads refused as frozen, over 5 incidents", len(received), refused)
}

// TestRevokeAllWaitsForReadsInFlight: revoke-all waits for a read whose grant was at the
// tenant when it froze the client, so that when it answers complete the read has
// revoked its token and marked its record, and an unforced unfreeze succeeds at once.
func TestRevokeAllWaitsForReadsInFlight(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configureTracked(t)
	done := readHeldAtTheTenant(t, e, time.Second)
	issued := len(e.emu.Issued())
	resp := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	// The read's own token: issued, and revoked, by the time revoke-all answers. (The
	// read's answer itself may reach this goroutine a moment after: the read counts as
	// ended once its handler returns.)
	if got := e.emu.Issued(); len(got) != issued+1 {
		t.Fatal("revoke-all answered before the read in flight at its freeze had got its token")
	} else if !e.emu.Revoked(got[issued]) {
		t.Error("revoke-all answered before the read in flight at its freeze had revoked its token")
	}
	if resp.Data["complete"] != true {
		t.Errorf("revoke-all: complete %v", resp.Data["complete"])
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	select {
	case status := <-done:
		if status != http.StatusLocked {
			t.Errorf("the read in flight at the freeze: status %d, want 423", status)
		}
	case <-time.After(10 * time.Second):
		t.Error("the read in flight at the freeze has not answered")
	}
}

// TestWithheldTokenStaysListed: a read that found its client frozen after it got a
// token from the reuse cache (which another reader had it from before the freeze)
// revokes it; when the tenant fails that revocation, the token stays in the cache, so
// revoke-all gathers and revokes it instead of answering complete without it.
func TestWithheldTokenStaysListed(t *testing.T) {
	t.Parallel()
	e, shared := untrackedSharedToken(t)
	v, err := e.b.cache.view(t.Context(), e.storage, "", "shared", "")
	if err != nil {
		t.Fatal(err)
	}
	held := e.b.cache.heldTokens(defaultClient)
	if len(held) != 1 {
		t.Fatalf("%d tokens in the reuse cache, want the shared one", len(held))
	}
	e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: http.StatusServiceUnavailable})
	e.b.withholdToken(t.Context(), e.storage, v, held[0].tok)
	e.emu.ClearFaults()
	if e.emu.Revoked(shared) {
		t.Fatal("the fault let the revocation through")
	}
	resp := e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if resp.Data["complete"] != true || !e.emu.Revoked(shared) {
		t.Errorf("revoke-all after a withheld token's failed revocation: complete %v, the token revoked at the tenant %t",
			resp.Data["complete"], e.emu.Revoked(shared))
	}
}

// TestInvalidateDuringALoadOfTheSwitch: a read loading the switch from storage when
// another node's freeze arrives (its record written, then Invalidate) does not save
// the "not frozen" it read before: it looks again, and refuses.
func TestInvalidateDuringALoadOfTheSwitch(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	release, answer := readHeldAtTheSwitch(t, e)
	if perr := putIncident(t.Context(), e.storage, &incident{Client: defaultClient, Since: time.Now()}); perr != nil {
		t.Fatal(perr)
	}
	e.b.invalidate(t.Context(), incidentKey(defaultClient))
	release()
	if resp, err := answer(); statusOf(resp, err) != http.StatusLocked {
		// Never the answer itself: it would print the token.
		t.Errorf("a read that loaded the switch across another node's freeze: status %d; want 423", statusOf(resp, err))
	}
}

// TestUnfreezeDeleteThatLanded: an unfreeze that passed its checks and whose delete of
// the incident record is reported failed but landed: storage decides, so reads are
// served, and a second unfreeze answers that the client is not frozen, not a 409 that
// would claim the freeze revoked nothing.
func TestUnfreezeDeleteThatLanded(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	landed := newFaultStorage(e.storage, storageFault{op: "Delete", prefix: incidentsPrefix, nth: 1, landed: true})
	if _, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "tokens/unfreeze", Storage: landed, MountPoint: "cyberark/",
	}); err == nil || landed.fired() != 1 {
		t.Fatal("unfreeze whose delete fails: no error")
	}
	e.mustRequest(t, logical.ReadOperation, "token", nil)
	resp, err := e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	assertBadRequest(t, resp, err, "client")
}

// TestSwitchLoadsUnderSwitching: reads that load the switch from storage while another
// goroutine sets and forgets it. Under -race this failed while a load returned the
// switch from memory after releasing its lock (a race the e2e load run reported).
func TestSwitchLoadsUnderSwitching(t *testing.T) {
	t.Parallel()
	s := &logical.InmemStorage{}
	since := time.Now().UTC().Truncate(time.Second)
	if err := putIncident(t.Context(), s, &incident{Client: "c", Since: since}); err != nil {
		t.Fatal(err)
	}
	c := newCredential(nil, "c", clientStorageKey("c"))
	stop := repeatInGoroutines(t, 4, func(int) bool {
		got, err := c.frozenSince(t.Context(), s)
		if err != nil {
			t.Error(err)
			return false
		}
		if !got.Equal(since) {
			t.Errorf("frozen since %v; want %v (storage and every set agree)", got, since)
			return false
		}
		return true
	})
	for i := range 2000 {
		if i%2 == 0 {
			c.forgetFrozen()
		} else {
			c.setFrozen(since)
		}
	}
	stop()
}

// repeatInGoroutines runs body in n goroutines, each again and again until body says
// no more or stop is called; stop waits for them. The test's end stops them too, so
// that a test that fails half-way leaves none running.
func repeatInGoroutines(t *testing.T, n int, body func(i int) (more bool)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if !body(i) {
					return
				}
			}
		})
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// TestRevokeAllAfterAFailedRotationReportsItsList: a run whose rotation fails revokes
// nothing, and its answer counts every token on the list as pending (it answered 0,
// which read as nothing left to revoke).
func TestRevokeAllAfterAFailedRotationReportsItsList(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"track_tokens": true})
	tok := e.mustRequest(t, logical.ReadOperation, "token", nil).Data["access_token"].(string)
	e.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Status: http.StatusBadRequest})
	resp, err := e.request(t, logical.UpdateOperation, "tokens/revoke-all", map[string]any{"rotate": true})
	if statusOf(resp, err) < 400 {
		t.Fatalf("revoke-all with the rotation failing: status %d; want a failure", statusOf(resp, err))
	}
	body := rawData(t, resp)
	if body["complete"] != false || body["pending"] != float64(1) {
		t.Errorf("answer: complete %v, pending %v; want false and 1", body["complete"], body["pending"])
	}
	if e.emu.Revoked(tok) {
		t.Error("the run revoked a token after its rotation failed")
	}
}

// TestUnfreezeWaitsForReadsFromBeforeTheFreeze: a read that began before the freeze and
// outlived the drain may still get a token. An unforced unfreeze refuses while it is in
// progress (once unfrozen, the read would hand its token out), and succeeds once the
// read has ended frozen, withholding and revoking its token.
func TestUnfreezeWaitsForReadsFromBeforeTheFreeze(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	done := readHeldAtTheTenant(t, e, 1500*time.Millisecond)
	// A run whose drain gives up on the read.
	e.b.drainLimit = 200 * time.Millisecond
	resp, err := e.request(t, logical.UpdateOperation, "tokens/revoke-all", nil)
	if statusOf(resp, err) != http.StatusServiceUnavailable {
		t.Fatalf("revoke-all whose drain ran out: status %d, %v; want 503", statusOf(resp, err), err)
	}
	resp, err = e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	if statusOf(resp, err) != http.StatusConflict || !strings.Contains(err.Error(), "still in progress") {
		t.Fatalf("unfreeze with a read from before the freeze in progress: status %d, %v; want a 409", statusOf(resp, err), err)
	}
	if status := <-done; status != http.StatusLocked {
		t.Errorf("the read from before the freeze: status %d; want 423", status)
	}
	e.mustRequest(t, logical.UpdateOperation, "tokens/unfreeze", nil)
	issued := e.emu.Issued()
	if !e.emu.Revoked(issued[len(issued)-1]) {
		t.Error("the read's token is valid at the tenant")
	}
}

// readHeldAtTheTenant starts a read of token whose grant the tenant holds for delay, and
// returns once the grant is at the tenant; the read's status arrives on the channel.
// The test's end waits for the read.
func readHeldAtTheTenant(t *testing.T, e *testEnv, delay time.Duration) <-chan int {
	t.Helper()
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Delay: delay, Times: 1})
	before := e.emu.Stats().TokenRequests // the config write's verification
	done := make(chan int, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		resp, err := e.request(t, logical.ReadOperation, "token", nil)
		done <- statusOf(resp, err)
	}()
	t.Cleanup(func() { <-ended })
	for e.emu.Stats().TokenRequests == before {
		time.Sleep(5 * time.Millisecond)
	}
	return done
}
