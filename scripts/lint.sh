#!/usr/bin/env bash
# The project's lint: gofmt, go vet, golangci-lint (.golangci.yml) and shellcheck. The
# golangci-lint version is pinned and installed once with go install into a cache
# outside the tree, like the pinned Vault; shellcheck comes from Debian's package, which
# .ci/run installs when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
prog=lint
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_version GOLANGCI_LINT_VERSION
need_path LINT_CACHE_DIR
need_path XDG_CACHE_HOME
need_path HOME
GOLANGCI_LINT_VERSION="${GOLANGCI_LINT_VERSION:-v2.15.0}"

out="$(gofmt -l .)"
if [[ -n "$out" ]]; then
  log "gofmt would change:"
  echo "$out" >&2
  exit 1
fi
go vet ./...

if [[ -z "${LINT_CACHE_DIR:-}${XDG_CACHE_HOME:-}${HOME:-}" ]]; then
  die "set HOME or LINT_CACHE_DIR: there is nowhere private to cache golangci-lint"
fi
cache="${LINT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-cyberark}/golangci-lint-$GOLANGCI_LINT_VERSION"
bin="$cache/golangci-lint"
if [[ ! -x "$bin" ]]; then
  log "installing golangci-lint $GOLANGCI_LINT_VERSION into $cache (once; a few minutes)"
  mkdir -p "$cache"
  # Outside the module, so that the tool's dependencies never touch our go.mod.
  (cd "$cache" && GOBIN="$cache" GOFLAGS='' go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION")
fi
"$bin" run ./...

if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -x scripts/*.sh .ci/run
elif [[ "${CI:-}" == true ]]; then
  die "shellcheck is not installed"
else
  log "shellcheck is not installed; skipped (apt-get install shellcheck)"
fi
