#!/usr/bin/env bash
# The project's test command (README): fetches Go modules, builds or reuses the pinned
# Vault, runs the demo once, then runs every test with the race detector. End-to-end tests start their own
# Vault servers, Vault Agents and tenant emulators and stop them when they finish.
set -euo pipefail
cd "$(dirname "$0")/.."

# -race needs cgo, and cgo a C compiler.
if ! command -v "$(go env CC)" >/dev/null 2>&1; then
  echo "test: the race detector needs a C compiler ($(go env CC)); install gcc" >&2
  exit 1
fi
go mod download
if [[ -z "${VAULT_BIN:-}" ]]; then
  VAULT_BIN="$(scripts/vault-build.sh)"
fi
export VAULT_BIN
echo "test: using $("$VAULT_BIN" version) at $VAULT_BIN"

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

# The unit tests first, then the end-to-end tests on their own, last, so that the test
# runner's own summary closes the output: run side by side, the race-detecting unit
# suite slows the Raft cluster test's elections on 2 cores.
mapfile -t unit_packages < <(go list ./... | grep -v '/e2e$')
go test -race -count=1 -timeout 30m "$@" "${unit_packages[@]}"
go test -race -count=1 -timeout 30m "$@" ./e2e/...
