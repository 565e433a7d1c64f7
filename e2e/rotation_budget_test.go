//go:build unix

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/common/expfmt"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The failed-login budget and unsettled rotations, in a real Vault against the tenant
// emulator. Each test here failed at 6f4f9f3, for the reason its comment names.

// defaultMaxFailedLogins is the engine's default max_failed_logins.
const defaultMaxFailedLogins = 3

// retryingClient is a root client with vault/api's default retries (2, on 5xx and
// 429), as the CLI, Agent and most applications use it: an answer that a client
// retries is one more call to the tenant per retry.
func retryingClient(t *testing.T, e *env) *api.Client {
	t.Helper()
	return newClient(t, e.vault.addr, e.vault.token, func(c *api.Config) { c.MaxRetries = 2 })
}

// TestFailedLoginBudgetUnderAgentLoad: the service user's password is changed at the
// tenant behind the engine's back, and Agent-like clients (vault/api, retries on) read
// tokens 10 times a second for 3 seconds. The tenant, which locks the user at one failed
// login more than the engine's default budget, sees at most max_failed_logins refused
// token requests and never locks the user; the reads after those get a 400 at once that
// names the budget, without a tenant call; a config read shows the count and the next
// attempt; the count survives a plugin reload; and a config write of the secret the
// tenant accepts resets it, after which reads are served.
//
// At 6f4f9f3 there was no budget: every read went to the tenant with the refused
// secret, about 30 refused token requests, and the tenant locked the user at the
// fourth.
func TestFailedLoginBudgetUnderAgentLoad(t *testing.T) {
	t.Parallel()
	const budget = defaultMaxFailedLogins
	e := newEnv(t, 3600, withTenantConfig(func(c *emulator.Config) {
		c.Lockout = &emulator.LockoutPolicy{Threshold: budget + 1, Window: 30 * time.Minute, Duration: time.Hour}
	}))
	e.configure() // max_failed_logins and failed_login_window at their defaults
	e.readToken("token", nil)
	if cfg := readRotationConfig(t, e); fmt.Sprint(cfg["max_failed_logins"]) != fmt.Sprint(budget) || fmt.Sprint(cfg["failed_logins"]) != "0" {
		t.Errorf("config read: max_failed_logins=%v failed_logins=%v, want %d and 0", cfg["max_failed_logins"], cfg["failed_logins"], budget)
	}

	// An administrator changes the service user's password at the tenant.
	changed := "E2e:%40-changed-" + randomHex(t, 16)
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"the password an administrator set at the tenant", changed}}
	})
	e.tenant.control(t, http.MethodPost, "/_emulator/client_secret", map[string]string{"app_id": appID, "client_id": clientID, "secret": changed}, nil)
	before := e.tenant.clientStats(t)

	// The load: a read every 100ms, each from its own client as Agents would, for 3s.
	agent := retryingClient(t, e)
	start := time.Now()
	answers, loadTook := agentLoad(t, e, agent, 100*time.Millisecond, 3*time.Second)

	after := e.tenant.clientStats(t)
	refused := after.TokenErrors - before.TokenErrors
	budgetAnswers, slowest := 0, time.Duration(0)
	for _, a := range answers {
		noSecretsIn(t, e, "a token read's error", a.msg)
		budgetAnswer := strings.Contains(a.msg, "no login attempt") && strings.Contains(a.msg, "max_failed_logins")
		switch {
		case a.status != http.StatusBadRequest:
			// A 5xx or 429 would be retried by the client, each retry a failed login.
			t.Errorf("a token read with the refused secret: HTTP %d %q, want a 400", a.status, a.msg)
		case budgetAnswer:
			budgetAnswers++
			slowest = max(slowest, a.took)
		}
	}
	t.Logf("%d reads in %s: the tenant got %d token requests and refused %d; %d answers named the budget, the slowest in %s",
		len(answers), loadTook.Round(time.Millisecond), after.TokenRequests-before.TokenRequests, refused, budgetAnswers, slowest.Round(time.Millisecond))
	if refused > budget || after.FailedLogins-before.FailedLogins > budget {
		t.Errorf("the tenant refused %d token requests (%d failed logins), want at most max_failed_logins=%d", refused, after.FailedLogins-before.FailedLogins, budget)
	}
	if refused < 1 {
		t.Errorf("the tenant refused no token request; the load did not reach it")
	}
	if want := len(answers) - int(refused); budgetAnswers != want {
		t.Errorf("%d of %d reads were answered with the spent budget, want all but the %d the tenant refused", budgetAnswers, len(answers), refused)
	}
	if slowest > 2*time.Second {
		t.Errorf("a read answered with the spent budget took %s, want an answer at once", slowest)
	}
	e.tenant.mustNotBeLocked(t)

	// One more read: a 400 at once, and the tenant hears nothing of it.
	budgetRead := func(what string) {
		t.Helper()
		requests := e.tenant.clientStats(t).TokenRequests
		began := time.Now()
		_, err := agent.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		took := time.Since(began)
		re := responseError(t, err)
		msg := strings.Join(re.Errors, " ")
		noSecretsIn(t, e, "a token read's error", msg)
		if re.StatusCode != http.StatusBadRequest || !strings.Contains(msg, "no login attempt") || !strings.Contains(msg, "max_failed_logins=3") {
			t.Errorf("%s: HTTP %d %q, want a 400 that names the budget", what, re.StatusCode, msg)
		}
		if took > 2*time.Second {
			t.Errorf("%s took %s, want an answer at once", what, took)
		}
		if got := e.tenant.clientStats(t).TokenRequests - requests; got != 0 {
			t.Errorf("%s made %d token requests at the tenant, want none", what, got)
		}
	}
	budgetRead("a read with the budget spent")

	// The config read says how many, since when, and when the next attempt may be made.
	checkCount := func(what string) {
		t.Helper()
		cfg := readRotationConfig(t, e)
		if got := intField(t, cfg, "failed_logins"); got != budget {
			t.Errorf("%s: config failed_logins = %d, want %d", what, got, budget)
		}
		if got := intField(t, cfg, "failed_logins_total"); got != budget {
			t.Errorf("%s: config failed_logins_total = %d, want %d", what, got, budget)
		}
		next, err := time.Parse(time.RFC3339, stringField(cfg, "next_login_attempt"))
		if err != nil || next.Before(start.Add(29*time.Minute)) || next.After(time.Now().Add(31*time.Minute)) {
			t.Errorf("%s: config next_login_attempt = %v (%v), want about failed_login_window (30m) after the first refusal", what, cfg["next_login_attempt"], err)
		}
		if stringField(cfg, "failed_logins_since") == "" || stringField(cfg, "last_failed_login") == "" {
			t.Errorf("%s: config failed_logins_since = %v, last_failed_login = %v, want both", what, cfg["failed_logins_since"], cfg["last_failed_login"])
		}
	}
	checkCount("after the load")

	// The metrics count the refusals and the reads the budget answered.
	status, _, body := rawGet(t, e, e.client, mountPath+"/metrics")
	e.guard.addTexts(func() []checkedText { return []checkedText{{name: "the metrics response", data: body}} })
	if status != http.StatusOK {
		t.Fatalf("reading %s/metrics: HTTP %d", mountPath, status)
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the metrics are not in the Prometheus text format: %v", err)
	}
	if got, ok := metricValue(families["cyberark_failed_login"], "call", "read"); !ok || got != float64(refused) {
		t.Errorf(`cyberark_failed_login{call="read"} = %v (present %t), want %d`, got, ok, refused)
	}
	if got, ok := metricValue(families["cyberark_login_budget_spent"], "call", "read"); !ok || got != float64(budgetAnswers+1) {
		t.Errorf(`cyberark_login_budget_spent{call="read"} = %v (present %t), want %d`, got, ok, budgetAnswers+1)
	}
	if f := families["cyberark_failed_logins_in_window"]; f == nil || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetGauge().GetValue() != budget {
		t.Errorf("cyberark_failed_logins_in_window = %v, want a gauge at %d", f, budget)
	}

	// The count is in storage: a reload of the plugin keeps it.
	if _, err := e.client.Sys().ReloadPluginWithContext(e.ctx, &api.ReloadPluginInput{Mounts: []string{mountPath + "/"}}); err != nil {
		t.Fatalf("reloading the plugin: %v", err)
	}
	checkCount("after a plugin reload")
	budgetRead("a read after the reload")
	e.tenant.mustNotBeLocked(t)

	// The operator writes the secret the tenant accepts: verified even with the budget
	// spent, and the count starts again.
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"client_secret": changed}); err != nil {
		t.Fatalf("writing the secret the tenant accepts: %v", err)
	}
	cfg := readRotationConfig(t, e)
	if intField(t, cfg, "failed_logins") != 0 || intField(t, cfg, "failed_logins_total") != 0 || cfg["next_login_attempt"] != nil {
		t.Errorf("after a verified write: failed_logins=%v failed_logins_total=%v next_login_attempt=%v, want 0, 0 and none",
			cfg["failed_logins"], cfg["failed_logins_total"], cfg["next_login_attempt"])
	}
	for range 2 {
		e.readToken("token", nil)
		if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(changed) {
			t.Error("a read after the write did not authenticate with the written secret")
		}
	}
	e.tenant.mustNotBeLocked(t)
	if st := e.tenant.clientStats(t); st.Lockouts != 0 || st.FailedLogins-before.FailedLogins > budget {
		t.Errorf("in all: %d failed logins since the change, %d lockouts; want at most %d and none", st.FailedLogins-before.FailedLogins, st.Lockouts, budget)
	}
}

