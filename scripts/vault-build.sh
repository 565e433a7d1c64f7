#!/usr/bin/env bash
# Builds a pinned Vault server from the Go module proxy, once, into a cache outside the
# tree, and prints the binary's path on stdout. No prebuilt Vault can be downloaded on
# our machines, and a cold build takes minutes, so a present binary is never rebuilt.
#
#   scripts/vault-build.sh                          Vault 1.19.5, the LTS (the default)
#   VAULT_VERSION=1.21.2 scripts/vault-build.sh     the newest release that builds here
#   scripts/vault-build.sh --versions               the versions in the table below
#
# Vault's go.mod replaces its api and sdk modules with in-tree copies that the module
# zip does not ship; a throwaway module pins published versions that compile with it.
# Few releases have such a pair, so the pairs found are a table. Another Vault version
# builds only with both pins given (VAULT_SDK_VERSION and VAULT_API_VERSION); a pin
# given for a version in the table replaces the table's. The cache is by Vault version
# alone: to rebuild one with other pins, delete its directory first.
#
# Why no Vault newer than 1.21.2 is in the table: every 1.21 release's core calls
# framework.Backend.ActivationFunc with two arguments, as only sdk v0.20.0 and older
# declare it (v0.21.0 and later take three). 1.21.3's PKI also needs
# certutil.ValidateDefaultOrValueKeyType (v0.21.0 and later); 1.21.4 also needs
# keysutil.LockManager.RestorePolicy to return two values (v0.24.0 and later) and
# logical.PkiCertificateCounter (v0.23.0 and older). No published sdk has all of one
# release's needs, and the module proxy here serves no pseudo-version of the sdk at a
# release's commit. docs/development.md (Vault versions) lists what was tried.
set -euo pipefail

prog=vault-build
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The table: Vault version -> "sdk api", the published versions it compiles with. (A
# case, not an associative array, so that macOS's bash 3.2 runs it too.)
known_versions="1.19.5 1.21.2" # oldest first, the LTS first; the table's versions
pins_of() {
  case "$1" in
  1.19.5) echo "v0.17.0 v1.16.0" ;;
  1.21.2) echo "v0.20.0 v1.22.0" ;; # 1.21.2's own go.mod requires these two
  esac
}

if [[ "${1:-}" == --versions ]]; then
  echo "$known_versions"
  exit 0
elif [[ $# -gt 0 ]]; then
  die "usage: [VAULT_VERSION=x.y.z] $0 [--versions]"
fi

# Every input is checked before use: they reach a go.mod, a go command line and a path.
need VAULT_VERSION '^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$' \
  'a Vault release without a leading v (1.19.5, or 1.21.0-rc1)'
need_version VAULT_SDK_VERSION
need_version VAULT_API_VERSION
VAULT_VERSION="${VAULT_VERSION:-1.19.5}"
pins="$(pins_of "$VAULT_VERSION")"
VAULT_SDK_VERSION="${VAULT_SDK_VERSION:-${pins% *}}"
VAULT_API_VERSION="${VAULT_API_VERSION:-${pins#* }}"
if [[ -z "$VAULT_SDK_VERSION" || -z "$VAULT_API_VERSION" ]]; then
  die "no known sdk/api pins for Vault $VAULT_VERSION (known: ${known_versions// /, });" \
    "set both VAULT_SDK_VERSION and VAULT_API_VERSION to build it"
fi

if [[ -z "${VAULT_CACHE_DIR:-}${XDG_CACHE_HOME:-}${HOME:-}" ]]; then
  # Falling back to a shared directory such as /tmp would let another user plant the
  # binary that the tests then trust.
  die "set HOME or VAULT_CACHE_DIR: there is nowhere private to cache Vault"
fi
need_path VAULT_CACHE_DIR
cache_root="${VAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-cyberark}"
mkdir -p "$cache_root"
cache_root="$(cd "$cache_root" && pwd)" # absolute: tests run it from other directories
dest="$cache_root/vault-$VAULT_VERSION/vault"

# "Vault v1.21.2, built ..." (or "Vault v1.21.2 (commit), ..."): the character after
# the version keeps 1.21.2 from matching 1.21.20 or 1.21.2-rc1.
if [[ -x "$dest" && "$("$dest" version 2>/dev/null)" == "Vault v$VAULT_VERSION"[,\ ]* ]]; then
  echo "$dest"
  exit 0
fi

work="$(mktemp -d)"
tmp_bin=""
cleanup() { rm -rf "$work" ${tmp_bin:+"$tmp_bin"}; }
trap cleanup EXIT

log "building Vault v$VAULT_VERSION with sdk $VAULT_SDK_VERSION and api $VAULT_API_VERSION" \
  "(first run only; takes several minutes)"
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
# The two other replaces are Vault's own, copied from its go.mod (1.19 to 1.21).
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
