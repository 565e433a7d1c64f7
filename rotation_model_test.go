package cyberark

import (
	"context"
	crand "crypto/rand"
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The model test: seeded, reproducible histories of events over the engine (in-memory
// storage, a fake clock, the emulated tenant on its clock), with the invariants that a
// security team relies on checked after every event. A failing seed prints its
// history; -model.seed=N replays it alone, logging each event. One history in four
// (seed%4 == 0) rotates a managed client through its manager's reset instead of the
// default client's own change (rotation_model_managed_test.go).
var (
	modelHistories = flag.Int("model.histories", 0, "histories the model test runs (0: 2000; 150 under the race detector or -short)")
	modelSeed      = flag.Uint64("model.seed", 0, "replay this one history of the model test, logging its events")
	modelEvents    = flag.Int("model.events", 40, "events per history in the model test")
)

func TestRotationModel(t *testing.T) {
	t.Parallel()
	n := *modelHistories
	switch {
	case *modelSeed != 0:
		h, err := newHistory(*modelSeed, *modelEvents)
		if err != nil {
			t.Fatal(err)
		}
		defer h.close()
		h.trace = t.Logf
		t.Logf("seed %d: a history of the %s client", *modelSeed, h.name)
		if err := h.run(); err != nil {
			t.Fatalf("seed %d (%s client): %v\nengine log:\n%s", *modelSeed, h.name, err, h.logs.String())
		}
		return
	case n == 0 && (testing.Short() || raceDetector):
		// The test command runs the model without the race detector, with the default
		// count, before the race-detecting suite; here it is a smoke run.
		n = 150
	case n == 0:
		n = 2000
	}
	start := time.Now()
	seeds := make(chan uint64)
	var ran, managed, events atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) * 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seed := range seeds {
				h, err := newHistory(seed, *modelEvents)
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("seed %d: setup: %v", seed, err))
					mu.Unlock()
					continue
				}
				err = h.run()
				h.close()
				ran.Add(1)
				if h.managed {
					managed.Add(1)
				}
				events.Add(int64(len(h.events)))
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("seed %d (%s client): %v (replay: go test -run 'TestRotationModel$' -model.seed=%d -v .)\nhistory:\n  %s",
						seed, h.name, err, seed, strings.Join(h.events, "\n  ")))
					mu.Unlock()
				}
			}
		}()
	}
	base := uint64(time.Now().UnixNano())
	for i := range n {
		mu.Lock()
		stop := len(failures) >= 3
		mu.Unlock()
		if stop {
			break
		}
		seeds <- base + uint64(i)
	}
	close(seeds)
	wg.Wait()
	t.Logf("%d histories (%d of a self-rotated client, %d of a managed one), %d events, in %s; %d broke an invariant",
		ran.Load(), ran.Load()-managed.Load(), managed.Load(), events.Load(), time.Since(start).Round(time.Millisecond), len(failures))
	for _, f := range failures {
		t.Error(f)
	}
}

// history is one run of the model: the engine, its tenant and what the model knows.
type history struct {
	seed   uint64
	rng    *rand.Rand
	n      int
	events []string
	trace  func(string, ...any)

	emu     *emulator.Emulator
	srv     *httptest.Server
	storage *modelStorage
	clock   *fakeClock
	logs    *syncBuffer
	b       *backend

	// The client the history rotates: the default one (config), which changes its own
	// password, or, in one history in four, a managed client, which its manager resets
	// (managedTarget).
	target
	incidentModel
	// managedSeen is how many of the tenant's requests checkManaged has looked at, and
	// mgmtSeen how many password calls (Stats.ManagementRequests) it had seen then.
	managedSeen int
	mgmtSeen    int64

	// oob is a password an administrator set at the tenant that Vault was not told of.
	oob string
	// held is the secret of a change the tenant holds unanswered, and since when; the
	// model lands or discards it within the grace, as a real request ends by then. For a
	// managed client the model holds the reset itself (holdReset).
	held      string
	heldSince time.Time
	heldDue   time.Time // the due time it serves, for a scheduled rotation
	// servedDue counts changes the tenant applied for each due time.
	servedDue map[time.Time]int
	leases    []*logical.Secret
	period    time.Duration
	// failTimes are the failed logins at the tenant since the last verified config
	// write, when they happened; failedSeen is the tenant's count at the last check.
	failTimes  []time.Time
	failedSeen int64
	// operatorRefusals are verification grants of operator writes that the tenant
	// refused: failed logins the operator caused, not the engine.
	operatorRefusals int
}

