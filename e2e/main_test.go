// Package e2e runs the engine inside a real Vault server, built from the version the
// project pins, against the tenant emulator over HTTPS: the plugin is built, registered
// by SHA-256 and version, mounted, configured, read through, reloaded and upgraded as an
// operator would, and a Vault Agent renders its tokens. Beside those: a leak hunt over
// the whole API with a tenant that fails and reflects requests (leak_test.go), a load
// against a race-detector build of the plugin (load_test.go), and revocation while the
// tenant is down (outage_test.go). Every test's logs are searched for every form of
// every secret it handled (secrets_test.go).
//
// The tests find Vault through VAULT_BIN (scripts/test.sh sets it). Without it they skip,
// unless E2E_REQUIRED=1, which turns a missing Vault into a failure.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

const (
	pluginName = "vault-plugin-secrets-cyberark"

	// versionV1 is what every test mounts; versionV2 is the upgrade target.
	versionV1 = "v0.1.0-e2e"
	versionV2 = "v0.2.0-e2e"
	// versionRace is a build with the race detector, registered under its own version.
	// Its reports go to the plugin's stderr, which Vault copies to its log.
	versionRace = "v0.1.0-e2e-race"
)

var (
	// moduleRoot is the repository root, where go build runs and examples/ lives.
	moduleRoot string
	// pluginDir is shared by every Vault server of this run. Vault only executes files
	// in it, each checked against the SHA-256 it was registered with.
	pluginDir string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot find the module root:", err)
		return 1
	}
	moduleRoot = root
	dir, err := os.MkdirTemp("", "cyberark-e2e-plugins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginDir = dir
	return m.Run()
}

// vaultBin returns the Vault binary to run, or ends the test: a skip when none is
// configured, a failure when one is required or VAULT_BIN names no executable.
func vaultBin(t testing.TB) string {
	t.Helper()
	p := os.Getenv("VAULT_BIN")
	if p == "" {
		if os.Getenv("E2E_REQUIRED") == "1" {
			t.Fatal("VAULT_BIN is not set and E2E_REQUIRED=1; run scripts/test.sh or set VAULT_BIN=$(scripts/vault-build.sh)")
		}
		t.Skip("VAULT_BIN is not set; set VAULT_BIN=$(scripts/vault-build.sh) to run the end-to-end tests")
	}
	st, err := os.Stat(p) //nolint:gosec // VAULT_BIN names the binary to run; the tester sets it
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("VAULT_BIN=%s is not an executable file (stat error: %v)", p, err)
	}
	return p
}

// pluginBuild is one plugin binary in pluginDir, built at most once per test run.
type pluginBuild struct {
	once    sync.Once
	version string
	vaultproc.Plugin
	err error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*pluginBuild{}
)

// plugin builds the plugin reporting version into pluginDir, once per version;
// versionRace is built with -race.
func plugin(t testing.TB, version string) *pluginBuild {
	t.Helper()
	buildsMu.Lock()
	b := builds[version]
	if b == nil {
		b = &pluginBuild{version: version}
		builds[version] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		b.Plugin, b.err = vaultproc.BuildPlugin(context.Background(), vaultproc.Build{
			ModuleRoot: moduleRoot,
			Package:    "./cmd/" + pluginName,
			Name:       pluginName,
			Version:    version,
			PluginDir:  pluginDir,
			File:       pluginName + "-" + version,
			Race:       version == versionRace,
		})
	})
	if b.err != nil {
		t.Fatalf("building the plugin %s: %v", version, b.err)
	}
	return b
}
