package cyberark

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/jsonutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// errInjected is what a faultStorage returns for a call it fails.
var errInjected = errors.New("injected storage fault")

// faultStorage wraps a storage and fails chosen calls, as a storage outage or a lost
// leadership would. It records every call, so a test can first learn the calls an
// operation makes and then fail each of them in turn.
type faultStorage struct {
	logical.Storage

	mu     sync.Mutex
	faults []*storageFault
	calls  []string // "Get config", "Put roles/r", in order
}

// storageFault fails the nth call (1-based; 0 for every call) of op (Get, Put, List or
// Delete) on a key that starts with prefix. With landed, a Put or Delete is made
// before it is reported failed, as by a storage that timed out after committing.
type storageFault struct {
	op     string
	prefix string
	nth    int
	landed bool

	seen, fired int
}

var _ logical.Storage = (*faultStorage)(nil)

func newFaultStorage(s logical.Storage, faults ...storageFault) *faultStorage {
	fs := &faultStorage{Storage: s}
	for _, f := range faults {
		fs.faults = append(fs.faults, &f)
	}
	return fs
}

// call records a call and says whether it fails, and if so whether it is made all the
// same.
func (s *faultStorage) call(op, key string) (landed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, op+" "+key)
	for _, f := range s.faults {
		if f.op != op || !strings.HasPrefix(key, f.prefix) {
			continue
		}
		f.seen++
		if f.nth == 0 || f.seen == f.nth {
			f.fired++
			return f.landed, fmt.Errorf("%s %s: %w", op, key, errInjected)
		}
	}
	return false, nil
}

func (s *faultStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if _, err := s.call("Get", key); err != nil {
		return nil, err
	}
	return s.Storage.Get(ctx, key)
}

func (s *faultStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	landed, err := s.call("Put", entry.Key)
	if err != nil && !landed {
		return err
	}
	return cmp.Or(s.Storage.Put(ctx, entry), err)
}

func (s *faultStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if _, err := s.call("List", prefix); err != nil {
		return nil, err
	}
	return s.Storage.List(ctx, prefix)
}

func (s *faultStorage) Delete(ctx context.Context, key string) error {
	landed, err := s.call("Delete", key)
	if err != nil && !landed {
		return err
	}
	return cmp.Or(s.Storage.Delete(ctx, key), err)
}

// recorded is every call so far.
func (s *faultStorage) recorded() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// fired is how many calls the faults failed.
func (s *faultStorage) fired() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.faults {
		n += f.fired
	}
	return n
}

// snapshotStorage is every entry in s, by key, listed recursively: the whole state a
// test can compare before and after an operation.
func snapshotStorage(tb testing.TB, s logical.Storage) map[string]string {
	tb.Helper()
	out := make(map[string]string)
	var walk func(prefix string)
	walk = func(prefix string) {
		keys, err := s.List(context.Background(), prefix)
		if err != nil {
			tb.Fatalf("listing %q: %v", prefix, err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, "/") {
				walk(prefix + k)
				continue
			}
			entry, err := s.Get(context.Background(), prefix+k)
			if err != nil {
				tb.Fatalf("reading %q: %v", prefix+k, err)
			}
			if entry != nil {
				out[prefix+k] = string(entry.Value)
			}
		}
	}
	walk("")
	return out
}

// storageChanges names the keys that differ between two snapshots, never their values:
// the config holds the client secret.
func storageChanges(before, after map[string]string) []string {
	var changes []string
	for k, v := range after {
		switch old, ok := before[k]; {
		case !ok:
			changes = append(changes, k+" added")
		case old != v:
			changes = append(changes, k+" changed")
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			changes = append(changes, k+" deleted")
		}
	}
	slices.Sort(changes)
	return changes
}

// restoreStorage puts s back to snap and empties the engine's caches, as if another
// node had written it.
func restoreStorage(tb testing.TB, e *testEnv, snap map[string]string) {
	tb.Helper()
	ctx := context.Background()
	for k := range snapshotStorage(tb, e.storage) {
		if err := e.storage.Delete(ctx, k); err != nil {
			tb.Fatal(err)
		}
	}
	for k, v := range snap {
		if err := e.storage.Put(ctx, &logical.StorageEntry{Key: k, Value: []byte(v)}); err != nil {
			tb.Fatal(err)
		}
	}
	e.b.cache.resetAll()
}

