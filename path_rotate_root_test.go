package cyberark

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

const rotateScope = "rotate"

// newRotationEnv is a configured engine whose tenant app grants a scope that allows
// the password change, named in rotation_scopes.
func newRotationEnv(t *testing.T, tenant func(*emulator.Config)) *testEnv {
	t.Helper()
	e := newTestEnvWith(t, func(c *emulator.Config) {
		app := &c.Apps[0]
		app.Scopes = append(app.Scopes, rotateScope)
		app.ScopeAPIs = map[string][]string{rotateScope: {"UserMgmt/ChangeUserPassword"}}
		if tenant != nil {
			tenant(c)
		}
	})
	data := e.configData()
	data["scopes"] = "read"
	data["rotation_scopes"] = rotateScope
	e.mustRequest(t, logical.CreateOperation, "config", data)
	return e
}

// stored is the config as it is in storage.
func (e *testEnv) stored(t *testing.T) *cyberarkConfig {
	t.Helper()
	cfg, err := readConfig(t.Context(), e.storage)
	if err != nil || cfg == nil {
		t.Fatalf("reading the stored config: %v", err)
	}
	return cfg
}

// assertWorkingSecret checks that the tenant accepts the stored secret, by a grant
// through a token read, and that no rotation is left pending.
func (e *testEnv) assertWorkingSecret(t *testing.T) {
	t.Helper()
	e.assertServing(t)
	if cfg := e.stored(t); cfg.Rotation.PendingSecret != "" || cfg.Rotation.Unresolved {
		t.Errorf("rotation state %q after settling", cfg.Rotation.status())
	}
}

// assertServing checks that the tenant accepts the stored secret, by a grant through a
// token read, whatever the rotation state.
func (e *testEnv) assertServing(t *testing.T) {
	t.Helper()
	if !e.emu.ClientSecretIs(testClientID, e.stored(t).ClientSecret) {
		t.Fatal("the tenant does not accept the stored secret")
	}
	if tok := e.mustRequest(t, logical.ReadOperation, "token", nil); tok.Data["access_token"] == "" {
		t.Fatal("no token")
	}
}

func TestRotateRoot(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
	before := e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"]
	e.emu.Reset()

	resp := e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	raw, _ := json.Marshal(resp)
	cfg := e.stored(t)
	if cfg.ClientSecret == testClientSecret || strings.Contains(string(raw), cfg.ClientSecret) {
		t.Fatal("the secret did not change, or the response shows it")
	}
	if _, err := time.Parse(time.RFC3339, resp.Data["rotated_at"].(string)); err != nil {
		t.Errorf("rotated_at = %v", resp.Data["rotated_at"])
	}
	if e.emu.ClientSecretIs(testClientID, testClientSecret) {
		t.Error("the tenant still accepts the old secret")
	}
	if got := e.emu.Stats().PasswordChanges; got != 1 {
		t.Errorf("%d password changes at the tenant, want 1", got)
	}
	if n := len(cfg.ClientSecret); n != defaultPasswordLength {
		t.Errorf("new secret has %d characters, want %d", n, defaultPasswordLength)
	}
	e.assertWorkingSecret(t)
	// The reuse cache held a token of the old secret; it was dropped.
	if after := e.mustRequest(t, logical.ReadOperation, "token/shared", nil).Data["access_token"]; after == before {
		t.Error("a reused token from before the rotation was handed out after it")
	}

	read := e.mustRequest(t, logical.ReadOperation, "config", nil)
	if read.Data["rotation_state"] != rotationStateOK || read.Data["last_vault_rotation"] == nil {
		t.Errorf("config read after rotation: state %v, last rotation %v", read.Data["rotation_state"], read.Data["last_vault_rotation"])
	}
	raw, _ = json.Marshal(read)
	if strings.Contains(string(raw), cfg.ClientSecret) {
		t.Error("the config read shows the secret")
	}

	// A second rotation goes from the new secret.
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	if e.stored(t).ClientSecret == cfg.ClientSecret {
		t.Error("the second rotation did not change the secret")
	}
	e.assertWorkingSecret(t)
}