const modelReadBound = 10 * time.Second

// modelKey signs every model tenant's tokens: a key per history would cost more than
// the history.
var modelKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(crand.Reader, 1024) //nolint:gosec // the model verifies no signature: the cheapest key Go signs with
	if err != nil {
		panic(err)
	}
	return k
})

func newHistory(seed uint64, n int) (*history, error) {
	// A seeded generator, so that a seed replays its history; nothing secret comes of it.
	h := &history{seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), n: n, servedDue: map[time.Time]int{}} //nolint:gosec // reproducible by design
	// The kind of history follows from the seed alone, so that a seed replays as the
	// same kind whatever else changes.
	h.target = selfTarget()
	if seed%4 == 0 {
		h.target = managedTarget(h.rng.IntN(2) == 0)
	}
	cfg := emulator.Config{
		SigningKey: modelKey(),
		ExpiresIn:  3600,
		Apps: []emulator.App{{
			ID: testAppID, Scopes: []string{"read", rotateScope},
			ScopeAPIs: map[string][]string{rotateScope: {"UserMgmt/ChangeUserPassword"}},
			Clients:   []emulator.Client{{ID: testClientID, Secret: testClientSecret}},
		}},
		// One failed login more than the engine's budget locks the user: the engine
		// must never get there.
		// A success ends a run of failures here: the operator's verified write, which
		// restarts the engine's count, is one. The strict count, which only such a write
		// restarts, is the model's own (failTimes).
		Lockout:           &emulator.LockoutPolicy{Threshold: defaultMaxFailedLogins + 1, Window: defaultFailedLoginWindow, Duration: time.Hour, ResetOnSuccess: true},
		IgnoreOldPassword: h.rng.IntN(2) == 0,
	}
	if h.managed {
		h.managedApps(&cfg)
	}
	emu, err := emulator.New(cfg)
	if err != nil {
		return nil, err
	}
	h.emu = emu
	h.clock = &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(h.rng.IntN(86400)) * time.Second)}
	emu.SetClock(h.clock.Now)
	h.srv = httptest.NewServer(emu)
	h.storage = &modelStorage{Storage: &logical.InmemStorage{}}
	h.logs = &syncBuffer{}
	if err := h.start(); err != nil {
		h.close()
		return nil, err
	}
	data := map[string]any{
		"tenant_url": h.srv.URL, "app_id": h.appID, "client_id": h.userID, "client_secret": h.initialSecret,
		"scopes": "read", "max_retries": 0, "request_timeout": 2, "total_timeout": 3,
	}
	if h.managed {
		data["rotation_method"], data["manager"], data["allowed_roles"] = rotationManaged, modelManager, modelManagedRole
		if err := h.writeManager(); err != nil {
			h.close()
			return nil, err
		}
	} else {
		data["rotation_scopes"] = rotateScope
	}
	if h.rng.IntN(2) == 0 {
		h.period = []time.Duration{time.Hour, 6 * time.Hour, 20 * time.Minute}[h.rng.IntN(3)]
		data["rotation_period"] = int(h.period.Seconds())
	}
	h.setupIncidents(data)
	if _, err := h.call(logical.CreateOperation, h.path, data); err != nil {
		h.close()
		return nil, err
	}
	if h.managed {
		if _, err := h.call(logical.CreateOperation, "roles/"+modelManagedRole, map[string]any{"client": h.name, "scopes": "read"}); err != nil {
			h.close()
			return nil, err
		}
	}
	if err := h.writeSharedRole(); err != nil {
		h.close()
		return nil, err
	}
	h.emu.Reset()
	return h, nil
}

func (h *history) close() {
	if h.b != nil {
		h.b.schedule.stop(time.Second)
	}
	h.srv.Close()
}

