package cyberark

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"go/build"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-metrics"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The client ID has the "@" and the secret the ":" and "%" that URL-encoding clients
// mangle; every test runs with them so the raw Basic header is exercised throughout.
const (
	testAppID        = "VaultApp"
	testClientID     = "svc-vault@tenant.example"
	testClientSecret = "S3cr:et%41-vault%"
)

// testEnv is a backend on in-memory storage, wired to an emulated tenant over TLS.
type testEnv struct {
	b       *backend
	storage logical.Storage
	emu     *emulator.Emulator
	url     string
	caPEM   string
	logs    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func newTestEnv(tb testing.TB) *testEnv {
	tb.Helper()
	return newTestEnvWith(tb, nil)
}

// newTestEnvWith lets a test change the emulated tenant before it starts.
func newTestEnvWith(tb testing.TB, tenant func(*emulator.Config)) *testEnv {
	tb.Helper()
	cfg := emulator.Config{
		ExpiresIn: 3600,
		Apps: []emulator.App{
			{ID: testAppID, Scopes: []string{"read", "write", "admin"}, Clients: []emulator.Client{{ID: testClientID, Secret: testClientSecret}}},
			{ID: "OtherApp", Scopes: []string{"other"}, Clients: []emulator.Client{{ID: testClientID, Secret: testClientSecret}}},
		},
	}
	if tenant != nil {
		tenant(&cfg)
	}
	emu, err := emulator.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := emulator.NewCA()
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(emu)
	srv.TLS = ca.ServerTLSConfig()
	srv.StartTLS()
	tb.Cleanup(srv.Close)

	logs := &syncBuffer{}
	storage := &logical.InmemStorage{}
	env := &testEnv{b: newTestBackend(tb, storage, logs), storage: storage, emu: emu, url: srv.URL, caPEM: string(ca.CertPEM()), logs: logs}
	tb.Cleanup(func() { env.assertNoSecretsLogged(tb) })
	tb.Cleanup(func() { env.b.schedule.stop(time.Second) })
	return env
}

// newTestBackend builds the engine as Vault's Factory call does, on storage s, logging
// everything to logs.
func newTestBackend(tb testing.TB, s logical.Storage, logs *syncBuffer) *backend {
	tb.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = s
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	b, err := Factory(context.Background(), conf)
	if err != nil {
		tb.Fatal(err)
	}
	return b.(*backend)
}

// withSystem replaces the backend with one built on sys, Vault's view of itself for
// the plugin (identity, replication state), on the same storage.
func (e *testEnv) withSystem(tb testing.TB, sys logical.SystemView) {
	tb.Helper()
	conf := logical.TestBackendConfig()
	conf.System = sys
	conf.StorageView = e.storage
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: e.logs, Level: hclog.Trace})
	b, err := Factory(context.Background(), conf)
	if err != nil {
		tb.Fatal(err)
	}
	e.b.schedule.stop(time.Second)
	e.b = b.(*backend)
	tb.Cleanup(func() { e.b.schedule.stop(time.Second) })
}

// restart replaces the backend with a new one on the same storage, as when Vault
// restarts a plugin that died, and initialises it as Vault does.
func (e *testEnv) restart(tb testing.TB) {
	tb.Helper()
	e.b.schedule.stop(time.Second)
	now := e.b.now
	e.b = newTestBackend(tb, e.storage, e.logs)
	e.b.now = now // the same clock, fake or not
	tb.Cleanup(func() { e.b.schedule.stop(time.Second) })
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		tb.Fatal(err)
	}
}

// assertNoSecretsLogged fails if the client secret or any token the tenant issued
// reached the backend's log. Failure messages name what leaked, never the value.
func (e *testEnv) assertNoSecretsLogged(tb testing.TB) {
	tb.Helper()
	logs := e.logs.String()
	if strings.Contains(logs, testClientSecret) {
		tb.Error("the client secret appears in the backend's log")
	}
	// Secrets that rotation made, current and pending.
	if cfg, err := readConfig(context.Background(), e.storage); err == nil && cfg != nil {
		for name, s := range map[string]string{"the stored client secret": cfg.ClientSecret, "the pending client secret": cfg.Rotation.PendingSecret} {
			if s != "" && strings.Contains(logs, s) {
				tb.Errorf("%s appears in the backend's log", name)
			}
		}
	}
	for i, tok := range e.emu.Issued() {
		if strings.Contains(logs, tok) {
			tb.Errorf("issued access token #%d appears in the backend's log", i)
		}
	}
}

