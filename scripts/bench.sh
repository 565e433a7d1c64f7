#!/usr/bin/env bash
# make bench: the engine inside a real Vault, against Vault's own floors. Builds the
# engine, the trivial bench plugin (internal/benchplugin), the tenant emulator and the
# load generator (internal/bench); starts the emulator on HTTPS and a Vault dev server
# on loopback; and runs the load generator, which registers and mounts both plugins and
# prints (and writes as markdown) the table of docs/performance.md. Everything it starts
# is stopped, and its temporary directory removed, when it exits.
#
# Environment: VAULT_BIN (default scripts/vault-build.sh's), BENCH_OUT (markdown file,
# default bench/results.md), BENCH_ROUNDS (3), BENCH_DURATION (3s), BENCH_WARMUP (1s),
# BENCH_CONC (16), BENCH_READERS (200). BENCH_PROFILE=DIR runs the engine's pprof build
# (internal/benchprof) instead and writes CPU and allocation profiles of it under load
# to DIR, with no table. BENCH_ONLY=key,... runs only those reads, with no table (for
# development).
set -euo pipefail
cd "$(dirname "$0")/.."

module="github.com/idsec-labs/vault-plugin-secrets-cyberark"
plugin="vault-plugin-secrets-cyberark"
trivial="bench-trivial"
version="v0.1.0-bench"
app_id="vault-bench"
client_id="svc-vault@bench.cyberark.cloud"

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cyberark-bench.XXXXXX")"
vault_pid=""
emulator_pid=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local status=$?
  trap '' INT TERM
  trap - EXIT
  stop_started
  if ((status != 0)); then
    for f in "$tmp"/vault.log "$tmp"/emulator.log; do
      [[ -s "$f" ]] && printf -- '--- last lines of %s ---\n%s\n' "$(basename "$f")" "$(tail -n 20 "$f")" >&2
    done
    printf 'bench: failed (exit %d)\n' "$status" >&2
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# --- Build ---------------------------------------------------------------------------
mkdir -p "$tmp/plugins" "$tmp/bin"
engine_pkg="./cmd/$plugin"
if [[ -n "${BENCH_PROFILE:-}" ]]; then
  engine_pkg="./internal/benchprof"
fi
log "building the engine ($engine_pkg), the trivial plugin, the emulator and the load generator"
go build -trimpath -ldflags "-X $module.Version=$version" -o "$tmp/plugins/$plugin" "$engine_pkg"
go build -trimpath -o "$tmp/plugins/$trivial" ./internal/benchplugin
go build -trimpath -o "$tmp/bin/cyberark-emulator" ./cmd/cyberark-emulator
go build -trimpath -o "$tmp/bin/bench" ./internal/bench

if [[ -z "${VAULT_BIN:-}" ]]; then
  log "finding Vault (scripts/vault-build.sh builds it the first time: several minutes)"
  VAULT_BIN="$(scripts/vault-build.sh)"
fi
[[ -x "$VAULT_BIN" ]] || die "VAULT_BIN=$VAULT_BIN is not executable"

# --- Tenant emulator -----------------------------------------------------------------
client_secret="Bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
log "starting the tenant emulator (1h tokens)"
CYBERARK_EMULATOR_CLIENT_SECRET="$client_secret" "$tmp/bin/cyberark-emulator" \
  -app "$app_id" -client-id "$client_id" -scopes read -expires-in 3600 \
  -https 127.0.0.1:0 -ca-out "$tmp/ca.pem" -addr-file "$tmp/emulator.json" \
  >"$tmp/emulator.log" 2>&1 &
emulator_pid=$!
wait_for "the emulator" "$emulator_pid" 15 test -s "$tmp/emulator.json" ||
  die "the emulator did not start"
tenant_url="$(sed -n 's/.*"https":"\([^"]*\)".*/\1/p' "$tmp/emulator.json")"
[[ -n "$tenant_url" ]] || die "no HTTPS address in $tmp/emulator.json"

# --- Vault ---------------------------------------------------------------------------
root_token="bench-root-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
for attempt in 1 2 3; do
  port="$(free_port_pair "")"
  vault_addr="http://127.0.0.1:$port"
  log "starting a Vault dev server on $vault_addr ($("$VAULT_BIN" version))"
  # The root token goes in the environment, which other users cannot read, not in
  # the command line, which they can.
  VAULT_DEV_ROOT_TOKEN_ID="$root_token" "$VAULT_BIN" server -dev \
    -dev-listen-address="127.0.0.1:$port" -dev-plugin-dir="$tmp/plugins" \
    -dev-plugin-init=false -dev-no-store-token >"$tmp/vault.log" 2>&1 &
  vault_pid=$!
  if wait_for "Vault" "$vault_pid" 60 env VAULT_ADDR="$vault_addr" "$VAULT_BIN" status; then
    break
  fi
  if kill -0 "$vault_pid" 2>/dev/null || ! grep -q 'address already in use' "$tmp/vault.log" || ((attempt == 3)); then
    die "Vault did not start"
  fi
  wait "$vault_pid" 2>/dev/null || true
  vault_pid=""
done

# --- Load ----------------------------------------------------------------------------
args=(
  -vault-addr "$vault_addr" -vault-pid "$vault_pid"
  -plugin-dir "$tmp/plugins" -plugin "$plugin" -plugin-version "$version" -trivial "$trivial"
  -tenant-url "$tenant_url" -tenant-ca "$tmp/ca.pem" -app "$app_id" -client-id "$client_id"
  -rounds "${BENCH_ROUNDS:-3}" -duration "${BENCH_DURATION:-3s}" -warmup "${BENCH_WARMUP:-1s}"
  -c "${BENCH_CONC:-16}" -readers "${BENCH_READERS:-200}" -out "${BENCH_OUT:-bench/results.md}"
)
if [[ -n "${BENCH_ONLY:-}" ]]; then
  args+=(-only "$BENCH_ONLY")
fi
if [[ -n "${BENCH_PROFILE:-}" ]]; then
  args+=(-profile-dir "$BENCH_PROFILE" -pprof "127.0.0.1:$(free_port_pair "")")
fi
log "running the load generator"
BENCH_VAULT_TOKEN="$root_token" BENCH_CLIENT_SECRET="$client_secret" "$tmp/bin/bench" "${args[@]}"
