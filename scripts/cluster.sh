#!/usr/bin/env bash
# A 3-node Vault cluster with integrated storage (Raft) on loopback, from the pinned
# Vault, with this plugin registered by SHA-256 and version and enabled: the cluster the
# HA tests run on, and one a person can try failover on (docs/high-availability.md).
#
#   scripts/cluster.sh start           start, initialise, unseal, join, register, enable
#   scripts/cluster.sh status          each node's state and the Raft peers
#   scripts/cluster.sh kill-node N     SIGKILL node N and its plugins, as a crash would
#   scripts/cluster.sh stop-node N     stop node N gracefully (it steps down first)
#   scripts/cluster.sh start-node N    start node N again, unseal it, wait until it serves
#   scripts/cluster.sh stop            stop every node and remove the cluster's files
#
# Environment:
#   CLUSTER_DIR        where the nodes keep config, data, plugins and the init secrets
#                      (default: .cluster in the repository, ignored by git)
#   CLUSTER_LOG_DIR    where node N writes nodeN.log (default: $CLUSTER_DIR/logs); the
#                      tests keep logs outside CLUSTER_DIR to check them after a stop
#   CLUSTER_PORTS      three API ports (default "8210 8220 8230"); each node's cluster
#                      port is its API port + 1
#   CLUSTER_LOG_LEVEL  the nodes' -log-level (default info)
#   CLUSTER_MOUNT      where the engine is enabled (default cyberark)
#   VAULT_BIN          the Vault to run (default: scripts/vault-build.sh builds or reuses it)
#   PLUGIN_BIN         the plugin binary to serve (default: built from this tree)
#   VERSION            the version the plugin reports and is registered under
#                      (default v0.1.0-dev, as the Makefile's)
#   HTTPS_PROXY, NO_PROXY  passed on to the nodes, for a plugin that calls a real tenant
#
# Each of these is checked against a strict pattern before use (scripts/lib.sh).
#
# The cluster is for tests and trials only: its API listens on loopback without TLS,
# and the one unseal key and the root token sit in $CLUSTER_DIR (mode 0600).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077
prog=cluster
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

module="github.com/idsec-labs/vault-plugin-secrets-cyberark"
plugin="vault-plugin-secrets-cyberark"
nodes=(1 2 3)
# marker names start's own file in CLUSTER_DIR: stop removes nothing without it.
marker=".vault-plugin-secrets-cyberark-cluster"

# CLUSTER_DIR and CLUSTER_LOG_DIR end up inside the nodes' HCL files, as strings.
need_path CLUSTER_DIR
need_path CLUSTER_LOG_DIR
need CLUSTER_LOG_LEVEL '^(trace|debug|info|warn|error)$' 'one of trace, debug, info, warn, error'
need CLUSTER_MOUNT '^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$' 'a mount path of letters, digits, _ and -, in /-separated segments'
need CLUSTER_PORTS '^[0-9]+ [0-9]+ [0-9]+$' 'three port numbers separated by single spaces'
need_exec VAULT_BIN
need_exec PLUGIN_BIN
need_version VERSION
need HTTPS_PROXY '^https?://[A-Za-z0-9._~:/@%+-]+$' 'an http:// or https:// proxy URL'
need NO_PROXY '^[A-Za-z0-9._*:/,-]+$' 'a comma-separated list of hosts, domains and CIDRs'

