package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/wan"
)

const (
	engineName     = "vault-plugin-secrets-cyberark"
	engineVersion  = "v0.1.0-bench"
	trivialName    = "bench-trivial"
	trivialVersion = "v0.0.1-bench"
	appID          = "vault-bench"
	clientID       = "svc-vault@bench.cyberark.cloud"
)

// bed is what the benchmark runs against: the tenant emulator in a process of its own,
// so that its work is not the load generator's, a second one that offers HTTP/1.1
// alone, each also reached through a WAN proxy of its own, and a Vault dev server with
// the engine and the trivial plugin in its plugin directory.
type bed struct {
	dir     string
	plugins string // the plugin directory
	// tenant offers HTTP/2 and HTTP/1.1, as Go's server does; tenantH1 HTTP/1.1 alone.
	tenant, tenantH1 *tenant
	// tenants are the emulators started, for stop.
	tenants []*tenant
	// wan holds the two tenants across a simulated WAN, by the protocol they offer.
	wan map[string]*link
	// secret is the client secret the emulators accept; it stays in this process and
	// the emulators' environment.
	secret  string
	vault   *vaultproc.Dev
	engine  vaultproc.Plugin
	trivial vaultproc.Plugin
	// pprofAddr is the engine's pprof listener, with -profile-dir.
	pprofAddr string
}

// tenant is a tenant emulator process on loopback.
type tenant struct {
	name  string
	proc  *vaultproc.Process
	url   string // https://127.0.0.1:PORT
	caPEM []byte
	log   string
}

// link is a tenant across a simulated WAN: a proxy that delays each direction by half
// the round trip, between whoever dials url and the emulator.
type link struct {
	offers string // "h2" (HTTP/2 and HTTP/1.1 offered) or "h1" (HTTP/1.1 alone)
	tenant *tenant
	proxy  *wan.Proxy
	url    string // https://127.0.0.1:<proxy port>: the emulator's certificate covers it
}

func startBed(ctx context.Context, o options) (_ *bed, err error) {
	dir, err := os.MkdirTemp("", "cyberark-bench-")
	if err != nil {
		return nil, err
	}
	bd := &bed{dir: dir, wan: map[string]*link{}}
	defer func() {
		if err != nil {
			bd.stop(true)
		}
	}()
	plugins, bin := filepath.Join(dir, "plugins"), filepath.Join(dir, "bin")
	bd.plugins = plugins
	for _, d := range []string{plugins, bin} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}

	engine := vaultproc.Build{ModuleRoot: o.moduleRoot, Package: "./cmd/" + engineName, Name: engineName, Version: engineVersion, PluginDir: plugins}
	if o.profileDir != "" {
		engine.Package = "./internal/bench/engineprof"
		port, err := freePort(ctx)
		if err != nil {
			return nil, err
		}
		bd.pprofAddr = "127.0.0.1:" + strconv.Itoa(port)
		engine.Env = []string{"BENCH_PPROF_ADDR=" + bd.pprofAddr}
	}
	logf("building the engine (%s), the trivial plugin and the emulator", engine.Package)
	if bd.engine, err = vaultproc.BuildPlugin(ctx, engine); err != nil {
		return nil, err
	}
	bd.trivial, err = vaultproc.BuildPlugin(ctx, vaultproc.Build{
		ModuleRoot: o.moduleRoot, Package: "./internal/bench/trivial", Name: trivialName,
		Version: trivialVersion, VersionVar: "main.Version", PluginDir: plugins,
	})
	if err != nil {
		return nil, err
	}
	emulatorBin := filepath.Join(bin, "cyberark-emulator")
	if err := vaultproc.GoBuild(ctx, o.moduleRoot, emulatorBin, "./cmd/cyberark-emulator"); err != nil {
		return nil, err
	}

	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	bd.secret = "Bench-" + hex.EncodeToString(raw)
	logf("starting the tenant emulators (1h tokens), one offering HTTP/1.1 alone, and a WAN proxy (round trip %s) before each", o.wanRTT)
	if bd.tenant, err = bd.startTenant(ctx, emulatorBin, "emulator"); err != nil {
		return nil, err
	}
	if bd.tenantH1, err = bd.startTenant(ctx, emulatorBin, "emulator-h1", "-http1-only"); err != nil {
		return nil, err
	}
	for offers, t := range map[string]*tenant{"h2": bd.tenant, "h1": bd.tenantH1} {
		p, err := wan.Start(strings.TrimPrefix(t.url, "https://"), o.wanRTT)
		if err != nil {
			return nil, fmt.Errorf("WAN proxy to the %s: %w", t.name, err)
		}
		bd.wan[offers] = &link{offers: offers, tenant: t, proxy: p, url: "https://" + p.Addr()}
	}

	bd.vault, err = vaultproc.StartDev(ctx, vaultproc.DevConfig{Bin: o.vaultBin, Dir: dir, PluginDir: plugins})
	if err != nil {
		return nil, err
	}
	logf("Vault dev server on %s", bd.vault.Addr)
	return bd, nil
}

