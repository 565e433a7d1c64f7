// Command demo is scripts/demo.sh (make demo): the engine end to end on this machine,
// with nothing to install by hand. It builds the plugin, serves the tenant emulator
// (internal/emulator) over HTTPS from this process, starts a Vault dev server
// (internal/vaultproc), registers the plugin by SHA-256 and version, mounts and
// configures it, reads a token with the vault CLI, prepares the Vault Agent example,
// prints what to try next, and runs until Ctrl-C (or stops at once with -once).
// Everything it starts is stopped, and its temporary directory removed, when it ends.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

const (
	pluginName = "vault-plugin-secrets-cyberark"
	mount      = "cyberark"
	appID      = "vault-demo"
	clientID   = "svc-vault@demo.cyberark.cloud"
)

type options struct {
	vaultBin   string
	version    string
	port       int
	once       bool
	moduleRoot string
}

func main() {
	var o options
	flag.StringVar(&o.vaultBin, "vault", "", "the Vault `binary` to run")
	flag.StringVar(&o.version, "version", "", "the plugin's `version`, linked in and registered")
	flag.IntVar(&o.port, "port", 8200, "Vault's API `port` if it and the next are free; else a free pair")
	flag.BoolVar(&o.once, "once", false, "stop after printing, instead of waiting for Ctrl-C")
	flag.StringVar(&o.moduleRoot, "module-root", ".", "the repository's root `directory`")
	flag.Parse()
	vaultproc.Main("demo", o.check, func(ctx context.Context) error { return run(ctx, o) })
}

func (o options) check() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	case o.vaultBin == "":
		return errors.New("-vault is required")
	case o.port < 1 || o.port > 65534:
		return fmt.Errorf("-port %d: want 1 to 65534 (the next port is the cluster listener's)", o.port)
	}
	return vaultproc.CheckVersion(o.version)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...)
}

