#!/usr/bin/env bash
# Release binaries: the plugin for linux and darwin on amd64 and arm64, and SHA256SUMS
# and BUILDINFO beside them, in dist/$VERSION/. The same commit, VERSION and Go
# toolchain give the same bytes on any machine: the toolchain is pinned (the go command
# fetches it from the module proxy when the machine has another), and nothing of the
# machine goes in (no cgo, no paths, no VCS stamp or build ID, the baseline
# architecture levels, no experiments). The tree must be clean, so that the commit
# named in BUILDINFO is what was built.
#
#   VERSION=v0.1.0 scripts/release.sh     (or: make release VERSION=v0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."

prog=release
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[[ -n "${VERSION:-}" ]] || die "set VERSION, e.g. VERSION=v0.1.0"
need_version VERSION
need RELEASE_GO '^go[0-9]+\.[0-9]+(\.[0-9]+)?$' 'a Go toolchain name such as go1.26.8'
need RELEASE_ALLOW_DIRTY '^[01]$' '0 or 1'
RELEASE_GO="${RELEASE_GO:-go1.26.8}"
if [[ -n "$(git status --porcelain 2>/dev/null)" && "${RELEASE_ALLOW_DIRTY:-}" != 1 ]]; then
  die "the work tree has uncommitted changes; commit them (or set RELEASE_ALLOW_DIRTY=1 for a trial build, which BUILDINFO marks)"
fi

export GOTOOLCHAIN="$RELEASE_GO" CGO_ENABLED=0 GOFLAGS=-mod=readonly
export GOAMD64=v1 GOARM64=v8.0 GOEXPERIMENT='' GOFIPS140=off
if [[ "$(go env GOVERSION)" != "$RELEASE_GO" ]]; then
  die "the go command runs $(go env GOVERSION), not $RELEASE_GO"
fi

module="github.com/idsec-labs/vault-plugin-secrets-cyberark"
plugin="vault-plugin-secrets-cyberark"
out="dist/$VERSION"
rm -rf "$out"
mkdir -p "$out"

for target in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64; do
  os="${target%/*}"
  arch="${target#*/}"
  GOOS="$os" GOARCH="$arch" go build -trimpath -buildvcs=false \
    -ldflags "-X $module.Version=$VERSION -buildid=" \
    -o "$out/${plugin}_${VERSION}_${os}_${arch}" "./cmd/$plugin"
done
(
  cd "$out"
  for f in "${plugin}"_*; do
    echo "$(sha256_of "$f")  $f"
  done >SHA256SUMS
)
{
  echo "version: $VERSION"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
    echo "tree: dirty (RELEASE_ALLOW_DIRTY=1): not a release"
  fi
  echo "go: $(go env GOVERSION)"
} >"$out/BUILDINFO"
log "$out"
cat "$out/SHA256SUMS" "$out/BUILDINFO"
