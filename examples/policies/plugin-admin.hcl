# Installs, upgrades and rolls back the plugin, and mounts it at cyberark/.
# Registering a plugin needs sudo on the catalog path.
#
#   vault policy write cyberark-plugin-admin examples/policies/plugin-admin.hcl

path "sys/plugins/catalog/secret/vault-plugin-secrets-cyberark" {
  capabilities = ["create", "update", "read", "delete", "sudo"]
}

# Enable and disable the mount, read it (vault read sys/mounts/cyberark shows
# running_plugin_version and running_sha256), and change plugin_version.
path "sys/mounts/cyberark" {
  capabilities = ["create", "update", "read", "delete"]
}

path "sys/mounts/cyberark/tune" {
  capabilities = ["read", "update"]
}

# vault plugin reload -type=secret -plugin=vault-plugin-secrets-cyberark
path "sys/plugins/reload/secret/vault-plugin-secrets-cyberark" {
  capabilities = ["update"]
}

# Reload by mount: vault write sys/plugins/reload/backend mounts=cyberark/
path "sys/plugins/reload/backend" {
  capabilities = ["update"]
}

# Pinned versions (Vault 1.16 and later), as the Terraform example uses.
path "sys/plugins/pins/secret/vault-plugin-secrets-cyberark" {
  capabilities = ["create", "update", "read", "delete"]
}
