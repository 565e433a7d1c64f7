#!/usr/bin/env bash
# The engine end to end on this machine, with nothing to install by hand: builds (once)
# or reuses the pinned Vault, then runs the demo command (internal/demo), which builds
# the plugin, serves the tenant emulator on HTTPS, starts a Vault dev server, registers
# and mounts the plugin, configures it, reads a token, prints what to try next, and runs
# until Ctrl-C. Everything it starts is stopped, and its temporary directory removed,
# when it exits.
#
# Environment: VERSION (plugin version, default the Makefile's), VAULT_BIN (a Vault
# binary, default scripts/vault-build.sh's), VAULT_DEMO_PORT (default 8200, or a free
# port if that one is taken), DEMO_ONCE=1 (stop after printing, instead of waiting for
# Ctrl-C: the test command runs the demo this way), TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
prog=demo
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_version VERSION
need_exec VAULT_BIN
need_port VAULT_DEMO_PORT
need DEMO_ONCE '^[01]$' '0 or 1'
need_path TMPDIR
version="${VERSION:-$(sed -n 's/^VERSION[[:space:]]*?=[[:space:]]*//p' Makefile)}"
check "the Makefile's VERSION" "$version" "$version_re" "$version_what"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cyberark-demo.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [[ -z "${VAULT_BIN:-}" ]]; then
  log "finding Vault (scripts/vault-build.sh builds it the first time: several minutes)"
  VAULT_BIN="$(scripts/vault-build.sh)"
fi
go build -o "$tmp/demo" ./internal/demo
args=(-vault "$VAULT_BIN" -version "$version" -port "${VAULT_DEMO_PORT:-8200}")
if [[ "${DEMO_ONCE:-}" == 1 ]]; then
  args+=(-once)
fi
run_child "$tmp/demo" "${args[@]}"
