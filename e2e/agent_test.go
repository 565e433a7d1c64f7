//go:build unix

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// agentExample is the shipped Vault Agent example; the test runs it as shipped.
var agentExample = []string{"agent.hcl", "token.tmpl"}

// TestAgentRefreshesToken runs examples/agent with a Vault Agent from the same Vault
// binary. Tokens live 20s, so leases last 17-18s (a 2s margin, cut to whole seconds)
// and Agent reads a new token about every 16s: the rendered file must change to a new
// token the tenant issued before the old one expires, and each change must cost one
// grant, no more. The JWT's exp is in whole seconds, so the test has about 2s of slack
// on a loaded machine, not less.
func TestAgentRefreshesToken(t *testing.T) {
	t.Parallel()
	const (
		expiresIn = 20
		// tokens is how many distinct tokens the test waits to see rendered: the first
		// and then refreshes.
		tokens = 3
	)
	e := newEnv(t, expiresIn)
	c := e.client
	e.configure()
	e.writeRole("demo", map[string]any{"scopes": "read"})

	// The Agent authenticates with a token limited by the shipped policy.
	policy, err := os.ReadFile(filepath.Join(moduleRoot, "examples", "agent", "policy.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().PutPolicyWithContext(e.ctx, "cyberark-agent", string(policy)); err != nil {
		t.Fatalf("writing the policy: %v", err)
	}
	agentToken, err := c.Auth().Token().CreateWithContext(e.ctx, &api.TokenCreateRequest{
		Policies: []string{"cyberark-agent"},
		TTL:      "1h",
	})
	if err != nil {
		t.Fatalf("creating the Agent's token: %v", err)
	}

	dir := filepath.Join(t.TempDir(), "agent")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range agentExample {
		data, err := os.ReadFile(filepath.Join(moduleRoot, "examples", "agent", name)) //nolint:gosec // a file of the project's Agent example, named in agentExample
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil { //nolint:gosec // a name from agentExample, in the test's temporary directory
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "vault-token"), []byte(agentToken.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	e.guard.addSecrets(func() []namedSecret {
		return []namedSecret{{"the Agent's Vault token", agentToken.Auth.ClientToken}}
	})

	grantsBefore := e.tenant.emu.Stats().Grants
	logPath := filepath.Join(dir, "agent.log")
	e.guard.addLog("vault agent", logPath)
	// The example's address is the usual default; VAULT_ADDR points it at this Vault.
	agent, err := vaultproc.Start("vault agent", vaultBin(t), dir,
		vaultproc.ChildEnv(dir, "VAULT_ADDR="+e.vault.addr), logPath,
		"agent", "-config=agent.hcl", "-log-level=debug")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Stop(10*time.Second, t.Logf) })

	type render struct {
		token  string
		seenAt time.Time
		claims jwtClaims
	}
	var renders []render
	out := filepath.Join(dir, "access-token")
	start := time.Now()
	deadline := start.Add(tokens*expiresIn*time.Second + 30*time.Second)
	for len(renders) < tokens {
		if time.Now().After(deadline) {
			t.Fatalf("saw %d rendered tokens in %s, want %d", len(renders), time.Since(start).Round(time.Second), tokens)
		}
		if agent.Exited() {
			t.Fatalf("vault agent exited: %v", agent.Err())
		}
		time.Sleep(20 * time.Millisecond)
		data, err := os.ReadFile(out) //nolint:gosec // the Agent's output in the test's temporary directory
		if err != nil {
			continue // not rendered yet
		}
		tok := strings.TrimSpace(string(data))
		if tok == "" || len(renders) > 0 && renders[len(renders)-1].token == tok {
			continue
		}
		now := time.Now()
		// consul-template renames the rendered file into place, so a read never sees half
		// a token; one that did would fail to parse here.
		renders = append(renders, render{token: tok, seenAt: now, claims: parseClaims(t, tok)})
		e.tenant.mustHaveIssued(t, tok)
	}
	grants := e.tenant.emu.Stats().Grants - grantsBefore

	for i := 1; i < len(renders); i++ {
		prev, cur := renders[i-1], renders[i]
		expiry := time.Unix(prev.claims.Exp, 0)
		if !cur.seenAt.Before(expiry) {
			t.Errorf("token %d replaced %s after token %d expired", i+1, cur.seenAt.Sub(expiry), i)
		}
		for j := range i {
			if renders[j].token == cur.token {
				t.Errorf("token %d is token %d again", i+1, j+1)
			}
		}
		t.Logf("token %d rendered %s after token %d, %s before its expiry",
			i+1, cur.seenAt.Sub(prev.seenAt).Round(time.Millisecond), i, expiry.Sub(cur.seenAt).Round(time.Millisecond))
	}
	t.Logf("%d grants for %d rendered tokens", grants, len(renders))
	// One grant per rendered token: the first render and each refresh. The count is
	// taken right after the last render, seconds before Agent's next read, so no grant
	// can be in flight: any extra one is a token fetched and thrown away.
	if grants != int64(len(renders)) {
		t.Errorf("the tenant made %d grants while Agent rendered %d tokens; want one grant per token", grants, len(renders))
	}
	// The rendered file is private to the Agent's user, as the example asks.
	if st, err := os.Stat(out); err != nil {
		t.Error(err)
	} else if st.Mode().Perm() != 0o600 {
		t.Errorf("rendered file mode %v, want 0600", st.Mode().Perm())
	}
}
