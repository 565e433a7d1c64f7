//go:build unix

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// TestLeaseFreeAgentFleet runs a small fleet of Vault Agents on one lease-free reuse
// role. Tokens live 20s and the role keeps a 6s floor (0.3 of the lifetime), so the
// engine hands each token out for 14s and names the rest of that window as ttl. Agent
// (consul-template's leaseCheckWait) reads again ttl+1 seconds later, when the engine
// has a newer token and the old one still has 5s to live: room for a slow Agent on a
// loaded machine. The test watches every Agent's file: it must always hold a token that
// has not expired, each Agent must move to a newer token before the old one expires,
// the fleet must cost about one grant per reuse window, and the reads must leave no
// lease behind.
func TestLeaseFreeAgentFleet(t *testing.T) {
	t.Parallel()
	const (
		expiresIn = 20
		window    = 14 // expiresIn less the floor: how long one token is handed out
		agents    = 3
		// watch is how long the files are watched after every Agent rendered once:
		// three windows, so each Agent must refresh at least twice.
		watch = 3 * window * time.Second
	)
	e := newEnv(t, expiresIn)
	e.configure()
	e.writeRole("fleet", map[string]any{
		"scopes": "read", "token_reuse": true, "lease_free": true,
		"reuse_min_remaining": 0, "reuse_min_fraction": 0.3,
	})
	// A leased role beside it, so the lease lookup below is shown to find leases where
	// there are some.
	e.writeRole("leased", map[string]any{"scopes": "read", "token_reuse": true})

	direct := e.readToken("token/fleet", nil)
	if direct.LeaseID != "" || direct.LeaseDuration != 0 {
		t.Fatalf("a lease-free read answered with lease %q for %ds", direct.LeaseID, direct.LeaseDuration)
	}
	if ttl, period := intField(t, direct.Data, "ttl"), intField(t, direct.Data, "rotation_period"); ttl < 0 || ttl > window || period != window {
		t.Fatalf("ttl %d, rotation_period %d; want 0..%d and %d", ttl, period, window, window)
	}

	agentToken := leaseFreeAgentToken(t, e)
	grantsBefore := e.tenant.emu.Stats().Grants
	var files []string
	var logs []string
	for i := range agents {
		out, logPath := startLeaseFreeAgent(t, e, fmt.Sprintf("agent-%d", i), agentToken)
		files = append(files, out)
		logs = append(logs, logPath)
	}

	// seen[i] are the distinct tokens Agent i rendered, in order.
	seen := make([][]string, agents)
	firstAllAt := time.Time{}
	var checks int
	for deadline := time.Now().Add(30 * time.Second); ; {
		now := time.Now()
		if firstAllAt.IsZero() && now.After(deadline) {
			t.Fatalf("not every Agent rendered a token within 30s (rendered: %d, %d, %d)", len(seen[0]), len(seen[1]), len(seen[2]))
		}
		if !firstAllAt.IsZero() && now.Sub(firstAllAt) > watch {
			break
		}
		for i, out := range files {
			data, err := os.ReadFile(out) //nolint:gosec // an Agent's output in the test's temporary directory
			if err != nil {
				continue // not rendered yet
			}
			tok := strings.TrimSpace(string(data))
			if tok == "" {
				continue
			}
			checks++
			// The file is read after now was taken: the token must outlive that instant.
			if exp := time.Unix(parseClaims(t, tok).Exp, 0); !now.Before(exp) {
				t.Fatalf("agent %d's file holds a token that expired %s before it was read", i, now.Sub(exp).Round(time.Millisecond))
			}
			if n := len(seen[i]); n == 0 || seen[i][n-1] != tok {
				e.tenant.mustHaveIssued(t, tok)
				seen[i] = append(seen[i], tok)
			}
		}
		if firstAllAt.IsZero() && len(seen[0]) > 0 && len(seen[1]) > 0 && len(seen[2]) > 0 {
			// Grants are counted from here, so that a slow start of the Agents does
			// not count against the fleet.
			firstAllAt = now
			grantsBefore = e.tenant.emu.Stats().Grants
		}
		time.Sleep(20 * time.Millisecond)
	}
	grants := e.tenant.emu.Stats().Grants - grantsBefore

	distinct := map[string]bool{}
	for i, toks := range seen {
		// Three windows of watching: a first token and at least two refreshes.
		if len(toks) < 3 {
			t.Errorf("agent %d rendered %d tokens in %s of watching; want at least 3 (it did not read again at ttl+1)", i, len(toks), watch)
		}
		for _, tok := range toks {
			distinct[tok] = true
		}
	}
	t.Logf("%d Agents rendered %d distinct tokens; the tenant made %d grants; %d file checks", agents, len(distinct), grants, checks)
	// Three windows of watching: three tokens' worth, one more where a window's edge
	// falls, one more for the token the first Agent rendered. A grant per Agent read
	// would be several times that.
	if maxGrants := int64(watch/(window*time.Second)) + 2; grants > maxGrants {
		t.Errorf("the fleet made %d grants; want at most %d, about one per %ds window", grants, maxGrants, window)
	}
	for i, logPath := range logs {
		data, err := os.ReadFile(logPath) //nolint:gosec // an Agent's log in the test's temporary directory
		if err != nil {
			t.Fatal(err)
		}
		// consul-template's words when it takes ttl from the data of a leaseless secret.
		if !strings.Contains(string(data), "Found rotation_period") {
			t.Errorf("agent %d's log does not show it scheduling reads from rotation_period and ttl", i)
		}
	}

	// Nothing the fleet read left a lease; a leased read, made now so that its lease
	// (18s) has not ended, does.
	e.readToken("token/leased", nil)
	if n := leaseCount(t, e, mountPath+"/token/fleet/"); n != 0 {
		t.Errorf("sys/leases/lookup lists %d leases under %s/token/fleet/; want none", n, mountPath)
	}
	if n := leaseCount(t, e, mountPath+"/token/leased/"); n != 1 {
		t.Errorf("sys/leases/lookup lists %d leases under %s/token/leased/; want the 1 leased read", n, mountPath)
	}
}