// faultOp is an operation whose storage calls are failed one at a time.
type faultOp struct {
	name string
	// env builds the state the operation starts from. Each failure is tried on a fork
	// of it: a new engine on a copy of its storage, served by the same tenant.
	env func(t *testing.T) *testEnv
	// warm brings a fork's caches to the state's (a token read fills them).
	warm func(t *testing.T, e *testEnv)
	// tenantSecret is the secret the tenant accepts in that state, when it is not
	// testClientSecret.
	tenantSecret string
	// run performs the operation with s as its storage.
	run func(t *testing.T, e *testEnv, s logical.Storage) (*logical.Response, error)
	// rotation: the operation may leave a rotation under way, so instead of storage
	// being as it was, a settle must find a secret the tenant accepts. Its failures
	// are tried one after the other, since each changes the tenant's secret.
	rotation bool
	// logs: the operation reports a storage failure in the log and carries on, by
	// design, rather than returning it.
	logs bool
	// refusal: the operation answers a 400 with or without a fault (a tenant refusal).
	refusal bool
	// after checks, with the fault lifted, that the engine serves what storage holds:
	// that its caches took nothing from the failed call.
	after func(t *testing.T, e *testEnv)
}

// fork is a new engine on a copy of e's storage, with e's clock, served by e's tenant
// set back to accept tenantSecret: the state e is in, without the cost of a new tenant
// (an RSA key) and certificate authority.
func (e *testEnv) fork(t *testing.T, tenantSecret string) *testEnv {
	t.Helper()
	s := &logical.InmemStorage{}
	for k, v := range snapshotStorage(t, e.storage) {
		if err := s.Put(context.Background(), &logical.StorageEntry{Key: k, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.emu.SetClientSecret(testAppID, testClientID, cmp.Or(tenantSecret, testClientSecret)); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	f := &testEnv{b: newTestBackend(t, s, logs), storage: s, emu: e.emu, url: e.url, caPEM: e.caPEM, logs: logs}
	f.b.now = e.b.now
	t.Cleanup(func() { f.assertNoSecretsLogged(t) })
	t.Cleanup(func() { f.b.Cleanup(context.Background()) })
	return f
}

// TestStorageFaults fails every storage call of every operation in turn, and shows that
// each failure is an error (not a panic, not a success), that storage is as it was
// before the call (or, for a rotation, settles on a secret the tenant accepts), and that
// the engine's caches hold nothing from a write that was not stored.
func TestStorageFaults(t *testing.T) {
	t.Parallel()
	for _, op := range faultOps() {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			template := op.env(t)
			// Only its storage and tenant are used from here: its rotation timer must not
			// change the tenant's secret under the forks.
			template.b.Cleanup(context.Background())
			start := func(t *testing.T) *testEnv {
				e := template.fork(t, op.tenantSecret)
				if op.warm != nil {
					op.warm(t, e)
				}
				return e
			}
			// Learn the calls the operation makes when storage works.
			probe := start(t)
			rec := newFaultStorage(probe.storage)
			resp, err := op.run(t, probe, rec)
			if err != nil || !op.refusal && resp != nil && resp.IsError() {
				t.Fatalf("without a fault: %s", describeResult(resp, err))
			}
			calls := rec.recorded()
			if len(calls) == 0 {
				t.Fatal("the operation made no storage call")
			}
			seen := map[string]int{}
			for _, c := range calls {
				seen[c]++
				nth := seen[c]
				opName, key, _ := strings.Cut(c, " ")
				t.Run(fmt.Sprintf("%s #%d", c, nth), func(t *testing.T) {
					if !op.rotation {
						t.Parallel()
					}
					checkFault(t, op, start(t), storageFault{op: opName, prefix: key, nth: nth})
				})
			}
			t.Logf("%s: %d storage calls, each failed in turn: %s", op.name, len(calls), strings.Join(calls, ", "))
		})
	}
}

func checkFault(t *testing.T, op faultOp, e *testEnv, fault storageFault) {
	before := snapshotStorage(t, e.storage)
	fs := newFaultStorage(e.storage, fault)
	resp, err := runNoPanic(t, func() (*logical.Response, error) { return op.run(t, e, fs) })
	if fs.fired() == 0 {
		t.Fatalf("the fault was never hit; calls: %v", fs.recorded())
	}
	var problem string
	switch {
	case err != nil:
		if !strings.Contains(err.Error(), errInjected.Error()) && !op.rotation {
			problem = "the error does not carry the storage failure: " + redacted(err.Error())
		}
	case op.refusal && resp != nil && resp.IsError():
	case op.logs:
		if !strings.Contains(e.logs.String(), errInjected.Error()) {
			problem = "the storage failure was neither returned nor logged"
		}
	default:
		problem = "a failed storage call was reported as " + describeResult(resp, err)
	}
	if problem != "" {
		t.Error(problem)
	}

	// The fault is lifted: e.storage is the healthy storage underneath.
	if op.rotation {
		if err := e.b.Backend.PeriodicFunc(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
			t.Logf("periodic after the fault: %s", redacted(err.Error()))
		}
		assertTenantAcceptsStored(t, e)
	} else if changes := storageChanges(before, snapshotStorage(t, e.storage)); len(changes) > 0 {
		t.Errorf("a failed operation left storage changed: %v", changes)
	}
	if op.after != nil {
		op.after(t, e)
	}
}

// runNoPanic turns a panic into a test failure that names it.
func runNoPanic(t *testing.T, f func() (*logical.Response, error)) (resp *logical.Response, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("panic: %s", redacted(fmt.Sprint(r)))
		}
	}()
	return f()
}

