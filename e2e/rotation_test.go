//go:build unix

package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// changePasswordPath is the tenant API that root rotation calls, as the emulator
// records its path.
const changePasswordPath = "/UserMgmt/ChangeUserPassword"

// TestRotateRootInVault rotates the client secret through Vault, twice: each rotation
// changes the password at the tenant with a token of the rotation scope, the engine
// then gets tokens with the new secret, and neither the response nor the config read
// shows it.
func TestRotateRootInVault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600, withAuditLog())
	e.configure()
	e.readToken("token", nil)
	original := e.tenant.secret

	previous := original
	for round := 1; round <= 2; round++ {
		before := e.tenant.emu.Stats()
		start := time.Now()
		sec, err := e.rotateRoot(e.ctx)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("rotation %d: config/rotate-root: %v", round, err)
		}
		t.Logf("rotation %d: config/rotate-root took %s", round, took.Round(time.Millisecond))
		noSecretsIn(t, e, "the rotate-root response", sec)
		if sec == nil {
			t.Fatalf("rotation %d: config/rotate-root returned no data", round)
		}
		rotatedAt, err := time.Parse(time.RFC3339, stringField(sec.Data, "rotated_at"))
		if err != nil {
			t.Errorf("rotation %d: rotated_at = %v: %v", round, sec.Data["rotated_at"], err)
		} else if rotatedAt.Before(start.Add(-time.Second)) || rotatedAt.After(time.Now().Add(time.Second)) {
			t.Errorf("rotation %d: rotated_at %s is not within the call (%s to %s)", round, rotatedAt, start.UTC(), time.Now().UTC())
		}
		if len(sec.Data) != 1 {
			t.Errorf("rotation %d: the response has fields %v, want only rotated_at", round, keys(sec.Data))
		}

		// Exactly one change crossed the wire, authorised by a token of the rotation
		// scope, from the previous secret to one the tenant now accepts.
		after := e.tenant.emu.Stats()
		if got := after.PasswordChanges - before.PasswordChanges; got != 1 {
			t.Errorf("rotation %d: the tenant made %d password changes, want 1", round, got)
		}
		changes := passwordChanges(e.tenant.emu.Requests())
		if len(changes) != round {
			t.Fatalf("rotation %d: the tenant has received %d password changes in all, want %d", round, len(changes), round)
		}
		ch := changes[round-1]
		if ch.old != previous {
			t.Errorf("rotation %d: the change's oldPassword is not the secret stored before it", round)
		}
		if ch.bearerScope != rotationScope {
			t.Errorf("rotation %d: the change was authorised by a token with scope %q, want the config's rotation_scopes %q", round, ch.bearerScope, rotationScope)
		}
		if !regexp.MustCompile(`^[A-Za-z0-9]{32}$`).MatchString(ch.new) {
			t.Errorf("rotation %d: the new secret (length %d) is not 32 letters and digits, the default", round, len(ch.new))
		}
		if e.tenant.emu.ClientSecretIs(clientID, previous) {
			t.Errorf("rotation %d: the tenant still accepts the secret from before the rotation", round)
		}
		if !e.tenant.emu.ClientSecretIs(clientID, ch.new) {
			t.Errorf("rotation %d: the tenant does not accept the secret the rotation sent", round)
		}

		// Tokens keep coming, granted with the new secret.
		e.readToken("token", nil)
		if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(ch.new) {
			t.Errorf("rotation %d: the token read after it did not authenticate with the new secret", round)
		}

		cfg := readRotationConfig(t, e)
		if cfg["rotation_state"] != "ok" || cfg["client_secret_set"] != true {
			t.Errorf("rotation %d: config rotation_state=%v client_secret_set=%v, want ok and true", round, cfg["rotation_state"], cfg["client_secret_set"])
		}
		if last, err := time.Parse(time.RFC3339, stringField(cfg, "last_vault_rotation")); err != nil || last.Sub(rotatedAt).Abs() > time.Second {
			t.Errorf("rotation %d: config last_vault_rotation = %v (%v), want the response's rotated_at %s", round, cfg["last_vault_rotation"], err, rotatedAt)
		}
		for _, field := range []string{"rotation_pending_since", "last_rotation_error"} {
			if v, ok := cfg[field]; ok {
				t.Errorf("rotation %d: config %s = %v after a clean rotation", round, field, v)
			}
		}
		if cfg["next_vault_rotation"] != nil {
			t.Errorf("rotation %d: next_vault_rotation = %v with no schedule", round, cfg["next_vault_rotation"])
		}
		previous = ch.new
	}

	// The log guard knows every secret the tenant held: the original and the two that
	// the rotations set.
	if got := len(e.tenant.passwords()); got != 3 {
		t.Errorf("the tenant's password API saw %d distinct passwords, want 3", got)
	}

	// The audit device saw the rotations, so its log is one the guard's check means
	// something for.
	if audit := e.vault.auditText(t); !strings.Contains(audit, mountPath+"/config/rotate-root") {
		t.Error("the audit log has no entry for config/rotate-root")
	}
}