// leaseFreeAgentToken is a Vault token that may read the fleet role and nothing else.
func leaseFreeAgentToken(t *testing.T, e *env) string {
	t.Helper()
	policy := fmt.Sprintf("path %q {\n  capabilities = [\"read\"]\n}\n", mountPath+"/token/fleet")
	if err := e.client.Sys().PutPolicyWithContext(e.ctx, "cyberark-fleet", policy); err != nil {
		t.Fatalf("writing the policy: %v", err)
	}
	s, err := e.client.Auth().Token().CreateWithContext(e.ctx, &api.TokenCreateRequest{
		Policies: []string{"cyberark-fleet"},
		TTL:      "1h",
	})
	if err != nil {
		t.Fatalf("creating the Agents' token: %v", err)
	}
	tok := s.Auth.ClientToken
	e.guard.addSecrets(func() []namedSecret { return []namedSecret{{"the Agents' Vault token", tok}} })
	return tok
}

// startLeaseFreeAgent starts a Vault Agent in its own directory that renders the fleet
// role's token, and returns the rendered file's path and the Agent's log.
func startLeaseFreeAgent(t *testing.T, e *env, name, vaultToken string) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"agent.hcl": `auto_auth {
  method "token_file" {
    config = {
      token_file_path = "vault-token"
    }
  }
}
template_config {
  exit_on_retry_failure = true
}
template {
  source      = "token.tmpl"
  destination = "access-token"
  perms       = "0600"
}
`,
		"token.tmpl":  `{{ with secret "` + mountPath + `/token/fleet" }}{{ .Data.access_token }}{{ end }}`,
		"vault-token": vaultToken,
	}
	for file, content := range files {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "agent.log")
	e.guard.addLog("vault agent "+name, logPath)
	agent, err := vaultproc.Start("vault agent "+name, vaultBin(t), dir,
		vaultproc.ChildEnv(dir, "VAULT_ADDR="+e.vault.addr), logPath,
		"agent", "-config=agent.hcl", "-log-level=debug")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Stop(10*time.Second, t.Logf) })
	return filepath.Join(dir, "access-token"), logPath
}

// leaseCount is how many leases Vault lists under prefix (sys/leases/lookup); a prefix
// with none is a 404, which the client reports as no secret.
func leaseCount(t *testing.T, e *env, prefix string) int {
	t.Helper()
	s, err := e.client.Logical().ListWithContext(e.ctx, "sys/leases/lookup/"+prefix)
	if err != nil {
		t.Fatalf("listing leases under %s: %v", prefix, err)
	}
	if s == nil {
		return 0
	}
	keys, _ := s.Data["keys"].([]any)
	return len(keys)
}