// assertTenantAcceptsStored checks that the tenant accepts the stored secret, and that a
// token read gets a token with it.
func assertTenantAcceptsStored(t *testing.T, e *testEnv) {
	t.Helper()
	cfg, err := readConfig(context.Background(), e.storage)
	if err != nil || cfg == nil {
		t.Fatalf("reading the stored config: %v", err)
	}
	if !e.emu.ClientSecretIs(testClientID, cfg.ClientSecret) {
		t.Fatalf("the tenant does not accept the stored secret (rotation state %q)", cfg.Rotation.status())
	}
	if tok := e.mustRequest(t, logical.ReadOperation, "token", nil); tok.Data["access_token"] == "" {
		t.Fatal("no token")
	}
}

// describeResult says what a request returned, without secrets and bounded.
func describeResult(resp *logical.Response, err error) string {
	switch {
	case err != nil:
		return "error " + redacted(err.Error())
	case resp == nil:
		return "success with no response"
	case resp.IsError():
		return "error response " + redacted(resp.Error().Error())
	default:
		return fmt.Sprintf("success with data keys %v", slices.Sorted(maps.Keys(resp.Data)))
	}
}

// redacted is msg with the test client secret blanked, cut to 300 bytes, for a failure
// message.
func redacted(msg string) string {
	msg = strings.ReplaceAll(msg, testClientSecret, "<client secret>")
	if len(msg) > 300 {
		msg = msg[:300] + fmt.Sprintf("... (%d bytes)", len(msg))
	}
	return msg
}

// The states operations start from.

func configuredEnv(t *testing.T) *testEnv {
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "allowed_scopes": "read,write"})
	return e
}

// warmCache fills the config, the role and the client into the cache.
func warmCache(t *testing.T, e *testEnv) {
	e.mustRequest(t, logical.ReadOperation, "token/r", nil)
}

// pendingSecret is the secret of a rotation that stopped after the tenant took it and
// before the engine stored it as current.
const pendingSecret = "Pending-Secret-0042"