// start builds a backend on the history's storage, as Vault does when it starts the
// plugin (or a new leader mounts the engine), with the timer off: the model fires it.
func (h *history) start() error {
	conf := logical.TestBackendConfig()
	conf.StorageView = h.storage
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: h.logs, Level: hclog.Warn})
	b, err := Factory(context.Background(), conf)
	if err != nil {
		return err
	}
	h.b = b.(*backend)
	h.b.now = h.clock.Now
	h.b.schedule.stop(0)
	return h.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: h.storage})
}

func (h *history) call(op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	resp, err := h.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: h.storage, MountPoint: "cyberark/",
	})
	if err == nil && resp != nil && resp.IsError() {
		err = resp.Error()
	}
	if path == h.path && op != logical.ReadOperation && data["verify_connection"] != false {
		switch {
		case err == nil:
			// A verified write restarts the engine's count; the strict count restarts
			// too, from the failures before this write.
			h.countFailures()
			h.failTimes = nil
		case strings.Contains(err.Error(), "verify_connection: the tenant refused"):
			// The operator's own verification, always allowed: the budget does not
			// cover it, so neither does the strict count.
			h.operatorRefusals++
			h.failedSeen = h.failedLogins()
		}
	}
	return resp, err
}

// advanceClock moves the clock, once the failures so far are counted at the time
// they happened.
func (h *history) advanceClock(d time.Duration) {
	h.countFailures()
	h.clock.Advance(d)
}

// countFailures adds the tenant's failed logins since the last look, at the clock's
// time (which does not move within an event).
func (h *history) countFailures() {
	n := h.failedLogins()
	for range n - h.failedSeen {
		h.failTimes = append(h.failTimes, h.clock.Now())
	}
	h.failedSeen = n
}

func (h *history) logf(format string, args ...any) {
	rec, _ := h.cred().gate.status(context.Background(), h.storage.Storage)
	line := fmt.Sprintf("%s  [engine %d in window, tenant %d failed logins, state %s]  %s", h.clock.Now().Format("15:04:05"),
		rec.inWindow(h.clock.Now(), defaultFailedLoginWindow), h.failedLogins(), h.stored().Rotation.status(), fmt.Sprintf(format, args...))
	h.events = append(h.events, line)
	if h.trace != nil {
		h.trace("%s", line)
	}
}

func (h *history) stored() *cyberarkConfig {
	cfg, err := readConfigAt(context.Background(), h.storage.Storage, h.key)
	if err != nil || cfg == nil {
		return &cyberarkConfig{}
	}
	return cfg
}

// tenantSecret is the secret the tenant accepts, among those the model knows of.
func (h *history) tenantSecret() string {
	cfg := h.stored()
	for _, s := range []string{cfg.ClientSecret, cfg.Rotation.PendingSecret, h.oob, h.held, h.initialSecret} {
		if s != "" && h.emu.ClientSecretIs(h.userID, s) {
			return s
		}
	}
	return ""
}

func (h *history) run() error {
	for range h.n {
		start := time.Now()
		if err := h.step(); err != nil {
			return err
		}
		if d := time.Since(start); d > time.Second && h.trace != nil && len(h.events) > 0 {
			h.trace("slow event (%s): %s", d, h.events[len(h.events)-1])
		}
		if err := h.check(); err != nil {
			return err
		}
	}
	// Time passes with nothing but the periodic function: whatever the history left
	// must settle without breaking an invariant either.
	for range 20 {
		h.advanceClock(3 * time.Minute)
		h.expireHeld()
		h.logf("periodic")
		_ = h.b.periodic(context.Background(), &logical.Request{Storage: h.storage})
		if err := h.check(); err != nil {
			return err
		}
	}
	return h.checkLogs()
}

// scheduled runs fn as a scheduled rotation may, counting the changes the tenant
// applies for the due time it serves.
func (h *history) scheduled(fn func()) {
	due := h.stored().Rotation.NextRotation
	before := h.emu.Stats().PasswordChanges
	fn()
	if d := h.emu.Stats().PasswordChanges - before; d > 0 && !due.IsZero() && !due.After(h.clock.Now()) {
		h.servedDue[due] += int(d)
	}
}