// configData is a valid config for the emulated tenant.
func (e *testEnv) configData() map[string]any {
	return map[string]any{
		"tenant_url":    e.url,
		"app_id":        testAppID,
		"client_id":     testClientID,
		"client_secret": testClientSecret,
		"ca_cert":       e.caPEM,
	}
}

func (e *testEnv) request(tb testing.TB, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	tb.Helper()
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation:  op,
		Path:       path,
		Data:       data,
		Storage:    e.storage,
		MountPoint: "cyberark/",
	})
}

// mustRequest fails the test on an error or an error response.
func (e *testEnv) mustRequest(tb testing.TB, op logical.Operation, path string, data map[string]any) *logical.Response {
	tb.Helper()
	resp, err := e.request(tb, op, path, data)
	if err != nil {
		tb.Fatalf("%s %s: %v", op, path, err)
	}
	if resp != nil && resp.IsError() {
		tb.Fatalf("%s %s: error response: %v", op, path, resp.Error())
	}
	return resp
}

func (e *testEnv) configure(tb testing.TB) {
	tb.Helper()
	e.mustRequest(tb, logical.CreateOperation, "config", e.configData())
}

// assertBadRequest checks for a 400-style error response that names field.
func assertBadRequest(tb testing.TB, resp *logical.Response, err error, field string) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("got error %v, want a 400 error response naming %q", err, field)
	}
	if resp == nil || !resp.IsError() {
		// Never the answer itself: a token read's would print the token.
		var keys []string
		if resp != nil {
			keys = slices.Sorted(maps.Keys(resp.Data))
		}
		tb.Fatalf("got a success (data keys %v), want a 400 error response naming %q", keys, field)
	}
	if msg := resp.Error().Error(); !strings.Contains(msg, field) {
		tb.Fatalf("error %q does not name %q", msg, field)
	}
	if code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, nil); code != 400 {
		tb.Fatalf("status %d, want 400", code)
	}
}

func storedJSON(tb testing.TB, s logical.Storage, key string) string {
	tb.Helper()
	entry, err := s.Get(context.Background(), key)
	if err != nil {
		tb.Fatal(err)
	}
	if entry == nil {
		return ""
	}
	var v any
	if err := json.Unmarshal(entry.Value, &v); err != nil {
		tb.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func TestFactoryReportsVersionAndSealWrapsConfig(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if got := e.b.PluginVersion().Version; got != Version {
		t.Errorf("PluginVersion = %q, want %q", got, Version)
	}
	want := []string{"config", "clients/", "tokens/", "incidents/", "incident-tokens/"}
	if got := e.b.SpecialPaths().SealWrapStorage; !slices.Equal(got, want) {
		t.Errorf("SealWrapStorage = %v, want %v", got, want)
	}
}

func TestInvalidateDropsCachedConfigAndRoles(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"scopes": "read"})
	e.mustRequest(t, logical.ReadOperation, "token/r", nil) // fills every cache

	// Another node rewrites both keys behind this node's back.
	cfg, _ := readConfig(context.Background(), e.storage)
	cfg.Scopes = []string{"write"}
	entry, _ := logical.StorageEntryJSON("config", cfg)
	if err := e.storage.Put(context.Background(), entry); err != nil {
		t.Fatal(err)
	}
	roleEntryJSON, _ := logical.StorageEntryJSON("roles/r", &roleEntry{Scopes: []string{"admin"}})
	if err := e.storage.Put(context.Background(), roleEntryJSON); err != nil {
		t.Fatal(err)
	}

	if got := e.mustRequest(t, logical.ReadOperation, "token/r", nil).Data["scope"]; got != "read" {
		t.Fatalf("before Invalidate the cached role should still serve scope read, got %v", got)
	}
	e.b.Invalidate(context.Background(), "roles/r")
	if got := e.mustRequest(t, logical.ReadOperation, "token/r", nil).Data["scope"]; got != "admin" {
		t.Errorf("after Invalidate(roles/r): scope %v, want admin", got)
	}
	e.b.Invalidate(context.Background(), "config")
	if got := e.mustRequest(t, logical.ReadOperation, "config", nil).Data["scopes"]; len(got.([]string)) != 1 || got.([]string)[0] != "write" {
		t.Errorf("after Invalidate(config): scopes %v, want [write]", got)
	}
}