// TestRotateRootRefusedByTenantPolicy has the tenant refuse new secrets, for its
// password policy and then its password history: each refusal is a 400 that carries the
// tenant's message, and the secret the tenant accepts stays the stored one. On the way,
// rotated secrets come from the Vault password policy the config names, a change of
// policy takes effect at the next rotation, and a policy too weak for a secret, or one
// that does not exist, is refused at the config write.
func TestRotateRootRefusedByTenantPolicy(t *testing.T) {
	t.Parallel()
	// Length only: the Vault password policies below make secrets of one kind of
	// character each, which the tenant must take.
	swap := &passwordSwap{}
	e := newEnv(t, 3600, withAuditLog(), withTenantHandler(swap.wrap), withTenantConfig(func(c *emulator.Config) {
		c.PasswordPolicy = &emulator.PasswordPolicy{MinLength: 20, MaxLength: 64}
		c.PasswordHistory = 3
	}))
	e.guard.addSecrets(swap.secrets)
	c := e.client
	data := e.tenant.configData()
	data["password_length"] = 16
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing the config: %v", err)
	}
	original := e.tenant.secret

	// Too short for the tenant.
	refused := func(what, tenantMessage string) {
		t.Helper()
		before := e.tenant.emu.Stats()
		sec, err := e.rotateRoot(e.ctx)
		if err == nil {
			noSecretsIn(t, e, "the rotate-root response", sec)
			t.Fatalf("%s: config/rotate-root succeeded; want the tenant to refuse it", what)
		}
		re := responseError(t, err)
		msg := strings.Join(re.Errors, " ")
		noSecretsIn(t, e, "the rotate-root error", msg)
		if re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, tenantMessage) {
			t.Errorf("%s: config/rotate-root: %d %q, want a 400 with the tenant's %q", what, re.StatusCode, msg, tenantMessage)
		}
		if got := e.tenant.emu.Stats().PasswordChanges - before.PasswordChanges; got != 0 {
			t.Errorf("%s: the tenant made %d password changes", what, got)
		}
		cfg := readRotationConfig(t, e)
		if cfg["rotation_state"] != "ok" || !strings.Contains(stringField(cfg, "last_rotation_error"), tenantMessage) {
			t.Errorf("%s: config rotation_state=%v last_rotation_error=%q, want ok and the tenant's message", what, cfg["rotation_state"], cfg["last_rotation_error"])
		}
	}
	refused("a 16-character secret", "it must be at least 20 characters long")
	if !e.tenant.emu.ClientSecretIs(clientID, original) {
		t.Fatal("after the refused rotation the tenant no longer accepts the original secret")
	}
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(original) {
		t.Error("after the refused rotation the token read did not authenticate with the original secret")
	}
	if cfg := readRotationConfig(t, e); cfg["last_vault_rotation"] != nil {
		t.Errorf("last_vault_rotation = %v after a refused rotation only", cfg["last_vault_rotation"])
	}

	// Vault password policies. Two strong ones whose secrets tell them apart (the
	// engine's floor is 95 bits; these give 24 × log2(36) ≈ 124 and 30 × log2(36) ≈ 155),
	// and one of 24 times the same letter (0 bits), which the config write refuses, as
	// it refuses a policy that does not exist: the engine would otherwise rotate to a
	// secret anyone can guess.
	charsetPolicy := func(length int, charset string) string {
		return fmt.Sprintf("length = %d\nrule \"charset\" {\n  charset = %q\n}\n", length, charset)
	}
	for name, policy := range map[string]string{
		"e2e-lower": charsetPolicy(24, "abcdefghijklmnopqrstuvwxyz0123456789"),
		"e2e-upper": charsetPolicy(30, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
		"e2e-q":     charsetPolicy(24, "q"),
	} {
		if _, err := c.Logical().WriteWithContext(e.ctx, "sys/policies/password/"+name, map[string]any{"policy": policy}); err != nil {
			t.Fatalf("writing password policy %s: %v", name, err)
		}
	}
	for _, name := range []string{"e2e-q", "e2e-missing"} {
		_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"password_policy": name})
		re := responseError(t, err)
		if msg := strings.Join(re.Errors, " "); re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, "password_policy") || !strings.Contains(msg, name) {
			t.Errorf("setting password_policy %s: %d %q, want a 400 about password_policy %s", name, re.StatusCode, msg, name)
		}
	}
	if cfg := readRotationConfig(t, e); stringField(cfg, "password_policy") != "" {
		t.Errorf("password_policy = %q after refused writes only", cfg["password_policy"])
	}

	// Rotate with one policy, then the other: each secret is one the policy makes.
	var secrets []string
	for _, step := range []struct {
		policy string
		shape  *regexp.Regexp
	}{
		{"e2e-lower", regexp.MustCompile(`^[a-z0-9]{24}$`)},
		{"e2e-upper", regexp.MustCompile(`^[A-Z0-9]{30}$`)},
	} {
		if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"password_policy": step.policy}); err != nil {
			t.Fatalf("setting password_policy %s: %v", step.policy, err)
		}
		if _, err := e.rotateRoot(e.ctx); err != nil {
			t.Fatalf("rotating with password_policy %s: %v", step.policy, err)
		}
		secret := lastNewPassword(t, e)
		if !step.shape.MatchString(secret) {
			t.Errorf("the rotation with password_policy %s set a secret of %d characters that the policy does not make (want %s)", step.policy, len(secret), step.shape)
		}
		if !e.tenant.emu.ClientSecretIs(clientID, secret) {
			t.Fatalf("after the rotation with password_policy %s the tenant does not accept its secret", step.policy)
		}
		secrets = append(secrets, secret)
	}
	current := secrets[len(secrets)-1]

	// History: the tenant's last three passwords are the original, the e2e-lower one
	// and the current one. A strong policy never repeats a secret, so the test has the
	// next change carry the e2e-lower one instead of the engine's new secret, and the
	// tenant's history check refuses it.
	swap.arm(secrets[0])
	refused("a secret from the tenant's history", "it must not match any of the last 3 passwords")
	if swap.swapped() != 1 {
		t.Fatalf("the password change passed the swap %d times, want 1", swap.swapped())
	}
	if !e.tenant.emu.ClientSecretIs(clientID, current) {
		t.Error("after the refused rotation the tenant no longer accepts the secret set before it")
	}
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(current) {
		t.Error("after the refused rotation the token read did not authenticate with the secret set before it")
	}
}

