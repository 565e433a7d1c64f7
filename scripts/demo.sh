#!/usr/bin/env bash
# The engine end to end on this machine, with nothing to install by hand: builds the
# plugin and the tenant emulator, builds (once) or reuses the pinned Vault, starts the
# emulator on HTTPS and a Vault dev server, registers and mounts the plugin, configures
# it, reads a token, prints what to try next, and runs until Ctrl-C. Everything it starts
# is stopped, and its temporary directory removed, when it exits.
#
# Environment: VERSION (plugin version, default the Makefile's), VAULT_BIN (a Vault
# binary, default scripts/vault-build.sh's), VAULT_DEMO_PORT (default 8200, or a free
# port if that one is taken), DEMO_ONCE=1 (stop after printing, instead of waiting for
# Ctrl-C: the test command runs the demo this way).
set -euo pipefail
cd "$(dirname "$0")/.."

module="github.com/idsec-labs/vault-plugin-secrets-cyberark"
plugin="vault-plugin-secrets-cyberark"
app_id="vault-demo"
client_id="svc-vault@demo.cyberark.cloud"

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cyberark-demo.XXXXXX")"
vault_pid=""
emulator_pid=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local status=$?
  # A second Ctrl-C must not cut the cleanup short and leave processes behind.
  trap '' INT TERM
  trap - EXIT
  stop_started
  rm -rf "$tmp"
  if ((status != 0 && status != 130 && status != 143)); then
    printf 'demo: failed (exit %d)\n' "$status" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Build ---------------------------------------------------------------------------
version="${VERSION:-$(sed -n 's/^VERSION[[:space:]]*?=[[:space:]]*//p' Makefile)}"
[[ -n "$version" ]] || die "cannot tell the plugin version: set VERSION"
mkdir -p "$tmp/plugins" "$tmp/bin" "$tmp/agent"
log "building $plugin $version and the tenant emulator"
go build -trimpath -ldflags "-X $module.Version=$version" -o "$tmp/plugins/$plugin" "./cmd/$plugin"
go build -trimpath -o "$tmp/bin/cyberark-emulator" ./cmd/cyberark-emulator

if [[ -z "${VAULT_BIN:-}" ]]; then
  log "finding Vault (scripts/vault-build.sh builds it the first time: several minutes)"
  VAULT_BIN="$(scripts/vault-build.sh)"
fi
[[ -x "$VAULT_BIN" ]] || die "VAULT_BIN=$VAULT_BIN is not executable"
vault() { "$VAULT_BIN" "$@"; }

# --- Tenant emulator -----------------------------------------------------------------
client_secret="Demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s' "$client_secret" >"$tmp/client_secret")
log "starting the CyberArk Identity tenant emulator (app $app_id, client $client_id)"
# The secret travels in the environment, not on the command line where ps shows it.
CYBERARK_EMULATOR_CLIENT_SECRET="$client_secret" "$tmp/bin/cyberark-emulator" \
  -app "$app_id" -client-id "$client_id" -scopes read,write -rotation-scope rotate \
  -https 127.0.0.1:0 -ca-out "$tmp/ca.pem" -addr-file "$tmp/emulator.json" \
  >"$tmp/emulator.log" 2>&1 &
emulator_pid=$!
wait_for "the emulator" "$emulator_pid" 15 test -s "$tmp/emulator.json" ||
  die "the emulator did not start; its log: $(cat "$tmp/emulator.log")"
