# A workload that reads tokens of one role, and nothing else.
#
# Give one policy per role (or per group of roles a workload needs). Vault policies
# match paths exactly, and the engine accepts each role name in one spelling only
# (lower case), so this grant cannot be widened by writing the name another way.
#
#   vault policy write cyberark-reader-payments examples/policies/token-reader.hcl
#
# The mount (cyberark/) and the role (payments) are examples: change both.

path "cyberark/token/payments" {
  capabilities = ["read"]
}

# Not needed, and not granted:
# - cyberark/token (no role): it asks for the config's default scopes. Grant it on its
#   own only to workloads meant to have those.
# - cyberark/token/* : every role, including roles added later.
# - cyberark/roles/*, cyberark/config: readers do not need to see settings.
# - sys/leases/*: token leases are not renewable, and Vault revokes them itself.
