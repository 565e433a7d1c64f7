# Vault Agent keeping a fresh CyberArk Identity access token in a file.
#
# Run it from a directory that holds this file, token.tmpl and a Vault token in the
# file vault-token (one with the policy in policy.hcl):
#
#   VAULT_ADDR=http://127.0.0.1:8200 vault agent -config=agent.hcl
#
# VAULT_ADDR, when set, takes precedence over vault.address below. Relative paths are
# relative to the directory Agent runs in.
#
# The engine returns each token as a non-renewable lease that ends a little before the
# token expires (a tenth of its lifetime, at least 1s and at most 60s, cut to whole
# seconds). Agent reads the secret again at
# about lease_renewal_threshold of the lease, so the file always holds a valid token and
# each refresh costs one grant at the tenant.

vault {
  address = "http://127.0.0.1:8200"
}

auto_auth {
  method "token_file" {
    config = {
      token_file_path = "vault-token"
    }
  }
}

template_config {
  # Fraction of a non-renewable lease after which Agent reads the secret again
  # (0.9 is the default; it is jittered by +/-0.05).
  lease_renewal_threshold = 0.9
  # Exit rather than keep serving a token that will expire, if Vault keeps failing.
  exit_on_retry_failure = true
}

template {
  source      = "token.tmpl"
  destination = "access-token"
  perms       = "0600"
}