// passwordSwap stands in front of the tenant and, once armed, replaces the newPassword
// of the next password change with a password of the test's choosing before the tenant
// sees it. It keeps the passwords it replaced, for the log guard: the tenant never sees
// them.
type passwordSwap struct {
	next http.Handler

	mu       sync.Mutex
	with     string
	replaced []string
}

func (p *passwordSwap) wrap(next http.Handler) http.Handler {
	p.next = next
	return p
}

func (p *passwordSwap) arm(password string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.with = password
}

func (p *passwordSwap) swapped() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.replaced)
}

func (p *passwordSwap) secrets() []namedSecret {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []namedSecret
	for i, pw := range p.replaced {
		out = append(out, namedSecret{fmt.Sprintf("new password #%d the swap kept from the tenant", i+1), pw})
	}
	return out
}

func (p *passwordSwap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	with := p.with
	if with == "" || !strings.EqualFold(strings.TrimSuffix(r.URL.Path, "/"), changePasswordPath) {
		p.mu.Unlock()
		p.next.ServeHTTP(w, r)
		return
	}
	p.with = ""
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var change map[string]any
	if err == nil && json.Unmarshal(body, &change) == nil {
		if pw, _ := change["newPassword"].(string); pw != "" {
			p.replaced = append(p.replaced, pw)
		}
		change["newPassword"] = with
		body, _ = json.Marshal(change)
	}
	p.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	p.next.ServeHTTP(w, r)
}