func TestTokenReadsUseNoStorage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"scopes": "read"})
	e.mustRequest(t, logical.ReadOperation, "token/r", nil)

	// With the caches warm, a storage that fails every call of every kind must not
	// matter, and must not be called at all.
	for _, path := range []string{"token/r", "token"} {
		failing := &failingStorage{}
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.ReadOperation, Path: path, Storage: failing, MountPoint: "cyberark/",
		})
		if err != nil || resp.IsError() {
			t.Fatalf("warm read of %s touched storage: %v %v", path, err, resp.Error())
		}
		if calls := failing.made(); len(calls) != 0 {
			t.Errorf("warm read of %s made %d storage calls: %v", path, len(calls), calls)
		}
	}
}

// failingStorage fails and records every call of every Storage method. It embeds
// nothing, so a method added to logical.Storage does not pass through unseen.
type failingStorage struct {
	mu    sync.Mutex
	calls []string
}

var _ logical.Storage = (*failingStorage)(nil)

func (f *failingStorage) record(op, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op+" "+key)
	return errStorage
}

func (f *failingStorage) made() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *failingStorage) Get(_ context.Context, key string) (*logical.StorageEntry, error) {
	return nil, f.record("Get", key)
}

func (f *failingStorage) Put(_ context.Context, entry *logical.StorageEntry) error {
	return f.record("Put", entry.Key)
}

func (f *failingStorage) List(_ context.Context, prefix string) ([]string, error) {
	return nil, f.record("List", prefix)
}

func (f *failingStorage) Delete(_ context.Context, key string) error {
	return f.record("Delete", key)
}

var errStorage = &storageError{}

type storageError struct{}

func (*storageError) Error() string { return "storage unavailable" }

// fakeClock stands in for time.Now in the backend (b.now), so tests can move through a
// token's lifetime without waiting. Install it before the first request.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(e *testEnv) *fakeClock {
	c := &fakeClock{t: time.Now()}
	e.b.now = c.Now
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// withInmemMetrics points the backend's metrics at an in-memory sink.
func withInmemMetrics(tb testing.TB, e *testEnv) *metrics.InmemSink {
	tb.Helper()
	sink := metrics.NewInmemSink(time.Hour, time.Hour)
	conf := metrics.DefaultConfig("test")
	conf.EnableHostname = false
	conf.EnableRuntimeMetrics = false
	m, err := metrics.New(conf, sink)
	if err != nil {
		tb.Fatal(err)
	}
	e.b.metrics = m
	return sink
}

// counter sums a counter over the sink's intervals; name is the flattened key with
// labels, e.g. "test.cyberark.grant;outcome=success".
func counter(sink *metrics.InmemSink, name string) int {
	total := 0
	for _, iv := range sink.Data() {
		iv.RLock()
		if c, ok := iv.Counters[name]; ok {
			total += c.Count
		}
		iv.RUnlock()
	}
	return total
}

// TestPluginDoesNotImportTheEmulator: the emulator is a test tool. internal/ keeps other
// modules from importing it; this keeps the plugin's own packages from doing so.
func TestPluginDoesNotImportTheEmulator(t *testing.T) {
	t.Parallel()
	const emulatorPath = "github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	for _, dir := range []string{".", "client", "cmd/vault-plugin-secrets-cyberark"} {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if slices.Contains(pkg.Imports, emulatorPath) {
			t.Errorf("%s imports the emulator outside its tests", dir)
		}
	}
}