func (h *history) step() error {
	type event struct {
		weight int
		fn     func() error
	}
	events := []event{
		{30, h.reads},
		{8, h.tick},
		{12, h.advance},
		{5, h.fireTimer},
		{10, h.rotateRoot},
		{4, h.lostAnswer},
		{3, h.changeFault},
		{5, h.holdChange},
		{5, h.land},
		{4, h.crash},
		{4, h.storageFault},
		{5, h.writeCurrent},
		{4, h.writeOther},
		{3, h.outOfBand},
		{3, h.restart},
		{2, h.leaderChange},
		{5, h.leaseEnd},
		{3, h.outage},
		{4, h.revokeAllEvent},
		{3, h.unfreezeEvent},
		{2, h.revokeOneEvent},
	}
	total := 0
	for _, e := range events {
		total += e.weight
	}
	k := h.rng.IntN(total)
	for _, e := range events {
		if k < e.weight {
			return e.fn()
		}
		k -= e.weight
	}
	return nil
}

// reads: a burst of token reads, each bounded in time.
func (h *history) reads() error {
	n := 1 + h.rng.IntN(6)
	codes := make([]string, 0, n)
	for range n {
		start := time.Now()
		resp, err := h.call(logical.ReadOperation, h.readPath(), nil)
		if d := time.Since(start); d > modelReadBound {
			return fmt.Errorf("a token read took %s, over its bound of %s", d, modelReadBound)
		}
		if err := h.sawRead(resp, err); err != nil {
			h.logf("a token read: %s %s", errorCode(err), shortErr(err))
			return err
		}
		codes = append(codes, errorCode(err))
		if err == nil && resp.Secret != nil {
			h.leases = append(h.leases, resp.Secret)
		}
		h.advanceClock(time.Duration(h.rng.IntN(3000)) * time.Millisecond)
	}
	h.logf("%d token reads: %v", n, codes)
	return nil
}

func (h *history) tick() error {
	h.advanceClock(time.Duration(1+h.rng.IntN(30)) * time.Second)
	h.expireHeld()
	h.logf("periodic")
	h.scheduled(func() { _ = h.b.periodic(context.Background(), &logical.Request{Storage: h.storage}) })
	return nil
}

func (h *history) advance() error {
	d := time.Duration(1+h.rng.IntN(40)) * time.Minute
	h.advanceClock(d)
	h.expireHeld()
	h.logf("+%s, periodic", d)
	h.scheduled(func() { _ = h.b.periodic(context.Background(), &logical.Request{Storage: h.storage}) })
	return nil
}

func (h *history) fireTimer() error {
	h.logf("the rotation timer fires")
	h.scheduled(func() { _ = h.cred().rotateIfDue(context.Background(), h.storage) })
	return nil
}

func (h *history) rotateRoot() error {
	_, err := h.call(logical.UpdateOperation, h.rotatePath, nil)
	h.logf("rotate-root: %s %s", errorCode(err), shortErr(err))
	return nil
}

func (h *history) lostAnswer() error {
	h.emu.AddFaults(emulator.Fault{Endpoint: h.changeEndpoint, ApplyFirst: true, DropConnection: true, Times: 1})
	_, err := h.call(logical.UpdateOperation, h.rotatePath, nil)
	h.emu.ClearFaults()
	h.logf("rotate-root, the change's answer lost: %s %s", errorCode(err), shortErr(err))
	return nil
}

// rotation runs one rotation: half the time a scheduled one, once the clock has moved
// on by up to an hour, else an operator's rotate-root. due is the due time a scheduled
// one serves.
func (h *history) rotation() (due time.Time, err error) {
	if h.rng.IntN(2) == 0 {
		h.scheduled(func() {
			h.advanceClock(time.Duration(h.rng.IntN(int(time.Hour))))
			h.expireHeld()
			if d := h.stored().Rotation.NextRotation; !d.IsZero() && !d.After(h.clock.Now()) {
				due = d
			}
			err = h.cred().rotateIfDue(context.Background(), h.storage)
		})
		return due, err
	}
	_, err = h.call(logical.UpdateOperation, h.rotatePath, nil)
	return due, err
}