// holdNextChange has the tenant take the next password change in without answering or
// making it, until the test lands it: a change whose outcome the engine cannot know.
func holdNextChange(t *testing.T, e *env) {
	t.Helper()
	e.tenant.control(t, http.MethodPost, "/_emulator/faults", map[string]any{"endpoint": "change_password", "times": 1, "hold": true}, nil)
}

// heldChanges is how many changes the tenant holds.
func heldChanges(t *testing.T, e *env) int {
	t.Helper()
	var held struct {
		Held int `json:"held"`
	}
	e.tenant.control(t, http.MethodGet, "/_emulator/held_changes", nil, &held)
	return held.Held
}

// unsettledRotation runs a rotate-root whose change the tenant holds: the answer is
// lost and the change not made, so the rotation is pending, which is a 409. It returns
// the secret the held change sets.
func unsettledRotation(t *testing.T, e *env) string {
	t.Helper()
	holdNextChange(t, e)
	_, err := e.rotateRoot(e.ctx)
	re := responseError(t, err)
	msg := strings.Join(re.Errors, " ")
	noSecretsIn(t, e, "the rotate-root error", msg)
	if re.StatusCode != http.StatusConflict || !strings.Contains(msg, "not settled") {
		t.Errorf("config/rotate-root with the change's answer lost: HTTP %d %q, want a 409 saying the rotation is not settled", re.StatusCode, msg)
	}
	if n := heldChanges(t, e); n != 1 {
		t.Fatalf("the tenant holds %d changes, want 1", n)
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "pending" {
		t.Fatalf("config rotation_state = %v after a change whose answer was lost, want pending", cfg["rotation_state"])
	}
	pending := lastNewPassword(t, e)
	if !e.tenant.emu.ClientSecretIs(clientID, e.tenant.secret) || e.tenant.emu.ClientSecretIs(clientID, pending) {
		t.Fatal("the held change was made")
	}
	return pending
}

// TestRotateRootWhilePendingIsAConflict: a rotation whose change the tenant took in
// without answering (and has not made) is pending. That rotate-root, and every
// rotate-root after it while the engine's last check is recent, answers 409, which no
// Vault client retries, and asks the tenant nothing: no token request, no change.
//
// At 6f4f9f3 an unsettled outcome was a 502, which vault/api retries, and each
// rotate-root while pending checked both secrets at the tenant first: token requests,
// some of them failed logins, on every call and every retry.
func TestRotateRootWhilePendingIsAConflict(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	unsettledRotation(t, e)

	operator := retryingClient(t, e)
	before := e.tenant.clientStats(t)
	mgmt := e.tenant.emu.Stats().ManagementRequests
	for i := range 5 {
		_, err := operator.Logical().WriteWithContext(e.ctx, mountPath+"/config/rotate-root", nil)
		re := responseError(t, err)
		msg := strings.Join(re.Errors, " ")
		noSecretsIn(t, e, "the rotate-root error", msg)
		if re.StatusCode != http.StatusConflict || !strings.Contains(msg, "not settled") {
			t.Errorf("rotate-root #%d while pending: HTTP %d %q, want a 409 saying the rotation is not settled", i+1, re.StatusCode, msg)
		}
	}
	after := e.tenant.clientStats(t)
	if got := after.TokenRequests - before.TokenRequests; got != 0 {
		t.Errorf("5 rotate-roots while pending made %d token requests at the tenant (%d refused), want none", got, after.TokenErrors-before.TokenErrors)
	}
	if got := e.tenant.emu.Stats().ManagementRequests - mgmt; got != 0 {
		t.Errorf("5 rotate-roots while pending sent %d password changes, want none", got)
	}
	if n := heldChanges(t, e); n != 1 {
		t.Errorf("the tenant holds %d changes, want the 1 it held", n)
	}
	// Reads are served meanwhile, with the secret the tenant accepts.
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(e.tenant.secret) {
		t.Error("a read while pending did not authenticate with the current secret")
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "pending" {
		t.Errorf("config rotation_state = %v, want pending", cfg["rotation_state"])
	}
}

// TestWriteOfCurrentSecretKeepsPendingRotation: a rotation's change is held by the
// tenant (answer lost, change not made yet); the operator writes the secret the tenant
// accepts now, which verification accepts. The pending secret must survive that write,
// since the change may still land: the rotation stays pending. When the tenant then
// makes the change, the next read is refused with the written secret, settles at once
// (the written secret worked at the last check, so its refusal is news), finds the
// pending secret accepted and is served with it; the rotation is settled.
//
// At 6f4f9f3 a written secret ended the rotation and dropped the pending secret: the
// state was ok after the write, and once the change landed the engine held no secret
// the tenant accepts.
func TestWriteOfCurrentSecretKeepsPendingRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	current := e.tenant.secret
	pending := unsettledRotation(t, e)

	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/config", map[string]any{"client_secret": current}); err != nil {
		t.Fatalf("writing the current secret (verified): %v", err)
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "pending" {
		t.Fatalf("config rotation_state = %v after a write of the current secret while the change may still land, want pending (last_rotation_error %q)",
			cfg["rotation_state"], stringField(cfg, "last_rotation_error"))
	}
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(current) {
		t.Error("a read after the write did not authenticate with the written secret")
	}

	// The tenant makes the held change.
	var landed struct {
		Landed int `json:"landed"`
	}
	e.tenant.control(t, http.MethodPost, "/_emulator/held_changes/land", nil, &landed)
	if landed.Landed != 1 || !e.tenant.emu.ClientSecretIs(clientID, pending) || e.tenant.emu.ClientSecretIs(clientID, current) {
		t.Fatalf("landing the held change: %d landed, want 1 and the tenant to accept the pending secret only", landed.Landed)
	}

	// The next read (or, at worst, the one after) is served with the pending secret.
	landedAt := time.Now()
	var served *api.Secret
	for attempt := 1; served == nil; attempt++ {
		s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/token")
		if err == nil && s != nil {
			served = s
			t.Logf("read #%d after the landing was served, %s after it", attempt, time.Since(landedAt).Round(time.Millisecond))
			break
		}
		re := responseError(t, err)
		msg := strings.Join(re.Errors, " ")
		noSecretsIn(t, e, "a token read's error", msg)
		t.Logf("read #%d after the landing: HTTP %d %q", attempt, re.StatusCode, msg)
		if re.StatusCode != http.StatusBadRequest {
			t.Errorf("read #%d after the landing: HTTP %d, want a 400 if refused", attempt, re.StatusCode)
		}
		if attempt >= 2 || time.Since(landedAt) > 5*time.Second {
			t.Fatalf("no read was served after the change landed (%d reads, %s); config rotation_state = %v",
				attempt, time.Since(landedAt).Round(time.Millisecond), readRotationConfig(t, e)["rotation_state"])
		}
	}
	e.tenant.mustHaveIssued(t, accessToken(t, served))
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(pending) {
		t.Error("the read served after the landing did not authenticate with the secret the tenant accepts")
	}
	cfg := readRotationConfig(t, e)
	if cfg["rotation_state"] != "ok" || cfg["last_vault_rotation"] == nil || cfg["rotation_pending_since"] != nil {
		t.Errorf("config after the settle: rotation_state=%v last_vault_rotation=%v rotation_pending_since=%v, want ok, a time and none",
			cfg["rotation_state"], cfg["last_vault_rotation"], cfg["rotation_pending_since"])
	}
	e.readToken("token", nil)
	if got := e.tenant.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(pending) {
		t.Error("the next read did not authenticate with the secret the tenant accepts")
	}
}

// control calls one of the emulator's control endpoints over HTTPS, as a script that
// steers a running tenant would, and decodes its JSON answer into out when given.
func (tn *tenant) control(t testing.TB, method, path string, body, out any) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(tn.caPEM)) {
		t.Fatal("the tenant's CA certificate does not parse")
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer transport.CloseIdleConnections()
	hc := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, tn.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
}

// clientStats are the tenant's counters for the engine's client ID.
func (tn *tenant) clientStats(t testing.TB) emulator.ClientStats {
	t.Helper()
	var st emulator.ClientStats
	tn.control(t, http.MethodGet, "/_emulator/client_stats?client_id="+url.QueryEscape(clientID), nil, &st)
	return st
}

// mustNotBeLocked fails the test if the tenant has locked the service user out.
func (tn *tenant) mustNotBeLocked(t testing.TB) {
	t.Helper()
	var locked struct {
		Locked *bool `json:"locked"`
	}
	tn.control(t, http.MethodGet, "/_emulator/locked?client_id="+url.QueryEscape(clientID), nil, &locked)
	switch {
	case locked.Locked == nil:
		t.Error("the tenant's lock state has no locked field")
	case *locked.Locked:
		t.Error("the tenant locked the service user out")
	}
	if st := tn.clientStats(t); st.Lockouts != 0 {
		t.Errorf("the tenant locked the service user out %d times", st.Lockouts)
	}
}