func pendingRotationEnv(t *testing.T) *testEnv {
	e := newRotationEnv(t, nil)
	cfg, err := readConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Rotation.PendingSecret = pendingSecret
	cfg.Rotation.PendingSince = time.Now().UTC()
	entry, err := logical.StorageEntryJSON(configPath, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Put(context.Background(), entry); err != nil {
		t.Fatal(err)
	}
	return e
}

// dueRotationEnv is an engine whose scheduled rotation is due.
func dueRotationEnv(t *testing.T) *testEnv {
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "10s", "verify_connection": false})
	clock.Advance(11 * time.Second)
	return e
}

// scopeOf reads token/<role> (token when role is empty) and returns the granted scope.
func scopeOf(t *testing.T, e *testEnv, path string) any {
	t.Helper()
	return e.mustRequest(t, logical.ReadOperation, path, nil).Data["scope"]
}

func faultOps() []faultOp {
	request := func(op logical.Operation, path string, data map[string]any) func(*testing.T, *testEnv, logical.Storage) (*logical.Response, error) {
		return func(t *testing.T, e *testEnv, s logical.Storage) (*logical.Response, error) {
			return e.vaultRequestWith(t, s, op, path, data)
		}
	}
	stillConfigured := func(t *testing.T, e *testEnv) {
		if got := scopeOf(t, e, "token/r"); got != "read" {
			t.Errorf("token/r got scope %v, want read: the engine serves something storage does not hold", got)
		}
	}
	return []faultOp{
		{
			name: "config create",
			env:  func(t *testing.T) *testEnv { return newTestEnv(t) },
			run: func(t *testing.T, e *testEnv, s logical.Storage) (*logical.Response, error) {
				return e.vaultRequestWith(t, s, logical.CreateOperation, "config", e.configData())
			},
			after: func(t *testing.T, e *testEnv) {
				resp, err := e.request(t, logical.ReadOperation, "token", nil)
				assertBadRequest(t, resp, err, "not configured")
				e.configure(t) // nothing half-written stands in the way of a retry
				e.mustRequest(t, logical.ReadOperation, "token", nil)
			},
		},
		{
			name: "config update",
			env:  configuredEnv,
			warm: warmCache,
			run:  request(logical.UpdateOperation, "config", map[string]any{"scopes": "write"}),
			after: func(t *testing.T, e *testEnv) {
				if got := scopeOf(t, e, "token"); got != "read" {
					t.Errorf("token got scope %v after a config update that was not stored, want read", got)
				}
			},
		},
		{
			name: "config update of the secret",
			env:  configuredEnv,
			warm: warmCache,
			run:  request(logical.UpdateOperation, "config", map[string]any{"client_secret": testClientSecret, "scopes": "write"}),
			after: func(t *testing.T, e *testEnv) {
				if got := scopeOf(t, e, "token"); got != "read" {
					t.Errorf("token got scope %v after a config update that was not stored, want read", got)
				}
			},
		},
		{
			name:  "config read",
			env:   configuredEnv,
			run:   request(logical.ReadOperation, "config", nil),
			after: stillConfigured,
		},
		{
			name:  "config delete",
			env:   configuredEnv,
			warm:  warmCache,
			run:   request(logical.DeleteOperation, "config", nil),
			after: stillConfigured,
		},
		{
			name: "role create",
			env:  configuredEnv,
			warm: warmCache,
			run:  request(logical.CreateOperation, "roles/new", map[string]any{"scopes": "write"}),
			after: func(t *testing.T, e *testEnv) {
				resp, err := e.request(t, logical.ReadOperation, "token/new", nil)
				assertBadRequest(t, resp, err, "does not exist")
			},
		},
		{
			name:  "role update",
			env:   configuredEnv,
			warm:  warmCache,
			run:   request(logical.UpdateOperation, "roles/r", map[string]any{"scopes": "write"}),
			after: stillConfigured,
		},
		{
			name:  "role read",
			env:   configuredEnv,
			run:   request(logical.ReadOperation, "roles/r", nil),
			after: stillConfigured,
		},
		{
			name:  "role list",
			env:   configuredEnv,
			run:   request(logical.ListOperation, "roles/", nil),
			after: stillConfigured,
		},
		{
			name:  "role delete",
			env:   configuredEnv,
			warm:  warmCache,
			run:   request(logical.DeleteOperation, "roles/r", nil),
			after: stillConfigured,
		},
		{
			name: "legacy role delete",
			env: func(t *testing.T) *testEnv {
				e := configuredEnv(t)
				entry, err := logical.StorageEntryJSON(rolePrefix+"_legacy", &roleEntry{})
				if err != nil {
					t.Fatal(err)
				}
				if err := e.storage.Put(context.Background(), entry); err != nil {
					t.Fatal(err)
				}
				return e
			},
			warm:  warmCache,
			run:   request(logical.DeleteOperation, "roles/_legacy", nil),
			after: stillConfigured,
		},
		{
			name:  "token read, cold cache",
			env:   configuredEnv,
			run:   request(logical.ReadOperation, "token", nil),
			after: stillConfigured,
		},
		{
			name:  "role token read, cold cache",
			env:   configuredEnv,
			run:   request(logical.ReadOperation, "token/r", nil),
			after: stillConfigured,
		},
		{
			name: "revocation, cold cache",
			env:  configuredEnv,
			run: func(t *testing.T, e *testEnv, s logical.Storage) (*logical.Response, error) {
				// A lease of the warm engine, revoked after a restart emptied the cache.
				lease := e.mustRequest(t, logical.ReadOperation, "token/r", nil).Secret
				e.b.cache.resetAll()
				resp, err := e.revokeWith(t, s, lease)
				if err == nil && !e.emu.Revoked(lease.InternalData["access_token"].(string)) {
					t.Error("the revocation succeeded without revoking the token at the tenant")
				}
				return resp, err
			},
			after: stillConfigured,
		},
		{
			name:     "rotate-root",
			env:      func(t *testing.T) *testEnv { return newRotationEnv(t, nil) },
			run:      request(logical.UpdateOperation, "config/rotate-root", nil),
			rotation: true,
		},
		{
			name: "rotate-root refused by the tenant",
			env: func(t *testing.T) *testEnv {
				return newRotationEnv(t, func(c *emulator.Config) {
					c.PasswordPolicy = &emulator.PasswordPolicy{MinLength: 40, MaxLength: 64}
				})
			},
			run:      request(logical.UpdateOperation, "config/rotate-root", nil),
			rotation: true,
			refusal:  true,
		},
		{
			name:         "settle on a token read the tenant refuses",
			env:          pendingRotationEnv,
			tenantSecret: pendingSecret,
			run:          request(logical.ReadOperation, "token", nil),
			rotation:     true,
			// The read is refused with the old secret whether or not the settle could
			// store what it found; the failed-login count is written best effort, and
			// a failure to store it is logged.
			refusal: true,
			logs:    true,
		},
		{
			name:         "periodic function with a pending rotation",
			env:          pendingRotationEnv,
			tenantSecret: pendingSecret,
			run:          periodicWith,
			rotation:     true,
			logs:         true,
		},
		{
			name:     "periodic function with a rotation due",
			env:      dueRotationEnv,
			run:      periodicWith,
			rotation: true,
			logs:     true,
		},
		{
			// Initialize reports nothing by design: the mount must come up, and the
			// periodic function tries again.
			name:         "Initialize with a pending rotation",
			env:          pendingRotationEnv,
			tenantSecret: pendingSecret,
			run: func(_ *testing.T, e *testEnv, s logical.Storage) (*logical.Response, error) {
				return nil, e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: s})
			},
			rotation: true,
			logs:     true,
		},
	}
}