func run(ctx context.Context, o options) error {
	tmp, err := os.MkdirTemp("", "cyberark-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	plugins, agentDir := filepath.Join(tmp, "plugins"), filepath.Join(tmp, "agent")
	for _, d := range []string{plugins, agentDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}

	logf("building %s %s", pluginName, o.version)
	p, err := vaultproc.BuildPlugin(ctx, vaultproc.Build{
		ModuleRoot: o.moduleRoot, Package: "./cmd/" + pluginName, Name: pluginName,
		Version: o.version, PluginDir: plugins,
	})
	if err != nil {
		return err
	}

	logf("starting the CyberArk Identity tenant emulator (app %s, client %s)", appID, clientID)
	tn, err := startTenant(tmp)
	if err != nil {
		return err
	}
	defer tn.srv.Close()

	version, _ := exec.CommandContext(ctx, o.vaultBin, "version").Output() //nolint:gosec // the Vault binary the caller named
	logf("starting a Vault dev server (%s)", strings.TrimSpace(string(version)))
	v, err := vaultproc.StartDev(ctx, vaultproc.DevConfig{Bin: o.vaultBin, Dir: tmp, PluginDir: plugins, Port: o.port})
	if err != nil {
		return err
	}
	defer v.Stop(10*time.Second, logf)
	logf("Vault is at %s", v.Addr)

	logf("registering %s %s by SHA-256 and enabling it at %s/", pluginName, o.version, mount)
	if err := p.Register(ctx, v.Client); err != nil {
		return err
	}
	if err := p.Mount(ctx, v.Client, mount); err != nil {
		return err
	}
	logf("configuring the engine (the write fetches a token to check the settings)")
	writes := []struct {
		path string
		data map[string]any
	}{
		{mount + "/config", map[string]any{
			"tenant_url": tn.url, "app_id": appID, "client_id": clientID, "client_secret": tn.secret,
			"ca_cert": string(tn.caPEM), "scopes": "read,write", "rotation_scopes": "rotate",
		}},
		{mount + "/roles/demo", map[string]any{"scopes": "read", "allowed_scopes": "read,write"}},
	}
	for _, w := range writes {
		if _, err := v.Client.Logical().WriteWithContext(ctx, w.path, w.data); err != nil {
			return fmt.Errorf("writing %s: %w", w.path, err)
		}
	}

	// Through the CLI, as a person would, so that its table is what they will see.
	logf("vault read %s/token/demo", mount)
	read := exec.CommandContext(ctx, o.vaultBin, "read", mount+"/token/demo") //nolint:gosec // the Vault binary the caller named
	read.Env = vaultproc.ChildEnv(filepath.Join(tmp, "home"), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN="+v.Token)
	read.Stdout, read.Stderr = os.Stdout, os.Stderr
	if err := read.Run(); err != nil {
		return fmt.Errorf("vault read %s/token/demo: %w", mount, err)
	}

	if err := prepareAgent(ctx, o.moduleRoot, agentDir, v); err != nil {
		return err
	}
	printNext(o.vaultBin, v, tn, tmp)
	if o.once {
		return nil
	}
	select {
	case <-ctx.Done():
		return nil
	case <-v.Proc.Done():
		exit := v.Proc.Err()
		if exit == nil {
			exit = errors.New("exit status 0")
		}
		tail, _ := os.ReadFile(v.Proc.LogPath())
		if len(tail) > 4096 {
			tail = tail[len(tail)-4096:]
		}
		return fmt.Errorf("vault exited on its own (%w); the end of its log:\n%s", exit, tail)
	}
}

// tenant is the emulator, served over HTTPS from this process.
type tenant struct {
	srv    *http.Server
	url    string
	caPEM  []byte
	caPath string
	secret string
}

func startTenant(dir string) (*tenant, error) {
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	tn := &tenant{secret: "Demo-" + hex.EncodeToString(raw), caPath: filepath.Join(dir, "ca.pem")}
	emu, err := emulator.New(emulator.Config{Apps: []emulator.App{{
		ID:     appID,
		Scopes: []string{"read", "write", "rotate"},
		// Tokens of the rotate scope may change the client's password, as root
		// rotation needs.
		ScopeAPIs: map[string][]string{"rotate": {"UserMgmt/ChangeUserPassword"}},
		Clients:   []emulator.Client{{ID: clientID, Secret: tn.secret}},
	}}})
	if err != nil {
		return nil, err
	}
	ca, err := emulator.NewCA()
	if err != nil {
		return nil, err
	}
	tn.caPEM = ca.CertPEM()
	if err := os.WriteFile(tn.caPath, tn.caPEM, 0o600); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	errLog, err := os.OpenFile(filepath.Join(dir, "emulator.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) //nolint:gosec // in the demo's own directory
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	tn.srv = &http.Server{
		Handler:           emu,
		TLSConfig:         ca.ServerTLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		// The file stays open while the server runs; the process's exit closes it.
		ErrorLog: log.New(errLog, "emulator: ", log.LstdFlags),
	}
	tn.url = "https://" + ln.Addr().String()
	go func() { _ = tn.srv.ServeTLS(ln, "", "") }()
	return tn, nil
}

// prepareAgent readies examples/agent in dir, with a Vault token of its policy, so
// that the printed command runs it.
func prepareAgent(ctx context.Context, root, dir string, v *vaultproc.Dev) error {
	example := filepath.Join(root, "examples", "agent")
	policy, err := os.ReadFile(filepath.Join(example, "policy.hcl")) //nolint:gosec // the repository's own example
	if err != nil {
		return err
	}
	if err := v.Client.Sys().PutPolicyWithContext(ctx, "cyberark-agent", string(policy)); err != nil {
		return fmt.Errorf("writing the Agent's policy: %w", err)
	}
	for _, name := range []string{"agent.hcl", "token.tmpl"} {
		data, err := os.ReadFile(filepath.Join(example, name)) //nolint:gosec // the repository's own example
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil { //nolint:gosec // a fixed name, in the demo's own directory
			return err
		}
	}
	tok, err := v.Client.Auth().Token().CreateWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"cyberark-agent"}, TTL: "8h"})
	if err != nil {
		return fmt.Errorf("creating the Agent's token: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "vault-token"), []byte(tok.Auth.ClientToken), 0o600)
}

func printNext(vaultBin string, v *vaultproc.Dev, tn *tenant, tmp string) {
	fmt.Printf(`
The demo is running. In another shell:

  export VAULT_ADDR=%[1]s
  export VAULT_TOKEN=%[2]s
  export PATH="%[3]s:$PATH"

  vault read cyberark/config                       # no secret in it: client_secret_set=true
  vault list cyberark/roles
  vault read cyberark/token/demo                   # a new token and lease at every read
  vault read cyberark/token/demo scope=write       # narrowed to another allowed scope
  vault read cyberark/token                        # the config's scopes (read write)
  vault lease lookup <lease_id>
  vault lease revoke <lease_id>
  vault lease renew <lease_id>                     # refused: tokens are not renewable
  vault write -f cyberark/config/rotate-root       # a new client secret, at the tenant and in Vault

The tenant emulator is at %[4]s (CA: %[5]s):

  curl -s --cacert %[5]s %[4]s/_emulator/stats
  curl -s --cacert %[5]s -d '{"expires_in":30}' %[4]s/_emulator/expires_in

Vault Agent (examples/agent), keeping a fresh token in %[6]s/agent/access-token
(shorten the token lifetime as above to watch it change every ~25s):

  cd %[6]s/agent && vault agent -config=agent.hcl

Logs: %[6]s/vault.log, %[6]s/emulator.log (the emulator runs in the demo's process).
Press Ctrl-C to stop everything.
`, v.Addr, v.Token, filepath.Dir(vaultBin), tn.url, tn.caPath, tmp)
}
