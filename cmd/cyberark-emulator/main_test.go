package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The config file is the command's only way to set the password-management options, so
// each of them must load and reach a working emulator.
func TestBuildConfigPasswordManagement(t *testing.T) {
	t.Parallel()
	const doc = `{
	  "apps": [{
	    "id": "VaultApp",
	    "scopes": ["all", "read"],
	    "scope_apis": {"all": ["UserMgmt/.*"]},
	    "clients": [
	      {"id": "svc-vault@example.cyberark.cloud", "secret": "Initial-Secret-1"},
	      {"id": "svc-admin@example.cyberark.cloud", "secret": "Admin-Secret-1", "admin": true}
	    ]
	  }],
	  "password_policy": {"min_length": 16, "max_length": 64, "require_digit": true, "require_upper": true, "require_lower": true},
	  "password_history": 5,
	  "revoke_tokens_on_password_change": true
	}`
	path := filepath.Join(t.TempDir(), "emulator.json")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := buildConfig(options{config: path}, map[string]bool{"config": true})
	if err != nil {
		t.Fatalf("buildConfig: %v", err)
	}
	p := cfg.PasswordPolicy
	if p == nil || p.MinLength != 16 || p.MaxLength != 64 || !p.RequireDigit || !p.RequireUpper || !p.RequireLower {
		t.Errorf("password_policy loaded as %+v", p)
	}
	if cfg.PasswordHistory != 5 || !cfg.RevokeTokensOnPasswordChange {
		t.Errorf("password_history %d, revoke_tokens_on_password_change %v", cfg.PasswordHistory, cfg.RevokeTokensOnPasswordChange)
	}
	a := cfg.Apps[0]
	if len(a.ScopeAPIs["all"]) != 1 || a.ScopeAPIs["all"][0] != "UserMgmt/.*" || !a.Clients[1].Admin || a.Clients[0].Admin {
		t.Errorf("app loaded as %+v", a.ScopeAPIs)
	}
	emu, err := emulator.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if !emu.ClientSecretIs("svc-vault@example.cyberark.cloud", "Initial-Secret-1") {
		t.Error("the configured secret is not the one the emulator accepts")
	}
}

func TestBuildConfigRejectsUnknownPasswordField(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "emulator.json")
	doc := `{"apps": [{"id": "a", "clients": [{"id": "c", "secret": "s"}]}], "password_histroy": 2}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := buildConfig(options{config: path}, map[string]bool{"config": true}); err == nil {
		t.Error("a misspelt field loaded")
	}
}

// TestQuickStartRotationScope: the demo's quick start can grant a scope that allows the
// password change, so rotate-root works against it.
func TestQuickStartRotationScope(t *testing.T) {
	t.Parallel()
	o := options{app: "VaultApp", clientID: "svc@x", clientSecret: "Secret-1a", scopes: "read,write", rotation: "rotate"}
	cfg, err := buildConfig(o, map[string]bool{"app": true, "client-id": true, "client-secret": true, "scopes": true, "rotation-scope": true})
	if err != nil {
		t.Fatal(err)
	}
	app := cfg.Apps[0]
	if !slices.Equal(app.Scopes, []string{"read", "write", "rotate"}) || !slices.Equal(app.ScopeAPIs["rotate"], []string{"UserMgmt/ChangeUserPassword"}) {
		t.Errorf("app scopes %v, scope APIs %v", app.Scopes, app.ScopeAPIs)
	}
	if _, err := emulator.New(cfg); err != nil {
		t.Errorf("the emulator refuses the quick-start config: %v", err)
	}
}

// The lockout policy and the tenant variant that ignores oldPassword reach the emulator
// from a config file, the command's only way to set them.
func TestBuildConfigLockoutAndIgnoreOldPassword(t *testing.T) {
	t.Parallel()
	const doc = `{
	  "apps": [{"id": "VaultApp", "scopes": ["all"], "clients": [{"id": "svc-vault@example.cyberark.cloud", "secret": "Initial-Secret-1"}]}],
	  "ignore_old_password": true,
	  "lockout": {"threshold": 5, "window": "15m", "duration": "30m", "reset_on_success": true}
	}`
	path := filepath.Join(t.TempDir(), "emulator.json")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := buildConfig(options{config: path}, map[string]bool{"config": true})
	if err != nil {
		t.Fatalf("buildConfig: %v", err)
	}
	want := emulator.LockoutPolicy{Threshold: 5, Window: 15 * time.Minute, Duration: 30 * time.Minute, ResetOnSuccess: true}
	if !cfg.IgnoreOldPassword || cfg.Lockout == nil || *cfg.Lockout != want {
		t.Errorf("ignore_old_password %v, lockout %+v", cfg.IgnoreOldPassword, cfg.Lockout)
	}
	emu, err := emulator.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if emu.Locked("svc-vault@example.cyberark.cloud") {
		t.Error("locked at start")
	}
}