func periodicWith(_ *testing.T, e *testEnv, s logical.Storage) (*logical.Response, error) {
	return nil, e.b.Backend.PeriodicFunc(context.Background(), &logical.Request{Storage: s})
}

// revokeWith sends the revocation Vault sends when a lease ends, with storage s. The
// lease's internal data makes the JSON round trip it makes through Vault.
func (e *testEnv) revokeWith(t *testing.T, s logical.Storage, secret *logical.Secret) (*logical.Response, error) {
	t.Helper()
	raw, err := json.Marshal(secret.InternalData)
	if err != nil {
		t.Fatal(err)
	}
	stored := *secret
	stored.InternalData = nil
	if err := jsonutil.DecodeJSON(raw, &stored.InternalData); err != nil {
		t.Fatal(err)
	}
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RevokeOperation, Secret: &stored, Storage: s, MountPoint: "cyberark/",
	})
}

// jobManagerView plays Vault Enterprise's rotation manager, holding the one job a
// mount registers for its config as it stands.
type jobManagerView struct {
	logical.StaticSystemView
	mu  sync.Mutex
	job *rotation.RotationJobConfigureRequest
}

func (v *jobManagerView) RegisterRotationJob(_ context.Context, req *rotation.RotationJobConfigureRequest) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	job := *req
	v.job = &job
	return "rotation-id-1", nil
}