// TestRotateRootSurvivesKilledPlugin kills the plugin process while a rotation waits for
// the tenant's answer to the password change: once with the change made at the tenant
// (its answer is what is late), once with the change never made. Vault starts the
// plugin again, which settles the rotation, and tokens are served with the secret the
// tenant accepts.
func TestRotateRootSurvivesKilledPlugin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		applied bool // the tenant changes the password before the late answer
	}{
		{"change made, answer late", true},
		{"change never made", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := vaultproc.Children(1, pluginName); err != nil {
				t.Skipf("cannot list processes here: %v", err)
			}
			e := newEnv(t, 3600, withAuditLog())
			e.configure()
			e.readToken("token", nil)
			original := e.tenant.secret
			vaultPID := e.vault.proc.Pid()
			pluginFile := pluginName + "-" + versionV1
			pids, err := vaultproc.Children(vaultPID, pluginFile)
			if err != nil || len(pids) != 1 {
				t.Fatalf("plugin processes under Vault (pid %d): %v (%v), want one", vaultPID, pids, err)
			}
			oldPID := pids[0]

			e.tenant.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Times: 1, Delay: 10 * time.Second, ApplyFirst: tc.applied})
			type result struct {
				sec  *api.Secret
				err  error
				took time.Duration
			}
			done := make(chan result, 1)
			go func() {
				start := time.Now()
				sec, err := e.rotateRoot(e.ctx)
				done <- result{sec, err, time.Since(start)}
			}()

			// The change has reached the tenant (and, if applied, been made) and its
			// answer is being held back: the plugin dies now.
			waitFor(t, 20*time.Second, "the password change to reach the tenant", func() bool {
				return len(passwordChanges(e.tenant.emu.Requests())) == 1
			})
			if tc.applied && e.tenant.emu.ClientSecretIs(clientID, original) {
				t.Fatal("the tenant still accepts the original secret after the applied change")
			}
			refusedBefore := e.tenant.emu.Stats().TokenErrors
			killedAt := time.Now()
			if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
				t.Fatalf("killing the plugin (pid %d): %v", oldPID, err)
			}
			var r result
			select {
			case r = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("config/rotate-root had not returned 30s after the plugin was killed")
			}
			if r.err != nil {
				msg := r.err.Error()
				var re *api.ResponseError
				if errors.As(r.err, &re) {
					msg = strings.Join(re.Errors, " ")
				}
				noSecretsIn(t, e, "the rotate-root error", msg)
				// A 500 when Vault gives up on the dead plugin. When Vault instead runs the
				// request again on the restarted plugin, that run settles first and, with
				// the change never made, finds the rotation pending: a 409.
				rerun := re != nil && re.StatusCode == http.StatusConflict && !tc.applied && strings.Contains(msg, "not settled")
				if (re == nil || re.StatusCode != http.StatusInternalServerError) && !rerun {
					t.Errorf("config/rotate-root failed with %v, want a 500 from Vault (or, run again on the restarted plugin, a 409 for the pending rotation)", r.err)
				}
				t.Logf("config/rotate-root failed %s after the kill (%s in all): %s", time.Since(killedAt).Round(time.Millisecond), r.took.Round(time.Millisecond), msg)
			} else {
				noSecretsIn(t, e, "the rotate-root response", r.sec)
				t.Logf("config/rotate-root succeeded %s after the kill (%s in all): Vault restarted the plugin and ran the request again", time.Since(killedAt).Round(time.Millisecond), r.took.Round(time.Millisecond))
			}

			// Vault reloads a plugin when a request finds it shut down, which it knows
			// once it has reaped the process; a request sent before that fails on the
			// dead socket (a 500 "connection refused" from Vault). Wait for the reaping.
			waitFor(t, 10*time.Second, "Vault to reap the killed plugin", func() bool {
				return errors.Is(syscall.Kill(oldPID, 0), syscall.ESRCH)
			})
			time.Sleep(100 * time.Millisecond)

			// A token read through Vault: served by a new plugin process, which settled
			// the rotation when it started.
			e.readToken("token", nil)
			pids, err = vaultproc.Children(vaultPID, pluginFile)
			if err != nil || len(pids) != 1 || pids[0] == oldPID {
				t.Errorf("plugin processes under Vault after the read: %v (%v); want one new one (the killed one was %d)", pids, err, oldPID)
			}
			waitForLogLine(t, e, "[WARN]", "settling an unfinished rotation")
			// The new process settled before it served the read: had the read gone to the
			// tenant with a secret it no longer accepts, the tenant would have refused it.
			// The change's answer never came, so settling tries first the secret most
			// likely to work, the current one: the tenant refuses it once when the change
			// was made (and then takes the new one), and not at all when it was not.
			// Vault may also run the interrupted rotate-root once more on the new process
			// (it retries a request once after a plugin restart); that run settles in the
			// same order, or finds the rotation settled or checked moments ago, so it adds
			// no refusal.
			wantRefused := map[bool]int64{true: 1, false: 0}[tc.applied]
			if got := e.tenant.emu.Stats().TokenErrors - refusedBefore; r.err != nil && got != wantRefused {
				t.Errorf("the tenant refused %d token requests after the kill, want %d", got, wantRefused)
			}

			changes := passwordChanges(e.tenant.emu.Requests())
			accepted := original
			for _, ch := range changes {
				if e.tenant.emu.ClientSecretIs(clientID, ch.new) {
					accepted = ch.new
				}
			}
			t.Logf("the tenant received %d password changes and made %d", len(changes), e.tenant.emu.Stats().PasswordChanges)
			switch {
			case !e.tenant.emu.ClientSecretIs(clientID, accepted):
				t.Error("the tenant accepts neither the original secret nor any secret a change sent")
			case tc.applied && accepted == original:
				t.Error("the tenant accepts the original secret after the applied change")
			case !tc.applied && r.err != nil && accepted != original:
				t.Error("the change was never made, yet the tenant no longer accepts the original secret")
			}
			if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(accepted) {
				t.Error("the token read after the restart did not authenticate with the secret the tenant accepts")
			}
			// When the tenant still takes the original secret, the new one it refused is
			// kept, pending, for a grace period in case a late change lands
			// (docs/rotation.md, "Recovering"); otherwise the rotation is settled.
			cfg := readRotationConfig(t, e)
			wantState := map[bool]string{true: "pending", false: "ok"}[accepted == original]
			if cfg["rotation_state"] != wantState {
				t.Errorf("config rotation_state = %v, want %s", cfg["rotation_state"], wantState)
			}
			if _, ok := cfg["rotation_pending_since"]; ok != (wantState == "pending") {
				t.Errorf("config rotation_pending_since = %v with rotation_state %v", cfg["rotation_pending_since"], cfg["rotation_state"])
			}
			if (accepted != original) != (cfg["last_vault_rotation"] != nil) {
				t.Errorf("config last_vault_rotation = %v, yet the tenant %s the original secret", cfg["last_vault_rotation"],
					map[bool]string{true: "accepts", false: "no longer accepts"}[accepted == original])
			}
			t.Logf("after the restart: rotation_state=%v last_vault_rotation=%v last_rotation_error=%q",
				cfg["rotation_state"], cfg["last_vault_rotation"], stringField(cfg, "last_rotation_error"))
			// And the next read still works.
			e.readToken("token", nil)
		})
	}
}