// TestRotateRootRefusedKeepsTheSecret: a refusal by the tenant (its policy, its
// history, a token without the scope for the call) leaves the old secret in place, and
// the error carries the tenant's message.
func TestRotateRootRefusedKeepsTheSecret(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		tenant func(*emulator.Config)
		config map[string]any
		want   string
	}{
		{"policy", func(c *emulator.Config) { c.PasswordPolicy = &emulator.PasswordPolicy{MinLength: 40, MaxLength: 64} }, nil, "40"},
		{"scope without the API", nil, map[string]any{"rotation_scopes": "write"}, "authoriz"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, tc.tenant)
			if tc.config != nil {
				e.mustRequest(t, logical.UpdateOperation, "config", tc.config)
			}
			resp, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
			if err != nil || resp == nil || !resp.IsError() {
				t.Fatalf("got (%v, %v), want a 400", resp, err)
			}
			if msg := resp.Error().Error(); !strings.Contains(strings.ToLower(msg), tc.want) || !strings.Contains(msg, "stays as it was") {
				t.Errorf("error %q lacks the tenant's message (%q) or that the secret stays", msg, tc.want)
			}
			if cfg := e.stored(t); cfg.ClientSecret != testClientSecret || cfg.Rotation.PendingSecret != "" {
				t.Error("the stored secret changed, or a pending secret stayed")
			}
			e.assertWorkingSecret(t)
		})
	}
}

// putFailingStorage fails the n-th Put of the config (1-based), as a storage outage or a
// lost leadership would.
type putFailingStorage struct {
	logical.Storage
	mu   sync.Mutex
	puts int
	n    int
}

func (s *putFailingStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	if entry.Key == configPath {
		s.mu.Lock()
		s.puts++
		fail := s.puts == s.n
		s.mu.Unlock()
		if fail {
			return errors.New("storage unavailable")
		}
	}
	return s.Storage.Put(ctx, entry)
}

// TestRotateRootSurvivesFailureAtEachStep fails a rotation at every step, and after each
// shows that Vault holds a secret the tenant accepts, settled at the next start.
func TestRotateRootSurvivesFailureAtEachStep(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// failPut fails the n-th config write of the rotation.
		failPut int
		// crashAfter stops the rotation (as a killed process) after this step.
		crashAfter string
		// fault is injected into the tenant after the password change.
		fault *emulator.Fault
		// changed says whether the tenant ends up with the new secret.
		changed bool
		// settledAtOnce: the rotation itself found out which secret works, and succeeded.
		settledAtOnce bool
	}{
		{name: "storing the new secret fails, before the tenant is asked", failPut: 1, changed: false},
		{name: "killed after storing the new secret", crashAfter: "stored_pending", changed: false},
		{name: "killed after the tenant changed it", crashAfter: "tenant_changed", changed: true},
		{name: "the tenant's answer is lost", fault: &emulator.Fault{Endpoint: "change_password", ApplyFirst: true, DropConnection: true}, changed: true, settledAtOnce: true},
		{name: "the check fails", fault: &emulator.Fault{Endpoint: "token", Status: 503}, changed: true},
		{name: "storing the checked secret fails", failPut: 2, changed: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			clock := newFakeClock(e)
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			s := &putFailingStorage{Storage: e.storage, n: tc.failPut}
			if tc.fault != nil {
				f := *tc.fault
				if f.Endpoint == "token" {
					// The check's grant, after the change: every grant fails until cleared.
					e.b.afterRotationStep = func(step string) {
						if step == "tenant_changed" {
							e.emu.AddFaults(f)
						}
					}
				} else {
					e.emu.AddFaults(f)
				}
			}
			done := make(chan error, 1)
			go func() {
				if tc.crashAfter != "" {
					e.b.afterRotationStep = func(step string) {
						if step == tc.crashAfter {
							done <- errors.New("killed")
							runtime.Goexit() // the process dies: nothing after this step runs
						}
					}
				}
				_, err := e.b.rotateClient(t.Context(), s, e.b.root, true)
				done <- err
			}()
			if err := <-done; (err == nil) != tc.settledAtOnce {
				t.Fatalf("rotation error = %v; want an error: %t", err, !tc.settledAtOnce)
			}
			if got := e.emu.ClientSecretIs(testClientID, testClientSecret); got == tc.changed {
				t.Fatalf("the tenant accepts the old secret: %t, want %t", got, !tc.changed)
			}
			e.emu.ClearFaults()

			// Vault starts the plugin again; it settles what it finds.
			e.restart(t)
			e.assertServing(t)
			if !tc.changed && e.stored(t).Rotation.PendingSecret != "" {
				// A refused new secret is kept a while, in case the change was still on
				// its way to the tenant; once that cannot be, it is dropped.
				clock.Advance(pendingGrace + time.Minute)
				if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
					t.Fatal(err)
				}
			}
			e.assertWorkingSecret(t)
			if tc.changed == (e.stored(t).ClientSecret == testClientSecret) {
				t.Errorf("after settling, the stored secret is the old one: %t, want %t", !tc.changed, !tc.changed)
			}
		})
	}
}