// readOnlyStorage is storage as a performance standby sees it: reads work, and every
// write fails with logical.ErrReadOnly, which is what makes Vault forward a request to
// the active node. It counts the writes tried.
type readOnlyStorage struct {
	logical.Storage
	writes int
}

func (s *readOnlyStorage) Put(context.Context, *logical.StorageEntry) error {
	s.writes++
	return logical.ErrReadOnly
}

func (s *readOnlyStorage) Delete(context.Context, string) error {
	s.writes++
	return logical.ErrReadOnly
}

// TestPerformanceStandby runs the engine as a Vault Enterprise performance standby
// does, on the active node's storage read-only: writes are forwarded before they reach
// the tenant, token reads are served where they arrive without writing, and a read the
// tenant refuses during an unsettled rotation is forwarded to the node that can settle
// it.
func TestPerformanceStandby(t *testing.T) {
	t.Parallel()
	for name, state := range map[string]consts.ReplicationState{
		"performance standby":   consts.ReplicationPerformanceStandby,
		"performance secondary": consts.ReplicationPerformanceSecondary,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			active := newTestEnv(t)
			active.configure(t)
			active.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"scopes": "read"})

			ro := &readOnlyStorage{Storage: active.storage}
			conf := logical.TestBackendConfig()
			conf.StorageView = ro
			conf.Logger = hclog.New(&hclog.LoggerOptions{Output: active.logs, Level: hclog.Trace})
			conf.System = logical.StaticSystemView{ReplicationStateVal: state}
			b, err := Factory(t.Context(), conf)
			if err != nil {
				t.Fatal(err)
			}
			standby := &testEnv{b: b.(*backend), storage: ro, emu: active.emu, url: active.url, caPEM: active.caPEM, logs: active.logs}
			t.Cleanup(func() { standby.b.Cleanup(context.Background()) })
			if err := standby.b.Initialize(t.Context(), &logical.InitializationRequest{Storage: ro}); err != nil {
				t.Fatal(err)
			}

			active.emu.Reset()
			for _, w := range []struct {
				op   logical.Operation
				path string
				data map[string]any
			}{
				{logical.UpdateOperation, "config", active.configData()},
				{logical.UpdateOperation, "config", map[string]any{"scopes": "write"}},
				{logical.DeleteOperation, "config", nil},
				{logical.CreateOperation, "roles/new", map[string]any{"scopes": "read"}},
				{logical.UpdateOperation, "roles/r", map[string]any{"scopes": "write"}},
				{logical.DeleteOperation, "roles/r", nil},
				{logical.UpdateOperation, "config/rotate-root", nil},
			} {
				resp, err := standby.request(t, w.op, w.path, w.data)
				if !errors.Is(err, logical.ErrReadOnly) {
					t.Errorf("%s %s on a %s: %v %v, want logical.ErrReadOnly (Vault forwards it)", w.op, w.path, name, resp, err)
				}
			}
			if n := len(active.emu.Requests()); n != 0 || ro.writes != 0 {
				t.Errorf("forwarded writes reached the tenant %d times and storage %d times, want neither", n, ro.writes)
			}

			// Reads are served here, with the settings the active node stored.
			for _, p := range []string{"token", "token/r", "config", "roles/r"} {
				standby.mustRequest(t, logical.ReadOperation, p, nil)
			}
			if ro.writes != 0 {
				t.Errorf("reads on a %s tried %d storage writes", name, ro.writes)
			}

			// A rotation the active node left unsettled, whose new secret the tenant
			// took: this node's grant is refused. A performance standby hands the read
			// to the active node, which settles, but only when a settle is due: one
			// checked a moment ago would only repeat the refused grant. A secondary
			// answers with the refusal, since the lease would otherwise live on the
			// primary.
			cfg := active.stored(t)
			cfg.Rotation.PendingSecret, cfg.Rotation.PendingSince = "N3w-"+strings.Repeat("x", 28), time.Now().UTC()
			if err := active.emu.SetClientSecret(testAppID, testClientID, cfg.Rotation.PendingSecret); err != nil {
				t.Fatal(err)
			}
			forwards := state == consts.ReplicationPerformanceStandby
			for _, checked := range []time.Time{time.Now().UTC(), {}} {
				// Checked a moment ago and found refused: another refusal is no news.
				cfg.Rotation.LastCheck, cfg.Rotation.CurrentRefused = checked, !checked.IsZero()
				entry, _ := logical.StorageEntryJSON(configPath, cfg)
				if err := active.storage.Put(t.Context(), entry); err != nil {
					t.Fatal(err)
				}
				standby.b.Invalidate(t.Context(), configPath) // what the active node's write sends
				due := checked.IsZero()
				resp, err := standby.request(t, logical.ReadOperation, "token", nil)
				switch {
				case forwards && due:
					if !errors.Is(err, logical.ErrReadOnly) {
						t.Errorf("a read refused during a pending rotation due a check on a %s: %v, want logical.ErrReadOnly", name, err)
					}
				case errors.Is(err, logical.ErrReadOnly) || err == nil && (resp == nil || !resp.IsError()):
					t.Errorf("a read refused during a pending rotation (check due %t) on a %s: %v %v, want the tenant's refusal", due, name, resp, err)
				}
			}
			if ro.writes != 0 {
				t.Errorf("the refused reads tried %d storage writes on a %s", ro.writes, name)
			}
			// The active node settles it and serves the read.
			active.b.Invalidate(t.Context(), configPath)
			active.mustRequest(t, logical.ReadOperation, "token", nil)
			if got := active.stored(t); got.ClientSecret != cfg.Rotation.PendingSecret || got.Rotation.PendingSecret != "" {
				t.Error("the active node did not settle the rotation on the forwarded read")
			}
			standby.b.Invalidate(t.Context(), configPath)
			standby.mustRequest(t, logical.ReadOperation, "token", nil)
			active.assertNoSecretsLogged(t)
		})
	}
}