// changeFault: the tenant answers a rotation's change (a managed client's reset) with
// an error or a garbled answer, before acting on it or after (ApplyFirst), when the
// engine cannot know the outcome.
func (h *history) changeFault() error {
	faults := []struct {
		what string
		f    emulator.Fault
	}{
		{"a refusal (success false), not made", emulator.Fault{Body: `{"success":false,"Message":"injected refusal"}`}},
		{"429, not made", emulator.Fault{Status: 429}},
		{"503, not made", emulator.Fault{Status: 503}},
		{"a dropped connection, not made", emulator.Fault{DropConnection: true}},
		{"500, made", emulator.Fault{Status: 500, ApplyFirst: true}},
		{"a cut-off answer, made", emulator.Fault{MalformedJSON: true, ApplyFirst: true}},
		{"200 without an envelope, made", emulator.Fault{Body: "{}", ApplyFirst: true}},
	}
	pick := faults[h.rng.IntN(len(faults))]
	f := pick.f
	f.Endpoint, f.Times = h.changeEndpoint, 1
	h.emu.AddFaults(f)
	_, err := h.rotation()
	h.emu.ClearFaults()
	h.logf("rotation whose %s the tenant answers with %s: %s %s", h.changeEndpoint, pick.what, errorCode(err), shortErr(err))
	return nil
}

func (h *history) holdChange() error {
	if h.held != "" {
		return h.rotateRoot()
	}
	if h.managed {
		return h.holdReset()
	}
	h.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Hold: true, Times: 1})
	pendingBefore := h.stored().Rotation.PendingSecret
	h.b.afterRotationStep = func(step string) {
		if step == "stored_pending" {
			h.held = h.stored().Rotation.PendingSecret
		}
	}
	due, err := h.rotation()
	h.b.afterRotationStep = nil
	h.emu.ClearFaults()
	if h.emu.HeldChanges() == 0 {
		h.held, h.heldDue = "", time.Time{} // the rotation never sent its change
	} else {
		h.heldSince, h.heldDue = h.clock.Now(), due
		if h.held == pendingBefore {
			h.held = h.stored().Rotation.PendingSecret
		}
	}
	h.logf("rotation whose change the tenant holds unanswered (held %t): %s %s", h.held != "", errorCode(err), shortErr(err))
	return nil
}

func (h *history) land() error {
	if h.held == "" {
		return h.tick()
	}
	h.advanceClock(time.Duration(h.rng.IntN(int(pendingGrace - h.clock.Now().Sub(h.heldSince)))))
	var applied int
	if h.managed {
		// A reset needs no old password: it lands whatever the password is now.
		if err := h.emu.SetClientSecret(h.appID, h.userID, h.held); err != nil {
			return err
		}
		applied = 1
	} else {
		applied = h.emu.LandHeldChanges()
	}
	if applied > 0 && !h.heldDue.IsZero() {
		h.servedDue[h.heldDue] += applied
	}
	h.logf("the held change lands (%d applied)", applied)
	h.held, h.heldDue = "", time.Time{}
	return nil
}

// expireHeld: a change held past the grace can no longer land, as a real request
// would have ended by then.
func (h *history) expireHeld() {
	if h.held != "" && h.clock.Now().Sub(h.heldSince) >= pendingGrace {
		h.emu.DiscardHeldChanges()
		h.logf("the held change is dropped: it can no longer land")
		h.held, h.heldDue = "", time.Time{}
	}
}

func (h *history) crash() error {
	step := []string{"stored_pending", "tenant_changed"}[h.rng.IntN(2)]
	if h.incidents && h.rng.IntN(3) == 0 {
		return h.crashInIncident(step)
	}
	b, c := h.b, h.cred()
	b.afterRotationStep = func(s string) {
		if s == step {
			runtime.Goexit()
		}
	}
	done := make(chan struct{})
	scheduled := h.rng.IntN(2) == 0
	go func() {
		defer close(done)
		if scheduled {
			_ = c.rotateIfDue(context.Background(), h.storage)
		} else {
			_, _ = b.rotateClient(context.Background(), h.storage, c, true)
		}
	}()
	if scheduled {
		h.scheduled(func() { <-done })
	} else {
		<-done
	}
	h.logf("a rotation (scheduled %t) dies after %s; the plugin restarts", scheduled, step)
	return h.restart()
}