// TestRotateRootUnresolved: the tenant accepts neither secret (its password was
// changed elsewhere mid-rotation). Both are kept; once a late change can no longer
// explain it the state says unresolved; token reads, the periodic function and the
// schedule add no failed logins; and writing the secret that works ends it.
func TestRotateRootUnresolved(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	const elsewhere = "Changed-Elsewhere-42"
	e.b.afterRotationStep = func(step string) {
		if step == "tenant_changed" {
			if err := e.emu.SetClientSecret(testAppID, testClientID, elsewhere); err != nil {
				t.Error(err)
			}
		}
	}
	if _, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil); err == nil {
		t.Fatal("an unresolved rotation reported no error")
	}
	e.b.afterRotationStep = nil
	cfg := e.stored(t)
	if cfg.Rotation.status() != rotationStatePending || cfg.ClientSecret != testClientSecret {
		t.Fatalf("state %q right after: both secrets must be kept, pending", cfg.Rotation.status())
	}
	// Another try while it is pending is refused without a word to the tenant.
	e.emu.Reset()
	if _, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil); err == nil || !strings.Contains(err.Error(), "not settled") {
		t.Errorf("rotate-root during a pending rotation: %v", err)
	}
	// A manual write must be verified while the rotation is open.
	resp, err := e.request(t, logical.UpdateOperation, "config", map[string]any{"client_secret": "Typo-Secret-1", "verify_connection": false})
	assertBadRequest(t, resp, err, "verify_connection")

	clock.Advance(pendingGrace + time.Minute)
	e.restart(t)
	cfg = e.stored(t)
	if !cfg.Rotation.Unresolved || cfg.Rotation.PendingSecret == "" || cfg.ClientSecret != testClientSecret {
		t.Fatalf("state %q after the grace: both secrets must be kept, unresolved", cfg.Rotation.status())
	}
	read := e.mustRequest(t, logical.ReadOperation, "config", nil)
	if read.Data["rotation_state"] != rotationStateUnresolved || len(read.Warnings) == 0 {
		t.Errorf("config read: state %v, warnings %v", read.Data["rotation_state"], read.Warnings)
	}
	if !strings.Contains(e.logs.String(), "root rotation unresolved") {
		t.Error("the unresolved state was not logged")
	}

	e.emu.Reset()
	if _, err := e.request(t, logical.ReadOperation, "token", nil); err == nil {
		t.Fatal("a token read with a refused secret succeeded")
	}
	if n := e.emu.Stats().TokenRequests; n > 1 {
		t.Errorf("a refused token read made %d token requests; an unresolved rotation must not add failed logins", n)
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"rotation_period": "10s", "verify_connection": false})
	for range 5 {
		clock.Advance(time.Minute)
		if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.emu.Stats().TokenRequests; n > 1 {
		t.Errorf("the periodic function or the schedule retried an unresolved rotation (%d token requests)", n)
	}

	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"client_secret": elsewhere})
	if read := e.mustRequest(t, logical.ReadOperation, "config", nil); read.Data["rotation_state"] != rotationStateOK {
		t.Errorf("after writing the working secret the state is %v", read.Data["rotation_state"])
	}
	e.assertWorkingSecret(t)
}

