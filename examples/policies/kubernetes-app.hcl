# What a Kubernetes workload's Vault token needs, with the Agent injector or the Vault
# Secrets Operator: read the tokens of its role.
#
#   vault policy write cyberark-payments examples/policies/kubernetes-app.hcl
#   vault write auth/kubernetes/role/payments \
#       bound_service_account_names=payments bound_service_account_namespaces=payments \
#       audience=vault token_policies=cyberark-payments token_ttl=1h

path "cyberark/token/payments" {
  capabilities = ["read"]
}

# Only for a VaultDynamicSecret with revoke: true, which revokes its lease when the
# VaultDynamicSecret is deleted. Leave it out otherwise: it lets the holder revoke any
# lease whose ID it knows.
# path "sys/leases/revoke" {
#   capabilities = ["update"]
# }