func (h *history) storageFault() error {
	committed := h.rng.IntN(2) == 0
	h.storage.arm(1, committed)
	what := []string{"rotate-root", "read", "write", "periodic"}[h.rng.IntN(4)]
	var err error
	switch what {
	case "rotate-root":
		_, err = h.call(logical.UpdateOperation, h.rotatePath, nil)
	case "read":
		_, err = h.call(logical.ReadOperation, h.tokenPath, nil)
	case "write":
		_, err = h.call(logical.UpdateOperation, h.path, map[string]any{"max_retries": h.rng.IntN(2)})
	case "periodic":
		h.scheduled(func() { err = h.b.periodic(context.Background(), &logical.Request{Storage: h.storage}) })
	}
	h.storage.disarm()
	h.logf("%s with a storage write that fails (committed %t): %s %s", what, committed, errorCode(err), shortErr(err))
	return nil
}

// writeCurrent: an operator (or a Terraform re-apply) writes the secret they know,
// when the tenant accepts it.
func (h *history) writeCurrent() error {
	cfg := h.stored()
	if !h.emu.ClientSecretIs(h.userID, cfg.ClientSecret) {
		return h.writeOther()
	}
	_, err := h.call(logical.UpdateOperation, h.path, map[string]any{"client_secret": cfg.ClientSecret})
	h.logf("config write of the current secret: %s %s", errorCode(err), shortErr(err))
	return nil
}

// writeOther: a config write without a secret, or (when the tenant's password was
// set elsewhere) of the secret the tenant accepts.
func (h *history) writeOther() error {
	var data map[string]any
	what := "no secret"
	switch {
	case h.oob != "":
		data, what = map[string]any{"client_secret": h.oob}, "the secret set at the tenant"
	case h.rng.IntN(2) == 0:
		data, what = map[string]any{"max_retries": h.rng.IntN(2), "verify_connection": false}, "no secret, unverified"
	default:
		data = map[string]any{"scopes": "read"}
	}
	_, err := h.call(logical.UpdateOperation, h.path, data)
	if err == nil && h.oob != "" {
		h.oob = ""
	}
	h.logf("config write of %s: %s %s", what, errorCode(err), shortErr(err))
	return nil
}

func (h *history) outOfBand() error {
	if h.held != "" {
		return h.tick() // the model keeps one unknown at a time
	}
	h.oob = fmt.Sprintf("Admin-Set-%d-Aa1", h.rng.Uint32())
	// An administrator's password replaces whatever the schedule's changes set: a
	// due time whose change it overwrote may be served again.
	clear(h.servedDue)
	if err := h.emu.SetClientSecret(h.appID, h.userID, h.oob); err != nil {
		return err
	}
	h.logf("an administrator sets another password at the tenant")
	return nil
}

func (h *history) restart() error {
	// A dead plugin runs nothing: every client's timer stops with it, not only the
	// default client's (a managed client's timer left running would rotate on the
	// dead instance, with a failed-login count of its own).
	for _, c := range h.b.knownCredentials() {
		c.sched.stop(time.Second)
	}
	h.instanceGone()
	h.logf("the plugin restarts")
	return h.start()
}

func (h *history) leaderChange() error {
	old := h.b
	h.instanceGone()
	h.logf("leader change: a new node mounts the engine; the old one is cleaned up")
	if err := h.start(); err != nil {
		return err
	}
	old.Clean(context.Background())
	if h.rng.IntN(2) == 0 {
		h.logf("the new leader's timer fires at once")
		h.scheduled(func() { _ = h.cred().rotateIfDue(context.Background(), h.storage) })
	}
	return nil
}

// leaseEnd: Vault's expiration manager ends a lease. Reported done means revoked at
// the tenant (or expired); otherwise Vault keeps it and retries.
func (h *history) leaseEnd() error {
	if len(h.leases) == 0 {
		return h.reads()
	}
	i := h.rng.IntN(len(h.leases))
	lease := h.leases[i]
	resp, err := h.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RevokeOperation, Storage: h.storage, MountPoint: "cyberark/", Secret: lease,
	})
	tok, _ := lease.InternalData["access_token"].(string)
	exp := time.Unix(int64Of(lease.InternalData["expires_at"]), 0)
	done := err == nil && (resp == nil || !resp.IsError())
	h.logf("a lease ends: done %t %s", done, shortErr(err))
	if done {
		h.leases = append(h.leases[:i], h.leases[i+1:]...)
		if revoke, _ := lease.InternalData["revoke"].(bool); revoke && tok != "" && h.clock.Now().Before(exp) && !h.emu.Revoked(tok) {
			return errors.New("a lease ended as done, but its token was not revoked at the tenant and has not expired")
		}
	}
	return nil
}

