package vaultproc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"

	"github.com/hashicorp/vault/api"
)

// EngineVersionVar is the variable the engine reports its version from; a build links
// the version into it.
const EngineVersionVar = "github.com/idsec-labs/vault-plugin-secrets-cyberark.Version"

// versionRE is what Vault's catalog and the build accept as a version. The check matters
// beyond tidiness: the version becomes part of a -ldflags string, which go build splits
// at spaces, so "v1.0.0 -X main.other=1" would add a linker flag.
var versionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

// CheckVersion refuses anything but a semantic version with a leading v (v1.2.3,
// v1.2.3-rc.1).
func CheckVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("version %q is not a semantic version with a leading v (v1.2.3 or v1.2.3-rc.1)", v)
	}
	return nil
}

// Plugin is a plugin binary in a plugin directory, as the catalog names it.
type Plugin struct {
	Name    string // catalog name
	Command string // file name in the plugin directory
	Version string
	SHA256  string // hex
	// Env is the plugin process's extra environment, kept in its catalog entry.
	Env []string
}

// Build is a plugin command to build into a plugin directory.
type Build struct {
	ModuleRoot string // where go build runs
	Package    string // the command, as go build takes it ("./cmd/...")
	Name       string // catalog name
	Version    string // linked into VersionVar; the catalog version
	// VersionVar is the variable -ldflags -X sets; EngineVersionVar if empty.
	VersionVar string
	PluginDir  string
	// File is the binary's name in PluginDir; Name if empty.
	File string
	Race bool
	Env  []string // see Plugin.Env
}

// BuildPlugin builds b and returns it, with its SHA-256, ready to register.
func BuildPlugin(ctx context.Context, b Build) (Plugin, error) {
	if err := CheckVersion(b.Version); err != nil {
		return Plugin{}, err
	}
	if b.VersionVar == "" {
		b.VersionVar = EngineVersionVar
	}
	if b.File == "" {
		b.File = b.Name
	}
	var flags []string
	if b.Race {
		flags = append(flags, "-race")
	}
	flags = append(flags, "-ldflags", "-X "+b.VersionVar+"="+b.Version)
	dest := filepath.Join(b.PluginDir, b.File)
	if err := GoBuild(ctx, b.ModuleRoot, dest, b.Package, flags...); err != nil {
		return Plugin{}, err
	}
	sum, err := FileSHA256(dest)
	if err != nil {
		return Plugin{}, err
	}
	return Plugin{Name: b.Name, Command: b.File, Version: b.Version, SHA256: sum, Env: b.Env}, nil
}

// GoBuild runs go build -trimpath with flags for pkg in dir, into out. The binary is
// renamed into place whole, so that no Vault ever sees a half-written file.
func GoBuild(ctx context.Context, dir, out, pkg string, flags ...string) error {
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	args := append([]string{"build", "-trimpath"}, flags...)
	args = append(args, "-o", tmp, pkg)
	cmd := exec.CommandContext(ctx, "go", args...) //nolint:gosec // the caller's package and flags; a version has passed CheckVersion
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return os.Rename(tmp, out)
}

// FileSHA256 is the hex SHA-256 of the file at path, as the plugin catalog wants it.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path) //nolint:gosec // a plugin binary the caller names
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Register adds p to the catalog of the Vault c talks to, by SHA-256 and version, as
// an operator would.
func (p Plugin) Register(ctx context.Context, c *api.Client) error {
	err := c.Sys().RegisterPluginWithContext(ctx, &api.RegisterPluginInput{
		Name:    p.Name,
		Type:    api.PluginTypeSecrets,
		Command: p.Command,
		SHA256:  p.SHA256,
		Version: p.Version,
		Env:     p.Env,
	})
	if err != nil {
		return fmt.Errorf("registering %s %s: %w", p.Name, p.Version, err)
	}
	return nil
}

// Mount enables p, at its version, at path.
func (p Plugin) Mount(ctx context.Context, c *api.Client, path string) error {
	err := c.Sys().MountWithContext(ctx, path, &api.MountInput{
		Type:   p.Name,
		Config: api.MountConfigInput{PluginVersion: p.Version},
	})
	if err != nil {
		return fmt.Errorf("enabling %s %s at %s: %w", p.Name, p.Version, path, err)
	}
	return nil
}