// startTenant starts an emulator with 1h tokens, named name (its files are name.log,
// name-ca.pem and name.json) and with extra flags, and waits for its address.
func (bd *bed) startTenant(ctx context.Context, bin, name string, extra ...string) (*tenant, error) {
	caPath, addrFile := filepath.Join(bd.dir, name+"-ca.pem"), filepath.Join(bd.dir, name+".json")
	t := &tenant{name: name, log: filepath.Join(bd.dir, name+".log")}
	var err error
	// The secret travels in the environment, not on the command line where ps shows it.
	t.proc, err = vaultproc.Start("tenant "+name, bin, bd.dir,
		append(os.Environ(), "CYBERARK_EMULATOR_CLIENT_SECRET="+bd.secret), t.log,
		append([]string{"-app", appID, "-client-id", clientID, "-scopes", "read", "-expires-in", "3600",
			"-https", "127.0.0.1:0", "-ca-out", caPath, "-addr-file", addrFile}, extra...)...)
	if err != nil {
		return nil, err
	}
	bd.tenants = append(bd.tenants, t) // stopped by stop, even if it never serves
	deadline := time.Now().Add(15 * time.Second)
	for {
		data, err := os.ReadFile(addrFile) //nolint:gosec // in the bench's own temporary directory
		if err == nil {
			var urls struct {
				HTTPS string `json:"https"`
			}
			if err := json.Unmarshal(data, &urls); err != nil || urls.HTTPS == "" {
				return nil, fmt.Errorf("no HTTPS address in %s", addrFile)
			}
			t.url = urls.HTTPS
			break
		}
		switch {
		case t.proc.Exited():
			return nil, fmt.Errorf("the %s exited: %w", name, t.proc.Err())
		case time.Now().After(deadline):
			return nil, fmt.Errorf("the %s did not start within 15s", name)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.caPEM, err = os.ReadFile(caPath) //nolint:gosec // in the bench's own temporary directory
	return t, err
}

// stop stops what startBed started and removes its directory; after a failure it shows
// the end of each log first.
func (bd *bed) stop(failed bool) {
	if bd.vault != nil {
		bd.vault.Stop(10*time.Second, logf)
	}
	for _, l := range bd.wan {
		_ = l.proxy.Close()
	}
	logs := []string{"vault.log", filepath.Join("storage", "vault.log")}
	for _, t := range bd.tenants {
		t.proc.Stop(10*time.Second, logf)
		logs = append(logs, filepath.Base(t.log))
	}
	if failed {
		for _, name := range logs {
			if tail := lastLines(filepath.Join(bd.dir, name), 20); len(tail) > 0 {
				fmt.Fprintf(os.Stderr, "--- last lines of %s ---\n%s\n", name, tail)
			}
		}
	}
	_ = os.RemoveAll(bd.dir)
}

func lastLines(path string, n int) []byte {
	data, err := os.ReadFile(path) //nolint:gosec // a log in the bench's own temporary directory
	if err != nil {
		return nil
	}
	data = bytes.TrimRight(data, "\n")
	for i := len(data) - 1; i >= 0; i-- {
		if data[i] == '\n' {
			if n--; n == 0 {
				return data[i+1:]
			}
		}
	}
	return data
}

func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
