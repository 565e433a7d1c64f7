# What Terraform's Vault token needs to apply examples/terraform/main.tf.
#
#   vault policy write cyberark-terraform examples/policies/terraform.hcl

# Register, pin and mount the plugin.
path "sys/plugins/catalog/secret/vault-plugin-secrets-cyberark" {
  capabilities = ["create", "update", "read", "delete", "sudo"]
}
path "sys/plugins/pins/secret/vault-plugin-secrets-cyberark" {
  capabilities = ["create", "update", "read", "delete"]
}
path "sys/mounts/cyberark" {
  capabilities = ["create", "update", "read", "delete"]
}
path "sys/mounts/cyberark/tune" {
  capabilities = ["read", "update"]
}

# The config (read: drift detection of the fields Terraform writes; the secret is never
# returned) and the roles. No delete on the config: main.tf sets disable_delete.
path "cyberark/config" {
  capabilities = ["create", "update", "read"]
}
path "cyberark/config/rotate-root" {
  capabilities = ["update"]
}
path "cyberark/roles/*" {
  capabilities = ["create", "update", "read", "delete"]
}

# Terraform manages settings, not tokens: no cyberark/token grants. A token read by
# Terraform would be stored in its state.
