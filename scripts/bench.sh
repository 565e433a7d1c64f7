#!/usr/bin/env bash
# make bench: the engine inside a real Vault, against Vault's own floors. Builds (once)
# or reuses the pinned Vault, then runs the benchmark command (internal/bench), which
# builds the engine, the trivial bench plugin and the tenant emulator, starts two
# emulators (one offering HTTP/1.1 alone), a simulated WAN proxy before each and a
# Vault dev server on loopback, registers and mounts both plugins, measures, then
# measures Vault's storage on a second dev server on Raft, and prints (and writes as
# markdown) the tables of docs/performance.md. Everything it starts is stopped, and
# its temporary directories removed, when it exits.
#
# Environment: VAULT_BIN (default scripts/vault-build.sh's), BENCH_OUT (markdown file,
# default bench/results.md), BENCH_ROUNDS (3), BENCH_DURATION (3s), BENCH_WARMUP (1s),
# BENCH_CONC (16), BENCH_READERS (200), BENCH_WAN_RTT (the simulated WAN's round
# trip, 40ms), BENCH_WAN_CONC (readers across it, 64), BENCH_STORAGE_READS (reads of
# each role for the storage figure, 20000), TMPDIR. BENCH_PROFILE=DIR runs the engine's
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
need_duration BENCH_WAN_RTT
need_count BENCH_WAN_CONC 1 1024
need_count BENCH_STORAGE_READS 1 1000000
need_path BENCH_PROFILE
need BENCH_ONLY '^[a-z0-9]+(,[a-z0-9]+)*$' 'scenario keys, comma-separated (kv,plain,small,jwt,direct,client,uncached,tracked,reuse,leasefree,wanh2,wandirecth2,wanh1,wandirecth1,wanh2gate)'
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
  -wan-rtt "${BENCH_WAN_RTT:-40ms}" -wan-c "${BENCH_WAN_CONC:-64}" -storage-reads "${BENCH_STORAGE_READS:-20000}"
)
if [[ -n "${BENCH_ONLY:-}" ]]; then
  args+=(-only "$BENCH_ONLY")
fi
if [[ -n "${BENCH_PROFILE:-}" ]]; then
  args+=(-profile-dir "$BENCH_PROFILE")
fi
run_child "$tmp/bench" "${args[@]}"
