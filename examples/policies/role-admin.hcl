# Manages the roles of the engine mounted at cyberark/: which scopes and application each
# role's tokens have, and how long their leases last.
#
# This is a privileged right towards readers: whoever writes roles/<name> decides what a
# reader of token/<name> receives (within what the tenant lets the service user have).
# A role's scopes and allowed_scopes may not name the config's rotation_scopes.
# It gives no access to the client secret and no tokens.
#
#   vault policy write cyberark-role-admin examples/policies/role-admin.hcl

# The glob also matches cyberark/roles/ itself, which "vault list cyberark/roles" uses.
path "cyberark/roles/*" {
  capabilities = ["create", "update", "read", "delete", "list"]
}

# Reading the config shows the effective scopes roles inherit (never the secret).
path "cyberark/config" {
  capabilities = ["read"]
}
