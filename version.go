package cyberark

// Version is the plugin's release, set at build time with
// -ldflags "-X github.com/idsec-labs/vault-plugin-secrets-cyberark.Version=v1.2.3".
// Vault compares it with the version a plugin was registered under, so the Makefile
// sets both from one variable.
var Version = "v0.1.0-dev"

// userAgent names the plugin and its release to the tenant, so a tenant's logs can tell
// Vault's grants from other clients'.
func userAgent() string {
	return "vault-plugin-secrets-cyberark/" + Version
}
