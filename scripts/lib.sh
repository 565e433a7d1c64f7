# shellcheck shell=bash
# Helpers that scripts/demo.sh and scripts/bench.sh share: each starts a tenant emulator
# and a Vault dev server, waits for them, and stops them (and the plugins Vault started)
# when it exits. Sourced, not run; the caller defines log.

# stop_pid PID: SIGTERM, up to 10s to exit, then SIGKILL.
stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# stop_vault PID: stops a Vault server and then the plugins it started, noted first by
# their parent, in case Vault cannot stop them itself.
stop_vault() {
  local pid="$1" plugin_pids="" p
  if command -v pgrep >/dev/null 2>&1; then
    plugin_pids="$(pgrep -P "$pid" || true)"
  fi
  stop_pid "$pid"
  for p in $plugin_pids; do
    kill -KILL "$p" 2>/dev/null || true
  done
}

# stop_started: stops the Vault server and the emulator that the caller started, as
# its vault_pid and emulator_pid name them, and waits for its other children.
stop_started() {
  if [[ -n "${vault_pid:-}" ]]; then
    stop_vault "$vault_pid"
  fi
  if [[ -n "${emulator_pid:-}" ]]; then
    stop_pid "$emulator_pid"
  fi
  wait 2>/dev/null || true
}

# port_in_use PORT: something accepts connections on 127.0.0.1:PORT.
port_in_use() {
  (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port_pair [PORT]: PORT if it and the next port (a dev server's cluster listener)
# are free, else a random free pair; prints the first port, or fails.
free_port_pair() {
  local port="${1:-$((20000 + RANDOM % 20000))}" i
  for ((i = 0; i < 50; i++)); do
    if ! port_in_use "$port" && ! port_in_use "$((port + 1))"; then
      echo "$port"
      return 0
    fi
    port=$((20000 + RANDOM % 20000))
  done
  log "no free pair of loopback ports found"
  return 1
}

# wait_for WHAT PID SECONDS COMMAND...: polls COMMAND until it succeeds, failing early
# if PID exits, or after SECONDS.
wait_for() {
  local what="$1" pid="$2" seconds="$3" i
  shift 3
  for ((i = 0; i < seconds * 10; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  log "$what did not start within ${seconds}s"
  return 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}