func (h *history) outage() error {
	k := 1 + h.rng.IntN(4)
	h.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: 503, Times: k})
	h.logf("the tenant answers the next %d token requests with 503", k)
	return nil
}

// check is every invariant, after every event.
func (h *history) check() error {
	h.expireHeld()
	cfg := h.stored()
	// The tenant's password is one Vault stores (unless an administrator changed it
	// and has not told Vault), and so is a change that may still land.
	if h.oob == "" {
		ts := h.tenantSecret()
		if ts == "" || ts != cfg.ClientSecret && ts != cfg.Rotation.PendingSecret {
			return fmt.Errorf("SECRET LOST: the tenant accepts a secret Vault does not store (state %q)", cfg.Rotation.status())
		}
	}
	if h.held != "" && h.held != cfg.ClientSecret && h.held != cfg.Rotation.PendingSecret {
		return fmt.Errorf("SECRET AT RISK: a change that may still land sets a secret Vault no longer stores (state %q)", cfg.Rotation.status())
	}
	// Failed logins in any window within the budget, and the tenant, which locks at
	// one more, never did.
	h.countFailures()
	for i, t0 := range h.failTimes {
		n := 0
		for _, t := range h.failTimes[i:] {
			if t.Sub(t0) < defaultFailedLoginWindow {
				n++
			}
		}
		if n > defaultMaxFailedLogins {
			var at []string
			for _, t := range h.failTimes {
				at = append(at, t.Format("15:04:05.000"))
			}
			return fmt.Errorf("BUDGET BROKEN: %d failed logins within %s from %s (failed logins the engine caused since the last verified write: %s)",
				n, defaultFailedLoginWindow, t0.Format("15:04:05"), strings.Join(at, " "))
		}
	}
	if st := h.emu.ClientStats(h.userID); st.Lockouts > 0 && h.operatorRefusals == 0 {
		return fmt.Errorf("LOCKED OUT: the engine caused %d failed logins in all, and the tenant locked the user", st.FailedLogins)
	}
	for due, n := range h.servedDue {
		if n > 1 {
			return fmt.Errorf("%d password changes for the due time %s, want at most 1", n, due.Format(time.RFC3339))
		}
	}
	switch s := cfg.Rotation.status(); s {
	case rotationStateOK, rotationStatePending, rotationStateUnresolved:
	default:
		return fmt.Errorf("unknown rotation state %q", s)
	}
	if h.managed {
		return h.checkManaged()
	}
	return nil
}

// checkLogs: no secret the history made reached the log.
func (h *history) checkLogs() error {
	logs := h.logs.String()
	cfg := h.stored()
	for _, s := range []string{h.initialSecret, cfg.ClientSecret, cfg.Rotation.PendingSecret, h.oob, h.held, mgrSecret} {
		if s != "" && strings.Contains(logs, s) {
			return errors.New("a client secret appears in the log")
		}
	}
	return nil
}

func shortErr(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 90 {
		s = s[:90] + "…"
	}
	return s
}

// modelStorage fails the next Puts it is armed for: before they reach storage, or
// after (committed, and reported failed all the same).
type modelStorage struct {
	logical.Storage
	mu        sync.Mutex
	skipPuts  int
	failPuts  int
	committed bool
}

func (f *modelStorage) arm(n int, committed bool) { f.armAfter(0, n, committed) }

// armAfter lets skip Puts through, then fails the next n.
func (f *modelStorage) armAfter(skip, n int, committed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.skipPuts, f.failPuts, f.committed = skip, n, committed
}

func (f *modelStorage) disarm() { f.arm(0, false) }

func (f *modelStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	f.mu.Lock()
	fail, committed := f.failPuts > 0 && f.skipPuts == 0, f.committed
	switch {
	case f.failPuts > 0 && f.skipPuts > 0:
		f.skipPuts--
	case fail:
		f.failPuts--
	}
	f.mu.Unlock()
	if !fail {
		return f.Storage.Put(ctx, e)
	}
	if committed {
		if err := f.Storage.Put(ctx, e); err != nil {
			return err
		}
	}
	return errors.New("storage unavailable (injected)")
}