// TestScheduledRotation lets the engine's own timer (Vault Community Edition has no
// rotation manager) rotate every 6s while tokens are read every 500ms, then turns the
// schedule off.
func TestScheduledRotation(t *testing.T) {
	t.Parallel()
	const (
		period = 6 * time.Second
		// The window ends half a period after the third due time, so the count is 3
		// however late each rotation runs, short of half a period.
		window = 3*period + period/2
		// After the schedule is off, this long must pass without a rotation.
		quiet = 8 * time.Second
	)
	e := newEnv(t, 3600, withAuditLog())
	c := e.client

	data := e.tenant.configData()
	data["rotation_period"] = period.String()
	configuredAt := time.Now()
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing the config with rotation_period: %v", err)
	}
	cfg := readRotationConfig(t, e)
	if next, err := time.Parse(time.RFC3339, stringField(cfg, "next_vault_rotation")); err != nil ||
		next.Before(configuredAt.Add(period-time.Second)) || next.After(time.Now().Add(period+time.Second)) {
		t.Errorf("next_vault_rotation = %v (%v), want about %s after the config write", cfg["next_vault_rotation"], err, period)
	}

	// A period and a cron schedule together are refused.
	_, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{
		"rotation_period": "1h", "rotation_schedule": "0 * * * *",
	})
	if re := responseError(t, err); re.StatusCode != http.StatusBadRequest ||
		!strings.Contains(strings.Join(re.Errors, " "), "rotation_schedule") || !strings.Contains(strings.Join(re.Errors, " "), "rotation_period") {
		t.Errorf("a write of rotation_period with rotation_schedule: %d %q, want a 400 naming both", re.StatusCode, re.Errors)
	}

	reads := readEvery(t, e, 500*time.Millisecond, configuredAt.Add(window))
	changes := passwordChanges(e.tenant.emu.Requests())
	stats := e.tenant.emu.Stats()
	var offsets []string
	for i, ch := range changes {
		offsets = append(offsets, ch.at.Sub(configuredAt).Round(time.Millisecond).String())
		if i > 0 {
			gap := ch.at.Sub(changes[i-1].at)
			t.Logf("rotation %d came %s after rotation %d", i+1, gap.Round(time.Millisecond), i)
			if gap < 5*time.Second {
				t.Errorf("rotations %d and %d came %s apart, under the 5s minimum period", i, i+1, gap)
			}
		}
	}
	t.Logf("%d token reads in %s, all served; password changes at %v after the config write", reads, window, offsets)
	want := int(window / period)
	if len(changes) != want || stats.PasswordChanges != int64(want) {
		t.Errorf("in %s with rotation_period %s the tenant received %d password changes and made %d, want %d",
			window, period, len(changes), stats.PasswordChanges, want)
	}
	for i, ch := range changes {
		if due := configuredAt.Add(time.Duration(i+1) * period); ch.at.Before(due) {
			t.Errorf("rotation %d came %s before its due time", i+1, due.Sub(ch.at))
		}
	}
	if e.tenant.emu.ClientSecretIs(clientID, e.tenant.secret) {
		t.Error("the tenant still accepts the original secret")
	}
	if len(changes) > 0 && !e.tenant.emu.ClientSecretIs(clientID, changes[len(changes)-1].new) {
		t.Error("the tenant does not accept the last rotation's secret")
	}

	// Off: no more rotations.
	if _, err := c.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"disable_automated_rotation": true}); err != nil {
		t.Fatalf("writing disable_automated_rotation: %v", err)
	}
	cfg = readRotationConfig(t, e)
	if cfg["next_vault_rotation"] != nil || cfg["disable_automated_rotation"] != true {
		t.Errorf("after disable_automated_rotation: next_vault_rotation=%v disable_automated_rotation=%v, want null and true",
			cfg["next_vault_rotation"], cfg["disable_automated_rotation"])
	}
	before := e.tenant.emu.Stats().PasswordChanges
	readEvery(t, e, 500*time.Millisecond, time.Now().Add(quiet))
	if got := e.tenant.emu.Stats().PasswordChanges - before; got != 0 {
		t.Errorf("%d rotations in the %s after disable_automated_rotation", got, quiet)
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "ok" {
		t.Errorf("rotation_state = %v, want ok", cfg["rotation_state"])
	}
}

