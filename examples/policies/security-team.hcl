# Incident response for the engine mounted at cyberark/: find who got a token, revoke
# it at the tenant, and break glass for a client (freeze its reads, rotate its secret,
# revoke every token the engine knows it handed out). See docs/incident-response.md.
#
# tokens/lookup answers with the Vault identities (entity IDs, token accessors, request
# IDs) that read a token, and tokens/revoke-all stops a client's token reads: give this
# policy to the security team alone. Workload policies must not match these paths:
# "cyberark/token/<role>" does not, but a glob such as "cyberark/token*" does (it also
# matches "cyberark/tokens/revoke-all"). Write workload paths out in full.
#
#   vault policy write cyberark-security examples/policies/security-team.hcl

path "cyberark/tokens/lookup" {
  capabilities = ["update"]
}

path "cyberark/tokens/revoke" {
  capabilities = ["update"]
}

path "cyberark/tokens/revoke-all" {
  capabilities = ["update"]
}

path "cyberark/tokens/unfreeze" {
  capabilities = ["update"]
}

# The audit-hash runbook, for tokens handed out while track_tokens was off: the HMAC a
# file audit device mounted at "file" logs for a value.
path "sys/audit-hash/file" {
  capabilities = ["update"]
}

# Ending a compromised Vault token and every lease it holds: each token lease's end
# revokes the token at the tenant where revoke_tokens is in effect.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# Who a reader was: vault token lookup -accessor, and the entity behind an entity_id.
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}

path "identity/entity/id/*" {
  capabilities = ["read"]
}

# What a leaked token could reach: a role's effective_scopes. Roles hold no secret.
path "cyberark/roles/*" {
  capabilities = ["read"]
}

# Revoking token leases: one (vault lease revoke <lease_id>), or a role's
# (vault lease revoke -prefix cyberark/token/<role>, which Vault guards with sudo).
path "sys/leases/revoke" {
  capabilities = ["update"]
}

path "sys/leases/revoke-prefix/cyberark/token/*" {
  capabilities = ["update", "sudo"]
}

# Not granted: cyberark/config and cyberark/clients/* (the config admin's), role
# writes, tuning the mount (sys/mounts/cyberark/tune, the Vault admin's), and token
# reads. revoke-all with rotate=true rotates the client's secret without config access.
