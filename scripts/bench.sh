#!/usr/bin/env bash
# make bench: the engine inside a real Vault, against Vault's own floors. Builds (once)
# or reuses the pinned Vault, then runs the benchmark command (internal/bench), which
# builds the engine, the trivial bench plugin and the tenant emulator, starts the
# emulator and a Vault dev server on loopback, registers and mounts both plugins, and
# prints (and writes as markdown) the table of docs/performance.md. Everything it starts
# is stopped, and its temporary directories removed, when it exits.
#
# Environment: VAULT_BIN (default scripts/vault-build.sh's), BENCH_OUT (markdown file,
# default bench/results.md), BENCH_ROUNDS (3), BENCH_DURATION (3s), BENCH_WARMUP (1s),
# BENCH_CONC (16), BENCH_READERS (200), TMPDIR. BENCH_PROFILE=DIR runs the engine's
# pprof build (internal/bench/engineprof) instead and writes CPU and allocation
# profiles of it under load to DIR, with no table. BENCH_ONLY=key,... runs only those
# reads, with no table (for development).
set -euo pipefail
cd "$(dirname "$0")/.."
prog=bench
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_exec VAULT_BIN
need_path BENCH_OUT
need_count BENCH_ROUNDS 1 100
need_duration BENCH_DURATION
need_duration BENCH_WARMUP
need_count BENCH_CONC 1 1024
need_count BENCH_READERS 1 10000
need_path BENCH_PROFILE
need BENCH_ONLY '^[a-z]+(,[a-z]+)*$' 'scenario keys, comma-separated (kv,plain,small,jwt,direct,client,uncached,tracked,reuse,leasefree)'
need_path TMPDIR

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cyberark-bench.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [[ -z "${VAULT_BIN:-}" ]]; then
  log "finding Vault (scripts/vault-build.sh builds it the first time: several minutes)"
  VAULT_BIN="$(scripts/vault-build.sh)"
fi
go build -o "$tmp/bench" ./internal/bench
args=(
  -vault "$VAULT_BIN"
  -rounds "${BENCH_ROUNDS:-3}" -duration "${BENCH_DURATION:-3s}" -warmup "${BENCH_WARMUP:-1s}"
  -c "${BENCH_CONC:-16}" -readers "${BENCH_READERS:-200}" -out "${BENCH_OUT:-bench/results.md}"
)
if [[ -n "${BENCH_ONLY:-}" ]]; then
  args+=(-only "$BENCH_ONLY")
fi
if [[ -n "${BENCH_PROFILE:-}" ]]; then
  args+=(-profile-dir "$BENCH_PROFILE")
fi
run_child "$tmp/bench" "${args[@]}"