// rotateRoot calls config/rotate-root as "vault write -f" does.
func (e *env) rotateRoot(ctx context.Context) (*api.Secret, error) {
	return e.client.Logical().WriteWithContext(ctx, mountPath+"/config/rotate-root", nil)
}

// auditText is the audit log so far.
func (v *vaultServer) auditText(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(v.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// readEvery reads a token every interval until the deadline, each read a success with a
// token the tenant issued, and returns how many it made.
func readEvery(t *testing.T, e *env, interval time.Duration, deadline time.Time) int {
	t.Helper()
	n := 0
	for time.Now().Before(deadline) {
		e.readToken("token", nil)
		n++
		time.Sleep(min(interval, time.Until(deadline)))
	}
	return n
}

// passwordChange is one ChangeUserPassword call as the tenant received it.
type passwordChange struct {
	at          time.Time
	old, new    string
	bearerScope string // the scope claim of the bearer token
}

func passwordChanges(reqs []emulator.Request) []passwordChange {
	var out []passwordChange
	for _, r := range reqs {
		if !strings.EqualFold(strings.TrimSuffix(r.Path, "/"), changePasswordPath) {
			continue
		}
		var body struct {
			Old string `json:"oldPassword"`
			New string `json:"newPassword"`
		}
		_ = json.Unmarshal(r.Body, &body)
		ch := passwordChange{at: r.Time, old: body.Old, new: body.New}
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			if parts := strings.Split(tok, "."); len(parts) == 3 {
				if payload, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
					var claims jwtClaims
					if json.Unmarshal(payload, &claims) == nil {
						ch.bearerScope = claims.Scope
					}
				}
			}
		}
		out = append(out, ch)
	}
	return out
}

