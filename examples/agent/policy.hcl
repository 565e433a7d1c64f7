# What the Agent's Vault token needs: read tokens of the "demo" role of the engine
# mounted at cyberark/, and nothing else.
path "cyberark/token/demo" {
  capabilities = ["read"]
}