// TestRotateRootSettlesOnARefusedRead: a token read that the tenant refuses while a
// rotation is pending settles it and is served with the secret that works.
func TestRotateRootSettlesOnARefusedRead(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	crashAfter(t, e, "tenant_changed")
	if e.stored(t).Rotation.PendingSecret == "" {
		t.Fatal("no pending secret after a rotation stopped past the tenant's change")
	}
	if tok := e.mustRequest(t, logical.ReadOperation, "token", nil); tok.Data["access_token"] == "" {
		t.Fatal("no token")
	}
	e.assertWorkingSecret(t)
}

// TestRotateRootSerialised: concurrent rotations run one after the other, and the
// engine ends with a secret the tenant accepts.
func TestRotateRootSerialised(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
		}()
	}
	wg.Wait()
	if got := e.emu.Stats().PasswordChanges; got != 3 {
		t.Errorf("%d password changes, want 3", got)
	}
	e.assertWorkingSecret(t)
}

func TestRotateRootNeedsATenant(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	resp, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
	assertBadRequest(t, resp, err, "not configured")
	data := e.configData()
	delete(data, "tenant_url")
	delete(data, "app_id")
	data["token_url"] = e.url + "/oauth2/token/" + testAppID
	e.mustRequest(t, logical.CreateOperation, "config", data)
	resp, err = e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
	assertBadRequest(t, resp, err, "tenant_url")
}

func TestGeneratePassword(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, n := range []int{minPasswordLength, defaultPasswordLength, maxPasswordLength} {
		for range 50 {
			p, err := generatePassword(n)
			if err != nil {
				t.Fatal(err)
			}
			if len(p) != n || !strings.ContainsAny(p, digitChars) || !strings.ContainsAny(p, upperChars) || !strings.ContainsAny(p, lowerChars) {
				t.Fatalf("a generated password (length %d) breaks the default policy", len(p))
			}
			if seen[p] {
				t.Fatal("the generator repeated a password")
			}
			seen[p] = true
		}
	}
}

// TestRotateRootLateChangeIsKept: the change reached the tenant only after the engine
// had looked (a request cut off by a timeout, or a process that died, can still be
// applied). The new secret was kept, so the first read the tenant refuses settles on it.
func TestRotateRootLateChangeIsKept(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	clock := newFakeClock(e)
	crashAfter(t, e, "stored_pending") // dies before the tenant hears of it
	e.restart(t)                       // settles: the tenant refuses the new secret, for now
	pending := e.stored(t).Rotation.PendingSecret
	if pending == "" {
		t.Fatal("the new secret was dropped while a late change could still land")
	}
	e.assertServing(t)

	// The change lands at the tenant.
	if err := e.emu.SetClientSecret(testAppID, testClientID, pending); err != nil {
		t.Fatal(err)
	}
	clock.Advance(readSettleInterval + time.Second)
	e.emu.Reset()
	if tok := e.mustRequest(t, logical.ReadOperation, "token", nil); tok.Data["access_token"] == "" {
		t.Fatal("no token")
	}
	if n := e.emu.Stats().TokenRequests; n != 3 {
		t.Errorf("%d token requests; want the refused read, the settle's grant and the read again", n)
	}
	e.assertWorkingSecret(t)
}

// passwordChangeRequests are the password changes the tenant received.
func passwordChangeRequests(e *testEnv) []emulator.Request {
	var out []emulator.Request
	for _, r := range e.emu.Requests() {
		if strings.EqualFold(r.Path, changePasswordPath) {
			out = append(out, r)
		}
	}
	return out
}
