#!/usr/bin/env bash
# Release binaries: the plugin for linux and darwin on amd64 and arm64, built so that the
# same commit and VERSION give the same bytes on any machine (no cgo, no paths, no VCS
# stamp: the version is the one given), and SHA256SUMS for them, in dist/.
#
#   VERSION=v0.1.0 scripts/release.sh     (or: make release VERSION=v0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${VERSION:?set VERSION, e.g. VERSION=v0.1.0}"
if [[ ! "$VERSION" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "release: VERSION must be a semantic version with a leading v (v1.2.3 or v1.2.3-rc.1), got '$VERSION'" >&2
  exit 1
fi
module="github.com/idsec-labs/vault-plugin-secrets-cyberark"
plugin="vault-plugin-secrets-cyberark"
out="dist/$VERSION"
rm -rf "$out"
mkdir -p "$out"

for target in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64; do
  os="${target%/*}"
  arch="${target#*/}"
  file="${plugin}_${VERSION}_${os}_${arch}"
  CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" GOFLAGS=-mod=readonly \
    go build -trimpath -buildvcs=false -ldflags "-X $module.Version=$VERSION -buildid=" \
    -o "$out/$file" "./cmd/$plugin"
done
(cd "$out" && sha256sum "${plugin}"_* >SHA256SUMS)
echo "release: $out"
cat "$out/SHA256SUMS"
