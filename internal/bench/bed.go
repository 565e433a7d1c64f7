package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
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
// so that its work is not the load generator's, and a Vault dev server with the engine
// and the trivial plugin in its plugin directory.
type bed struct {
	dir       string
	tenantURL string
	caPEM     []byte
	// secret is the client secret the emulator accepts; it stays in this process and
	// the emulator's environment.
	secret   string
	emulator *vaultproc.Process
	vault    *vaultproc.Dev
	engine   vaultproc.Plugin
	trivial  vaultproc.Plugin
	// pprofAddr is the engine's pprof listener, with -profile-dir.
	pprofAddr string
}

func startBed(ctx context.Context, o options) (_ *bed, err error) {
	dir, err := os.MkdirTemp("", "cyberark-bench-")
	if err != nil {
		return nil, err
	}
	bd := &bed{dir: dir}
	defer func() {
		if err != nil {
			bd.stop(true)
		}
	}()
	plugins, bin := filepath.Join(dir, "plugins"), filepath.Join(dir, "bin")
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

	if err := bd.startTenant(ctx, emulatorBin); err != nil {
		return nil, err
	}

	bd.vault, err = vaultproc.StartDev(ctx, vaultproc.DevConfig{Bin: o.vaultBin, Dir: dir, PluginDir: plugins})
	if err != nil {
		return nil, err
	}
	logf("Vault dev server on %s", bd.vault.Addr)
	return bd, nil
}

// startTenant starts the emulator with 1h tokens and waits for its address.
func (bd *bed) startTenant(ctx context.Context, bin string) error {
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	bd.secret = "Bench-" + hex.EncodeToString(raw)
	caPath, addrFile := filepath.Join(bd.dir, "ca.pem"), filepath.Join(bd.dir, "emulator.json")
	logf("starting the tenant emulator (1h tokens)")
	var err error
	// The secret travels in the environment, not on the command line where ps shows it.
	bd.emulator, err = vaultproc.Start("tenant emulator", bin, bd.dir,
		append(os.Environ(), "CYBERARK_EMULATOR_CLIENT_SECRET="+bd.secret), filepath.Join(bd.dir, "emulator.log"),
		"-app", appID, "-client-id", clientID, "-scopes", "read", "-expires-in", "3600",
		"-https", "127.0.0.1:0", "-ca-out", caPath, "-addr-file", addrFile)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		data, err := os.ReadFile(addrFile) //nolint:gosec // in the bench's own temporary directory
		if err == nil {
			var urls struct {
				HTTPS string `json:"https"`
			}
			if err := json.Unmarshal(data, &urls); err != nil || urls.HTTPS == "" {
				return fmt.Errorf("no HTTPS address in %s", addrFile)
			}
			bd.tenantURL = urls.HTTPS
			break
		}
		switch {
		case bd.emulator.Exited():
			return fmt.Errorf("the emulator exited: %w", bd.emulator.Err())
		case time.Now().After(deadline):
			return errors.New("the emulator did not start within 15s")
		case ctx.Err() != nil:
			return ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	bd.caPEM, err = os.ReadFile(caPath) //nolint:gosec // in the bench's own temporary directory
	return err
}

// stop stops what startBed started and removes its directory; after a failure it shows
// the end of each log first.
func (bd *bed) stop(failed bool) {
	if bd.vault != nil {
		bd.vault.Stop(10*time.Second, logf)
	}
	if bd.emulator != nil {
		bd.emulator.Stop(10*time.Second, logf)
	}
	if failed {
		for _, name := range []string{"vault.log", "emulator.log"} {
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
