#!/usr/bin/env bash
# The project's test command (README): fetches Go modules, builds or reuses the pinned
# Vaults, runs the demo once, then runs every test with the race detector, and the
# end-to-end tests once per Vault version. End-to-end tests start their own Vault
# servers, Vault Agents and tenant emulators and stop them when they finish.
#
# The Vaults are every version in scripts/vault-build.sh's table (1.19.5, the LTS, and
# 1.21.2), each built once and cached. VAULT_VERSION=1.21.2 runs the end-to-end tests on
# that version only (or on a list: VAULT_VERSION='1.19.5 1.21.2'); VAULT_BIN=/path/to/vault
# on that binary only. The demo runs once, on the first.
set -euo pipefail
cd "$(dirname "$0")/.."
prog="test"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
need_exec VAULT_BIN

# -race needs cgo, and cgo a C compiler.
if ! command -v "$(go env CC)" >/dev/null 2>&1; then
  echo "test: the race detector needs a C compiler ($(go env CC)); install gcc" >&2
  exit 1
fi
go mod download
vault_bins=()
if [[ -n "${VAULT_BIN:-}" ]]; then
  vault_bins=("$VAULT_BIN")
else
  # vault-build.sh checks each version; "--versions" is its table, the LTS first. One
  # build after the other: a cold build takes both cores for minutes.
  version_list="${VAULT_VERSION:-}"
  [[ -n "$version_list" ]] || version_list="$(scripts/vault-build.sh --versions)"
  read -ra versions <<<"$version_list"
  for version in "${versions[@]}"; do
    bin="$(VAULT_VERSION="$version" scripts/vault-build.sh)"
    vault_bins+=("$bin")
  done
fi
for bin in "${vault_bins[@]}"; do
  echo "test: using $("$bin" version) at $bin"
done
VAULT_BIN="${vault_bins[0]}"
export VAULT_BIN

# E2E_REQUIRED turns a missing Vault into a failure instead of a skip.
export E2E_REQUIRED=1
go vet ./...

# The demo is a promise to new users: run it once, end to end, and check that it
# printed a token with its lease (its output holds an emulator token, so it stays in a
# file).
demo_log="$(mktemp)"
trap 'rm -f "$demo_log"' EXIT
if ! DEMO_ONCE=1 VAULT_BIN="$VAULT_BIN" scripts/demo.sh >"$demo_log" 2>&1 ||
  ! grep -q '^lease_renewable *false' "$demo_log" || ! grep -q '^access_token *eyJ' "$demo_log"; then
  echo "demo: FAILED; its output without tokens:" >&2
  grep -v -e '^access_token' -e 'VAULT_TOKEN' "$demo_log" >&2 || true
  exit 1
fi
echo "demo: ok ($(grep '^lease_duration' "$demo_log" | tr -s ' '))"

# The rotation model test without the race detector, which would slow its histories
# several times over: a few thousand seeded histories, each event followed by every
# invariant check; it prints "N histories". make model runs many more.
go test -count=1 -run 'TestRotationModel$' -v . | grep -E 'histories|^(---|ok|FAIL)|seed'

# The unit tests first, then the end-to-end tests on their own, last: run side by side,
# the race-detecting unit suite slows the Raft cluster test's elections on 2 cores. One
# Vault version after the other, for the same reason; a failure on one still lets the
# next run, and the summary of each closes the output.
mapfile -t unit_packages < <(go list ./... | grep -v '/e2e$')
go test -race -count=1 -timeout 30m "$@" "${unit_packages[@]}"
#
# A failing end-to-end test prints the logs of its Vaults, which push its own messages
# far above the end of the output, where CI shows only the tail: the failures' first
# lines ("--- FAIL" and each file:line message, without the logs under them) are
# printed again at the very end.
summary=()
failures=()
failed=0
e2e_log="$(mktemp)"
trap 'rm -f "$demo_log" "$e2e_log"' EXIT
for bin in "${vault_bins[@]}"; do
  version="$("$bin" version | cut -d, -f1)"
  echo "test: end-to-end tests on $version"
  start=$SECONDS
  status=ok
  VAULT_BIN="$bin" go test -race -count=1 -timeout 30m "$@" ./e2e/... 2>&1 | tee "$e2e_log" || status=FAILED
  if [[ "$status" != ok ]]; then
    failed=1
    failures+=("test: what failed on $version (the first 80 lines):")
    mapfile -t lines < <(grep -E '^ *(--- FAIL|panic:|[A-Za-z0-9_]+_test\.go:[0-9]+: )' "$e2e_log" | head -n 80)
    failures+=("${lines[@]}")
  fi
  summary+=("test: end-to-end on $version: $status ($((SECONDS - start)) s)")
done
[[ "$failed" == 0 ]] || printf '%s\n' "${failures[@]}"
printf '%s\n' "${summary[@]}"
exit "$failed"
