#!/usr/bin/env bash
# Builds the pinned Vault server from the Go module proxy, once, into a cache outside
# the tree, and prints the binary's path on stdout. No prebuilt Vault can be downloaded
# on our machines, and a cold build takes minutes, so a present binary is never rebuilt.
#
# Vault's go.mod replaces its api and sdk modules with in-tree copies that the module
# zip does not ship; a throwaway module pins published versions that compile with it.
set -euo pipefail

VAULT_VERSION="${VAULT_VERSION:-1.19.5}"
VAULT_SDK_VERSION="${VAULT_SDK_VERSION:-v0.17.0}"
VAULT_API_VERSION="${VAULT_API_VERSION:-v1.16.0}"
log() { printf 'vault-build: %s\n' "$*" >&2; }

if [[ -z "${VAULT_CACHE_DIR:-}${XDG_CACHE_HOME:-}${HOME:-}" ]]; then
  # Falling back to a shared directory such as /tmp would let another user plant the
  # binary that the tests then trust.
  log "set HOME or VAULT_CACHE_DIR: there is nowhere private to cache Vault"
  exit 1
fi
cache_root="${VAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-cyberark}"
mkdir -p "$cache_root"
cache_root="$(cd "$cache_root" && pwd)" # absolute: tests run it from other directories
dest="$cache_root/vault-$VAULT_VERSION/vault"

if [[ -x "$dest" && "$("$dest" version 2>/dev/null)" == "Vault v$VAULT_VERSION"* ]]; then
  echo "$dest"
  exit 0
fi

work="$(mktemp -d)"
tmp_bin=""
cleanup() { rm -rf "$work" ${tmp_bin:+"$tmp_bin"}; }
trap cleanup EXIT

log "building Vault v$VAULT_VERSION (first run only; takes several minutes)"
# go mod download -json reports a failure inside its JSON, so keep it to quote it.
download="$(go mod download -json "github.com/hashicorp/vault@v$VAULT_VERSION" 2>&1)" || true
vault_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$download")"
if [[ -z "$vault_dir" || ! -f "$vault_dir/go.sum" ]]; then
  log "could not download github.com/hashicorp/vault@v$VAULT_VERSION:"
  printf '%s\n' "$download" >&2
  exit 1
fi

# Vault's own go.sum holds checksums the checksum database may not answer for.
cp "$vault_dir/go.sum" "$work/go.sum"
chmod u+w "$work/go.sum"
go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$vault_dir/go.mod" | head -n1)"
cat >"$work/go.mod" <<MOD
module vaultbuild

go ${go_directive:-1.23}

require github.com/hashicorp/vault v$VAULT_VERSION

replace (
	github.com/hashicorp/vault/api => github.com/hashicorp/vault/api $VAULT_API_VERSION
	github.com/hashicorp/vault/sdk => github.com/hashicorp/vault/sdk $VAULT_SDK_VERSION
	github.com/99designs/keyring => github.com/Jeffail/keyring v1.2.3
	github.com/ma314smith/signedxml v1.1.1 => github.com/moov-io/signedxml v1.1.1
)
MOD
cat >"$work/tools.go" <<'GO'
//go:build tools

package vaultbuild

import _ "github.com/hashicorp/vault"
GO

mkdir -p "$(dirname "$dest")"
# A temporary name of its own, so two builds at once (CI and a demo) cannot mix their
# output; the rename into place is atomic.
tmp_bin="$(mktemp "$dest.XXXXXX")"
(
  cd "$work"
  GOFLAGS=-mod=mod go build -trimpath -tags minimal -o "$tmp_bin" github.com/hashicorp/vault
)
mv "$tmp_bin" "$dest"
log "built $("$dest" version)"
echo "$dest"