func (v *jobManagerView) DeregisterRotationJob(context.Context, *rotation.RotationJobDeregisterRequest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.job = nil
	return nil
}

// inStep says how the rotation manager's job differs from what the stored config says
// it is, or "" when they agree.
func (v *jobManagerView) inStep(t *testing.T, s logical.Storage) string {
	t.Helper()
	cfg, err := readConfig(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch registered := cfg != nil && cfg.Rotation.RotationID != ""; {
	case v.job == nil && registered:
		return "the stored config names a rotation job that Vault's rotation manager no longer holds: nothing rotates"
	case v.job != nil && !registered:
		return "Vault's rotation manager holds a job that the stored config does not know of"
	case v.job != nil && (v.job.RotationSchedule != cfg.RotationSchedule || v.job.RotationPeriod != cfg.RotationPeriod || v.job.RotationWindow != cfg.RotationWindow):
		return "Vault's rotation manager holds a schedule other than the stored one"
	}
	return ""
}

// TestStorageFaultsKeepRotationManagerInStep: where Vault's rotation manager holds the
// schedule (Enterprise), a config write or delete whose storage call fails leaves the
// manager's job as the stored config describes it.
func TestStorageFaultsKeepRotationManagerInStep(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		scheduled bool // the stored config has a job before the call
		op        logical.Operation
		data      map[string]any
		fault     storageFault
	}{
		{"create with a schedule", false, logical.CreateOperation, map[string]any{"rotation_schedule": "0 3 * * *"}, storageFault{op: "Put", prefix: configPath}},
		{"update of the schedule", true, logical.UpdateOperation, map[string]any{"rotation_schedule": "0 4 * * *"}, storageFault{op: "Put", prefix: configPath}},
		{"update that disables rotation", true, logical.UpdateOperation, map[string]any{"disable_automated_rotation": true}, storageFault{op: "Put", prefix: configPath}},
		{"delete", true, logical.DeleteOperation, nil, storageFault{op: "Delete", prefix: configPath}},
	}
	template := newTestEnv(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := template.fork(t, "")
			view := &jobManagerView{}
			if err := e.b.Setup(context.Background(), &logical.BackendConfig{Logger: e.b.Logger(), System: view, StorageView: e.storage}); err != nil {
				t.Fatal(err)
			}
			data := e.configData()
			if tc.scheduled {
				data["rotation_schedule"] = "0 3 * * *"
			}
			if tc.op != logical.CreateOperation {
				e.mustRequest(t, logical.CreateOperation, "config", data)
				data = maps.Clone(tc.data)
			} else {
				maps.Copy(data, tc.data)
			}
			if gap := view.inStep(t, e.storage); gap != "" {
				t.Fatalf("before the call: %s", gap)
			}
			before := snapshotStorage(t, e.storage)
			fs := newFaultStorage(e.storage, tc.fault)
			resp, err := e.vaultRequestWith(t, fs, tc.op, "config", data)
			if err == nil || fs.fired() == 0 {
				t.Fatalf("a failed %s: %s", tc.fault.op, describeResult(resp, err))
			}
			if changes := storageChanges(before, snapshotStorage(t, e.storage)); len(changes) > 0 {
				t.Errorf("storage changed: %v", changes)
			}
			if gap := view.inStep(t, e.storage); gap != "" {
				t.Error(gap)
			}
		})
	}
}