func basicAuth(secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(clientID+":"+secret))
}

// readRotationConfig reads the config and checks the raw response for secrets.
func readRotationConfig(t *testing.T, e *env) map[string]any {
	t.Helper()
	raw, err := e.client.Logical().ReadRawWithContext(e.ctx, mountPath+"/config")
	if err != nil {
		t.Fatalf("reading the config: %v", err)
	}
	body, err := io.ReadAll(raw.Body)
	raw.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	noSecretsIn(t, e, "the config read", string(body))
	sec, err := api.ParseSecret(strings.NewReader(string(body)))
	if err != nil || sec == nil {
		t.Fatalf("parsing the config read: %v", err)
	}
	return sec.Data
}

// secretField matches response fields whose name says they hold a secret.
var secretField = regexp.MustCompile(`(?i)secret|password$|passwd|access_token|refresh_token|bearer|credential`)

// noSecretsIn fails the test if v, a response or its text, holds any form of any secret
// the test knows of (the client secrets, every password sent to the tenant, every token
// it issued), or a field named like a secret other than client_secret_set.
func noSecretsIn(t *testing.T, e *env, what string, v any) {
	t.Helper()
	var text string
	switch v := v.(type) {
	case string:
		text = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		text = string(b)
	}
	for _, f := range newScanner(e.tenant.secrets()).findings([]byte(text), nil) {
		t.Errorf("%s contains %s, %s (length %d, sha256 %s)", what, f.secret, f.form, f.length, f.hash)
	}
	var doc any
	if json.Unmarshal([]byte(text), &doc) == nil {
		walkKeys(doc, func(k string) {
			if k != "client_secret_set" && secretField.MatchString(k) {
				t.Errorf("%s has a field %q", what, k)
			}
		})
	}
}

func walkKeys(v any, f func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			f(k)
			walkKeys(x, f)
		}
	case []any:
		for _, x := range v {
			walkKeys(x, f)
		}
	}
}

func stringField(data map[string]any, name string) string {
	s, _ := data[name].(string)
	return s
}

// waitFor polls cond every 20ms until it holds, or fails the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
