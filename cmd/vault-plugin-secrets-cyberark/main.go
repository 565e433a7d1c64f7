// Command vault-plugin-secrets-cyberark serves the CyberArk Identity secrets engine to
// Vault over the plugin protocol. It is wiring only; the engine lives in the root package.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	cyberark "github.com/idsec-labs/vault-plugin-secrets-cyberark"
)

func main() {
	// Vault reads a plugin's stderr as JSON log lines and re-emits them at their own
	// level; a line in any other format is demoted to DEBUG, where a server at the
	// default info level drops it. Vault filters by its own level, so we log everything,
	// and it names the lines after the plugin itself.
	logger := hclog.New(&hclog.LoggerOptions{
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})

	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		logger.Error("invalid plugin flags", "error", err)
		os.Exit(1)
	}

	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: cyberark.Factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
		Logger:             logger,
	})
	if err != nil {
		logger.Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}
