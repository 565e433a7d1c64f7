# Manages the tenant connection of the engine mounted at cyberark/: the config, and the
# rotation of the client secret.
#
# A holder of this policy cannot read the client secret: a config read shows only
# client_secret_set. It cannot send the stored secret to another host either: a write
# that changes tenant_url, token_url, revoke_url, client_id, client_auth, ca_cert,
# jwks_url (or an app_id that moves an endpoint) must carry client_secret. It can still:
# - change the default scopes, rotation_scopes, timeouts and retries (no workload
#   scope may name a rotation scope: that is a 400);
# - relax the checks of granted tokens (verify_scope=warn, verify_tokens=off,
#   token_audience); a granted rotation scope is refused whatever they say;
# - turn revocation at the tenant off (revoke_tokens=false);
# - replace the client with another one whose secret it knows, so that readers get
#   tokens of another service user;
# - set a rotation schedule, rotate the secret, or delete the config, which stops every
#   token read (and, during a pending rotation, may lose the only copy of the secret).
# Give it to the few people who own the service user at the tenant.
#
#   vault policy write cyberark-config-admin examples/policies/config-admin.hcl

path "cyberark/config" {
  capabilities = ["create", "update", "read", "delete"]
}

path "cyberark/config/rotate-root" {
  capabilities = ["update"]
}

# This policy grants no token reads. Add a token-reader policy to test with.
