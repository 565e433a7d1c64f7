# The CyberArk Identity secrets engine, managed with Terraform's Vault provider:
# plugin registration and pinned version, the mount, the config and two roles.
#
# Before "terraform apply":
# - copy each plugin binary to the plugin directory of every Vault node, named
#   vault-plugin-secrets-cyberark-<version> (Terraform registers it; it cannot copy it);
# - give Terraform a Vault token with examples/policies/terraform.hcl.
#
# The client secret: pass it only for the first apply (or when the client moves), as
#   TF_VAR_cyberark_client_secret="$(cat secret.txt)" terraform apply
# then apply without it. Terraform keeps whatever is in data_json in its state, in clear
# text; with rotate_after_bootstrap = true the engine rotates the secret right after the
# first write, so the copy in the state no longer works. See docs/operator-guide.md,
# "Terraform".
#
# Terraform never reads tokens here: a token read by Terraform would land in its state.

terraform {
  required_providers {
    vault = {
      source = "hashicorp/vault"
      # vault_plugin and vault_plugin_pinned_version need a recent provider; 4.x or later.
      version = ">= 4.0.0"
    }
  }
}

variable "mount_path" {
  type    = string
  default = "cyberark"
}

# Every registered version, with the SHA-256 of its binary (from the release's
# SHA256SUMS). Keep the previous version here until the new one has proved itself: a
# rollback is a change of pinned_version.
variable "plugin_versions" {
  type = map(string)
  default = {
    # "v0.1.0" = "<sha256 of vault-plugin-secrets-cyberark_v0.1.0_linux_amd64>"
  }
}

variable "pinned_version" {
  type        = string
  description = "The version every mount of the plugin runs, one of the keys of plugin_versions."
}

variable "tenant_url" {
  type    = string
  default = "https://abc1234.id.cyberark.cloud"
}

variable "app_id" {
  type    = string
  default = "VaultApp"
}

variable "client_id" {
  type    = string
  default = "svc-vault@abc1234"
}

variable "cyberark_client_secret" {
  type        = string
  sensitive   = true
  default     = null
  description = "The service user's password. Needed when the config is created and when the client or tenant changes; leave unset otherwise."
}

variable "rotate_after_bootstrap" {
  type        = bool
  default     = false
  description = "Rotate the client secret once the config is written (needs the rotate scope at the tenant; docs/tenant-setup.md)."
}

resource "vault_plugin" "cyberark" {
  for_each = var.plugin_versions

  type    = "secret"
  name    = "vault-plugin-secrets-cyberark"
  command = "vault-plugin-secrets-cyberark-${each.key}"
  version = each.key
  sha256  = each.value
}

resource "vault_plugin_pinned_version" "cyberark" {
  type    = "secret"
  name    = "vault-plugin-secrets-cyberark"
  version = vault_plugin.cyberark[var.pinned_version].version
}

# With a pinned version, the mount runs that version. A change of pin takes effect when
# the plugin is reloaded; Terraform does not reload it:
#   vault plugin reload -type=secret -plugin=vault-plugin-secrets-cyberark -scope=global
resource "vault_mount" "cyberark" {
  path        = var.mount_path
  type        = vault_plugin_pinned_version.cyberark.name
  description = "CyberArk Identity access tokens"
}

resource "vault_generic_endpoint" "config" {
  path = "${vault_mount.cyberark.path}/config"

  # A config read never returns client_secret. ignore_absent_fields keeps the fields a
  # read does not return (client_secret) as written, and ignores the fields Terraform
  # does not manage (token_endpoint, rotation_state ...), so a plan shows drift only in
  # the fields below. Lists and numbers are written in the form a read returns them.
  ignore_absent_fields = true
  # Deleting the config stops every token read and, during a pending rotation, can
  # lose the only copy of the secret: leave that to a person.
  disable_delete = true

  data_json = jsonencode(merge(
    {
      tenant_url      = var.tenant_url
      app_id          = var.app_id
      client_id       = var.client_id
      scopes          = ["read"]
      rotation_scopes = ["rotate"]
    },
    var.cyberark_client_secret == null ? {} : { client_secret = var.cyberark_client_secret },
  ))
}

# One rotation, right after the first config write. Vault generates the new secret and
# never returns it; only the time is kept. Rotate again with
#   terraform apply -replace='vault_generic_endpoint.rotate_root[0]'
# or, better, with rotation_period in the config.
resource "vault_generic_endpoint" "rotate_root" {
  count      = var.rotate_after_bootstrap ? 1 : 0
  depends_on = [vault_generic_endpoint.config]

  path           = "${vault_mount.cyberark.path}/config/rotate-root"
  disable_read   = true
  disable_delete = true
  data_json      = jsonencode({})
  write_fields   = ["rotated_at"]
}

resource "vault_generic_endpoint" "role_reader" {
  depends_on = [vault_generic_endpoint.config]

  path                 = "${vault_mount.cyberark.path}/roles/reader"
  ignore_absent_fields = true
  data_json = jsonencode({
    scopes         = ["read"]
    allowed_scopes = ["read"]
    ttl            = 1800
  })
}

# A role for many readers of one token (Agents on many hosts): one grant per token
# lifetime instead of one per reader.
resource "vault_generic_endpoint" "role_fleet" {
  depends_on = [vault_generic_endpoint.config]

  path                 = "${vault_mount.cyberark.path}/roles/fleet"
  ignore_absent_fields = true
  data_json = jsonencode({
    scopes              = ["read"]
    token_reuse         = true
    reuse_min_remaining = 300
    reuse_min_fraction  = 0.1
  })
}

resource "vault_policy" "reader" {
  name   = "cyberark-reader"
  policy = <<-EOT
    path "${vault_mount.cyberark.path}/token/reader" {
      capabilities = ["read"]
    }
  EOT
}

output "rotated_at" {
  value = one(vault_generic_endpoint.rotate_root[*].write_data["rotated_at"])
}