// replicationStateCounter is a system view that counts the engine's asks for Vault's
// replication state, each a gRPC round trip to Vault for an external plugin, and
// answers what state holds.
type replicationStateCounter struct {
	logical.SystemView
	asks  atomic.Int64
	state atomic.Uint32
}

func (c *replicationStateCounter) ReplicationState() consts.ReplicationState {
	c.asks.Add(1)
	return consts.ReplicationState(c.state.Load())
}

// TestReplicationStateAskedOncePerTTL: token reads do not each ask Vault for its
// replication state (the SDK's router would, for every request), and a change of state
// is seen once the cached answer is older than its TTL.
func TestReplicationStateAskedOncePerTTL(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	counter := &replicationStateCounter{SystemView: logical.TestSystemView()}
	e.withSystem(t, counter)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "token_reuse": true})

	cache, ok := e.b.System().(*replicationStateCache)
	if !ok {
		t.Fatalf("the backend's system view is a %T, not the replication state cache", e.b.System())
	}
	cache.last.Store(nil)
	before := counter.asks.Load()
	for range 20 {
		e.mustRequest(t, logical.ReadOperation, "token/r", nil)
	}
	// The TTL is a second; twenty reused reads take far less, but a slow machine
	// may cross one boundary.
	if n := counter.asks.Load() - before; n < 1 || n > 2 {
		t.Errorf("20 token reads asked Vault for its replication state %d times, want 1 (2 if a second passed)", n)
	}

	// The node becomes a performance standby: once the answer has aged, writes are
	// forwarded.
	counter.state.Store(uint32(consts.ReplicationPerformanceStandby))
	cache.ttl = 0
	if _, err := e.request(t, logical.UpdateOperation, "roles/r", map[string]any{"scopes": "write"}); !errors.Is(err, logical.ErrReadOnly) {
		t.Errorf("a role write after the node became a performance standby: %v, want logical.ErrReadOnly", err)
	}
}

// readConfig reads the default client's stored config.
func readConfig(ctx context.Context, s logical.Storage) (*cyberarkConfig, error) {
	return readConfigAt(ctx, s, configPath)
}