tenant_url="$(sed -n 's/.*"https":"\([^"]*\)".*/\1/p' "$tmp/emulator.json")"
[[ -n "$tenant_url" ]] || die "no HTTPS address in $tmp/emulator.json"

# --- Vault ---------------------------------------------------------------------------
root_token="demo-root-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
for attempt in 1 2 3; do
  port="$(free_port_pair "${VAULT_DEMO_PORT:-8200}")"
  export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN="$root_token"
  log "starting a Vault dev server on $VAULT_ADDR ($(vault version))"
  # The root token goes in the environment, which other users cannot read, not in
  # the command line, which they can.
  VAULT_DEV_ROOT_TOKEN_ID="$root_token" "$VAULT_BIN" server -dev \
    -dev-listen-address="127.0.0.1:$port" -dev-plugin-dir="$tmp/plugins" \
    -dev-plugin-init=false -dev-no-store-token >"$tmp/vault.log" 2>&1 &
  vault_pid=$!
  if wait_for "Vault" "$vault_pid" 60 vault status; then
    break
  fi
  if kill -0 "$vault_pid" 2>/dev/null || ! grep -q 'address already in use' "$tmp/vault.log" || ((attempt == 3)); then
    die "Vault did not start; its log: $(cat "$tmp/vault.log")"
  fi
  wait "$vault_pid" 2>/dev/null || true
  vault_pid=""
done

# --- Register, mount, configure ------------------------------------------------------
log "registering $plugin $version by SHA-256 and enabling it at cyberark/"
vault plugin register -sha256="$(sha256_of "$tmp/plugins/$plugin")" -version="$version" secret "$plugin"
vault secrets enable -path=cyberark -plugin-version="$version" "$plugin"

log "configuring the engine (the write fetches a token to check the settings)"
vault write cyberark/config \
  tenant_url="$tenant_url" app_id="$app_id" client_id="$client_id" \
  client_secret=@"$tmp/client_secret" ca_cert=@"$tmp/ca.pem" scopes=read,write rotation_scopes=rotate
vault write cyberark/roles/demo scopes=read allowed_scopes=read,write

log "vault read cyberark/token/demo"
vault read cyberark/token/demo

# --- The Agent example, ready to run -------------------------------------------------
vault policy write cyberark-agent examples/agent/policy.hcl >/dev/null
cp examples/agent/agent.hcl examples/agent/token.tmpl "$tmp/agent/"
(umask 077 && vault token create -policy=cyberark-agent -ttl=8h -field=token >"$tmp/agent/vault-token")

cat <<EOF

The demo is running. In another shell:

  export VAULT_ADDR=$VAULT_ADDR
  export VAULT_TOKEN=$VAULT_TOKEN
  export PATH="$(dirname "$VAULT_BIN"):\$PATH"

  vault read cyberark/config                       # no secret in it: client_secret_set=true
  vault list cyberark/roles
  vault read cyberark/token/demo                   # a new token and lease at every read
  vault read cyberark/token/demo scope=write       # narrowed to another allowed scope
  vault read cyberark/token                        # the config's scopes (read write)
  vault lease lookup <lease_id>
  vault lease revoke <lease_id>
  vault lease renew <lease_id>                     # refused: tokens are not renewable
  vault write -f cyberark/config/rotate-root       # a new client secret, at the tenant and in Vault

The tenant emulator is at $tenant_url (CA: $tmp/ca.pem):

  curl -s --cacert $tmp/ca.pem $tenant_url/_emulator/stats
  curl -s --cacert $tmp/ca.pem -d '{"expires_in":30}' $tenant_url/_emulator/expires_in

Vault Agent (examples/agent), keeping a fresh token in $tmp/agent/access-token
(shorten the token lifetime as above to watch it change every ~25s):

  cd $tmp/agent && vault agent -config=agent.hcl

Logs: $tmp/vault.log, $tmp/emulator.log. Press Ctrl-C to stop everything.
EOF

if [[ "${DEMO_ONCE:-}" == 1 ]]; then
  exit 0
fi

while kill -0 "$vault_pid" 2>/dev/null && kill -0 "$emulator_pid" 2>/dev/null; do
  sleep 1
done
log "a demo process exited on its own; the last lines of its logs:"
tail -n 20 "$tmp/vault.log" "$tmp/emulator.log" >&2 || true
exit 1