CLUSTER_DIR="${CLUSTER_DIR:-$PWD/.cluster}"
CLUSTER_LOG_DIR="${CLUSTER_LOG_DIR:-$CLUSTER_DIR/logs}"
CLUSTER_LOG_LEVEL="${CLUSTER_LOG_LEVEL:-info}"
CLUSTER_MOUNT="${CLUSTER_MOUNT:-cyberark}"
VERSION="${VERSION:-v0.1.0-dev}"
read -r -a ports <<<"${CLUSTER_PORTS:-8210 8220 8230}"
for i in 0 1 2; do
  check_port CLUSTER_PORTS "${ports[i]}"
  # Decimal from here on: 08210 would otherwise read as a bad octal number.
  ports[i]=$((10#${ports[i]}))
done
# Each node takes its port and the next; no two nodes may share one.
if (((ports[0] - ports[1]) ** 2 <= 1 || (ports[0] - ports[2]) ** 2 <= 1 || (ports[1] - ports[2]) ** 2 <= 1)); then
  die "CLUSTER_PORTS must be three ports at least 2 apart (each node also takes the next port); got ${CLUSTER_PORTS:-}"
fi
case "$CLUSTER_DIR" in
/*) ;;
*) CLUSTER_DIR="$PWD/$CLUSTER_DIR" ;;
esac
case "$CLUSTER_LOG_DIR" in
/*) ;;
*) CLUSTER_LOG_DIR="$PWD/$CLUSTER_LOG_DIR" ;;
esac
# The repository's own path, which the defaults and relative paths start from, passes
# the same check: it too lands in the HCL files.
check CLUSTER_DIR "$CLUSTER_DIR" "$path_re" "$path_what"
check CLUSTER_LOG_DIR "$CLUSTER_LOG_DIR" "$path_re" "$path_what"

node_dir() { printf '%s/node%s' "$CLUSTER_DIR" "$1"; }
api_port() { printf '%s' "${ports[$(($1 - 1))]}"; }
addr() { printf 'http://127.0.0.1:%s' "$(api_port "$1")"; }
node_pid() { cat "$(node_dir "$1")/pid" 2>/dev/null || true; }

check_node() {
  [[ "$1" =~ ^[123]$ ]] || die "node must be 1, 2 or 3, got '${1:-}'"
}

# vault_cli ARGS: the Vault CLI, with the cluster's root token once there is one, and
# none of the caller's VAULT_ variables (an exported VAULT_ADDR or VAULT_NAMESPACE would
# send the commands elsewhere). The token goes in the environment, which other users
# cannot read, never on a command line, which they can.
vault_cli() {
  (
    unset VAULT_ADDR VAULT_NAMESPACE VAULT_TOKEN VAULT_CACERT VAULT_SKIP_VERIFY
    export HOME="$CLUSTER_DIR"
    if [[ -f "$CLUSTER_DIR/root-token" ]]; then
      VAULT_TOKEN="$(cat "$CLUSTER_DIR/root-token")"
      export VAULT_TOKEN
    fi
    exec "$VAULT_BIN" "$@"
  )
}

# status_of N: "active", "standby", "sealed", or "down" (no answer).
status_of() {
  local out rc=0
  out="$(vault_cli status -address="$(addr "$1")" 2>/dev/null)" || rc=$?
  case "$rc" in
  0) awk '$1 == "HA" && $2 == "Mode" { print $3; found=1 } END { if (!found) print "unsealed" }' <<<"$out" ;;
  2) echo sealed ;;
  *) echo down ;;
  esac
}

# wait_status N WANT... : until node N's status is one of WANT, at most 90s.
wait_status() {
  local n="$1" i st
  shift
  for ((i = 0; i < 900; i++)); do
    st="$(status_of "$n")"
    for want in "$@"; do
      [[ "$st" == "$want" ]] && return 0
    done
    local pid
    pid="$(node_pid "$n")"
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$CLUSTER_LOG_DIR/node$n.log" >&2 || true
      die "node $n exited while waiting for it to be $*"
    fi
    sleep 0.1
  done
  die "node $n is '$st' after 90s, want $*"
}

write_config() {
  local n="$1" dir port
  dir="$(node_dir "$n")"
  port="$(api_port "$n")"
  mkdir -p "$dir/data" "$dir/plugins"
  cat >"$dir/vault.hcl" <<EOF
# Node $n of the local test cluster (scripts/cluster.sh).
storage "raft" {
  path    = "$dir/data"
  node_id = "node$n"
  # 1 is the production setting: a dead leader is noticed in about a second.
  performance_multiplier = 1
}

listener "tcp" {
  address         = "127.0.0.1:$port"
  cluster_address = "127.0.0.1:$((port + 1))"
  # Loopback only, for tests and trials; a real cluster serves TLS.
  tls_disable = true
}

api_addr         = "http://127.0.0.1:$port"
cluster_addr     = "https://127.0.0.1:$((port + 1))"
plugin_directory = "$dir/plugins"
disable_mlock    = true
ui               = false
EOF
}

start_process() {
  local n="$1" dir pid
  dir="$(node_dir "$n")"
  if node_running "$n"; then
    die "node $n is already running (pid $(node_pid "$n"))"
  fi
  mkdir -p "$CLUSTER_LOG_DIR"
  # Its own session, so that kill-node can end Vault and the plugins it started
  # together, as the death of a machine would; a clean environment, so that no
  # VAULT_ variable of the caller's changes what the server does.
  setsid env -i PATH="$PATH" HOME="$dir" \
    ${HTTPS_PROXY:+HTTPS_PROXY="$HTTPS_PROXY"} ${NO_PROXY:+NO_PROXY="$NO_PROXY"} \
    "$VAULT_BIN" server -config="$dir/vault.hcl" -log-level="$CLUSTER_LOG_LEVEL" \
    >>"$CLUSTER_LOG_DIR/node$n.log" 2>&1 </dev/null &
  echo "$!" >"$dir/pid"
}

unseal() {
  vault_cli write -address="$(addr "$1")" sys/unseal key=@"$CLUSTER_DIR/unseal-key" >/dev/null
}

# knows_leader N: node N can name the active node, so it can forward requests to it. A
# standby that has just unsealed answers "active cluster node not found" until then.
knows_leader() {
  local a
  a="$(vault_cli read -address="$(addr "$1")" -field=leader_address sys/leader 2>/dev/null)" || return 1
  [[ -n "$a" ]]
}

wait_knows_leader() {
  local i
  for ((i = 0; i < 600; i++)); do
    knows_leader "$1" && return 0
    sleep 0.1
  done
  die "node $1 found no active node in 60s"
}

voters() {
  vault_cli operator raft list-peers -address="$(addr "$1")" 2>/dev/null | awk '$NF == "true" { n++ } END { print n + 0 }'
}

# leader: the number of the active node, or nothing.
leader() {
  local n
  for n in "${nodes[@]}"; do
    if [[ "$(status_of "$n")" == active ]]; then
      echo "$n"
      return 0
    fi
  done
}

plugin_binary() {
  if [[ -n "${PLUGIN_BIN:-}" ]]; then
    echo "$PLUGIN_BIN"
    return
  fi
  local out="$CLUSTER_DIR/build/$plugin"
  mkdir -p "$CLUSTER_DIR/build"
  log "building the plugin $VERSION"
  go build -trimpath -ldflags "-X $module.Version=$VERSION" -o "$out" "./cmd/$plugin"
  echo "$out"
}

cmd_start() {
  if [[ -e "$CLUSTER_DIR/init-done" ]]; then
    die "a cluster already lives in $CLUSTER_DIR; run '$0 stop' first"
  fi
  if [[ -d "$CLUSTER_DIR" && -n "$(ls -A "$CLUSTER_DIR" 2>/dev/null)" && ! -e "$CLUSTER_DIR/$marker" ]]; then
    die "$CLUSTER_DIR exists and is not a cluster this script made; choose another CLUSTER_DIR"
  fi
  VAULT_BIN="${VAULT_BIN:-$(scripts/vault-build.sh)}"
  local n bin sha leader_addr
  mkdir -p "$CLUSTER_DIR"
  touch "$CLUSTER_DIR/$marker"
  # A start that fails part way stops what it started; the files stay, for the logs.
  trap 'stop_all; log "start failed: the nodes are stopped; their files and logs are in $CLUSTER_DIR (remove them with: $0 stop)"' EXIT
  bin="$(plugin_binary)"
  sha="$(sha256_of "$bin")"
  for n in "${nodes[@]}"; do
    write_config "$n"
    # Every node executes the plugin from its own directory; the catalog entry, with
    # the SHA-256 each copy is checked against, is one for the cluster.
    cp "$bin" "$(node_dir "$n")/plugins/$plugin"
    start_process "$n"
  done
  for n in "${nodes[@]}"; do
    wait_status "$n" sealed
  done

  log "initialising node 1 (one unseal key, for trials only)"
  vault_cli operator init -address="$(addr 1)" -key-shares=1 -key-threshold=1 >"$CLUSTER_DIR/init.txt"
  awk -F': ' '/^Unseal Key 1:/ { print $2 }' "$CLUSTER_DIR/init.txt" >"$CLUSTER_DIR/unseal-key"
  awk -F': ' '/^Initial Root Token:/ { print $2 }' "$CLUSTER_DIR/init.txt" >"$CLUSTER_DIR/root-token"
  [[ -s "$CLUSTER_DIR/unseal-key" && -s "$CLUSTER_DIR/root-token" ]] || die "could not read the unseal key and root token from vault operator init"
  touch "$CLUSTER_DIR/init-done"
  unseal 1
  wait_status 1 active
  leader_addr="$(addr 1)"
  # New nodes join as non-voters and become voters once stable for this long (10s by
  # default); a cluster that loses its leader before then has no quorum.
  vault_cli operator raft autopilot set-config -address="$leader_addr" -server-stabilization-time=2s >/dev/null

  for n in 2 3; do
    log "joining node $n"
    vault_cli operator raft join -address="$(addr "$n")" "$leader_addr" >/dev/null
    unseal "$n"
    wait_status "$n" standby
    wait_knows_leader "$n"
  done
  local i
  for ((i = 0; i < 600; i++)); do
    [[ "$(voters 1)" == 3 ]] && break
    sleep 0.1
  done
  [[ "$(voters 1)" == 3 ]] || die "the cluster has $(voters 1) voters after 60s, want 3"

  vault_cli plugin register -address="$leader_addr" -sha256="$sha" -version="$VERSION" -command="$plugin" secret "$plugin" >/dev/null
  vault_cli secrets enable -address="$leader_addr" -path="$CLUSTER_MOUNT" -plugin-version="$VERSION" "$plugin" >/dev/null

  {
    echo "VAULT_ADDR=$leader_addr"
    echo "VAULT_TOKEN=$(cat "$CLUSTER_DIR/root-token")"
    for n in "${nodes[@]}"; do
      echo "CLUSTER_NODE${n}_ADDR=$(addr "$n")"
    done
  } >"$CLUSTER_DIR/cluster.env"

  trap - EXIT
  echo "cluster: 3 Raft nodes up, plugin $plugin $VERSION (sha256 $sha) enabled at $CLUSTER_MOUNT/"
  for n in "${nodes[@]}"; do
    echo "  node$n  $(addr "$n")  $(status_of "$n")  log $CLUSTER_LOG_DIR/node$n.log"
  done
  echo "  root token: $(cat "$CLUSTER_DIR/root-token")"
  echo "  to use it:  set -a; . $CLUSTER_DIR/cluster.env; set +a"
  echo "  to stop it: $0 stop"
}

cmd_status() {
  [[ -e "$CLUSTER_DIR/init-done" ]] || die "no cluster in $CLUSTER_DIR"
  VAULT_BIN="${VAULT_BIN:-$(scripts/vault-build.sh)}"
  local n pid l
  for n in "${nodes[@]}"; do
    pid="$(node_pid "$n")"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
      pid="-"
    fi
    echo "node$n  $(addr "$n")  pid $pid  $(status_of "$n")"
  done
  l="$(leader)"
  if [[ -n "$l" ]]; then
    vault_cli operator raft list-peers -address="$(addr "$l")"
  else
    echo "no active node"
  fi
}

# node_running N: node N's recorded pid is alive and is this node's Vault (a pid file
# left from before a reboot may name another process by now).
node_running() {
  local pid
  pid="$(node_pid "$1")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "-config=$(node_dir "$1")/vault.hcl"
}

# stop_node N SIGNAL: send SIGNAL to node N's process group, and wait up to 30s for
# Vault to exit (then SIGKILL the group). Returns 1 if the node was not running.
stop_node() {
  local n="$1" sig="$2" pid i
  if ! node_running "$n"; then
    rm -f "$(node_dir "$n")/pid"
    return 1
  fi
  pid="$(node_pid "$n")"
  kill "-$sig" -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  # A plugin that outlived its Vault goes too.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$(node_dir "$n")/pid"
}

cmd_start_node() {
  check_node "$1"
  [[ -e "$CLUSTER_DIR/init-done" ]] || die "no cluster in $CLUSTER_DIR"
  VAULT_BIN="${VAULT_BIN:-$(scripts/vault-build.sh)}"
  start_process "$1"
  wait_status "$1" sealed
  # Its Raft data already names the cluster: unsealed, it rejoins as a follower.
  unseal "$1"
  wait_status "$1" standby active
  wait_knows_leader "$1"
  echo "cluster: node$1 $(addr "$1") $(status_of "$1")"
}

stop_all() {
  local n
  for n in "${nodes[@]}"; do
    stop_node "$n" TERM || true
  done
}

# cmd_stop stops every node and removes what start made, and only that: CLUSTER_DIR
# may name a directory that holds other things.
cmd_stop() {
  if [[ -d "$CLUSTER_DIR" && ! -e "$CLUSTER_DIR/$marker" ]]; then
    die "$CLUSTER_DIR was not made by this script; nothing stopped or removed"
  fi
  stop_all
  local f
  for f in node1 node2 node3 build logs init.txt unseal-key root-token cluster.env init-done "$marker"; do
    rm -rf "${CLUSTER_DIR:?}/$f"
  done
  if rmdir "$CLUSTER_DIR" 2>/dev/null; then
    echo "cluster: stopped; $CLUSTER_DIR removed"
  else
    echo "cluster: stopped; its files are removed from $CLUSTER_DIR"
  fi
}

case "${1:-}" in
start) cmd_start ;;
status) cmd_status ;;
kill-node)
  check_node "${2:-}"
  if stop_node "$2" KILL; then echo "cluster: node$2 killed"; else echo "cluster: node$2 was not running"; fi
  ;;
stop-node)
  check_node "${2:-}"
  if stop_node "$2" TERM; then echo "cluster: node$2 stopped"; else echo "cluster: node$2 was not running"; fi
  ;;
start-node) cmd_start_node "${2:-}" ;;
stop) cmd_stop ;;
*)
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
  ;;
esac
