# shellcheck shell=bash
# What the scripts here share. Sourced, not run; the caller sets prog, its name in
# messages, first.
#
# Every value a script takes from the environment goes through one of the need_*
# checks before any other use: a value reaches shell arithmetic, an array index, a
# linker flag or a config file only once it matches a strict pattern. (In arithmetic,
# a value such as 'PATH[$(cmd)]' runs cmd; in -ldflags, a space adds a flag.)

log() { printf '%s: %s\n' "${prog:-script}" "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# check NAME VALUE REGEX WHAT: VALUE, which came from NAME, matches REGEX, or the
# script stops, saying what NAME must be. The value is quoted with %q, so that what is
# refused is shown, not run or rendered.
check() {
  local name="$1" value="$2" re="$3" what="$4"
  [[ "$value" =~ $re ]] || die "$name must be $what; got $(printf '%q' "$value")"
}

# need NAME REGEX WHAT: the environment variable NAME is unset or empty, or matches
# REGEX.
need() {
  local value="${!1:-}"
  [[ -z "$value" ]] || check "$1" "$value" "$2" "$3"
}

# version_re is a semantic version with a leading v, as Vault's catalog takes it.
version_re='^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$'
version_what='a semantic version with a leading v (v1.2.3 or v1.2.3-rc.1)'
need_version() { need "$1" "$version_re" "$version_what"; }

# path_re: letters, digits and . _ / + @ , - only, and no leading -. Paths reach
# command lines and, in cluster.sh, HCL strings, where a quote or a $ would be code.
path_re='^[A-Za-z0-9._/+@,][A-Za-z0-9._/+@,-]*$'
path_what='a path of letters, digits and . _ / + @ , - (no spaces, quotes or $; not starting with -)'
need_path() { need "$1" "$path_re" "$path_what"; }

# need_exec NAME: NAME, if set, is such a path, to an executable file.
need_exec() {
  need_path "$1"
  local value="${!1:-}"
  [[ -z "$value" || (-f "$value" && -x "$value") ]] || die "$1=$value is not an executable file"
}

# check_port NAME VALUE: a loopback API port; the next one must be usable too, since a
# Vault's cluster listener takes it.
check_port() {
  check "$1" "$2" '^[0-9]{1,5}$' "a port number from 1024 to 65534"
  # Decimal digits only by now, so the arithmetic sees a number and nothing else.
  ((10#$2 >= 1024 && 10#$2 <= 65534)) || die "$1 must be a port number from 1024 to 65534; got $2"
}
need_port() {
  local value="${!1:-}"
  [[ -z "$value" ]] || check_port "$1" "$value"
}

# need_count NAME MIN MAX: a whole number from MIN to MAX.
need_count() {
  local value="${!1:-}"
  [[ -n "$value" ]] || return 0
  check "$1" "$value" '^[0-9]{1,6}$' "a whole number from $2 to $3"
  ((10#$value >= $2 && 10#$value <= $3)) || die "$1 must be a whole number from $2 to $3; got $value"
}

# need_duration NAME: a Go duration of one unit, such as 500ms, 3s or 2m.
need_duration() { need "$1" '^[0-9]{1,5}(ms|s|m)$' 'a duration such as 500ms, 3s or 2m'; }

# run_child CMD...: runs CMD and returns its status. INT and TERM sent to the script are
# passed on to CMD, and the script waits for it, so that CMD stops what it started
# before the script goes on to exit.
run_child() {
  local pid status
  "$@" &
  pid=$!
  # shellcheck disable=SC2064 # pid is fixed now, and the trap outlives this function
  trap "kill -TERM $pid 2>/dev/null || true" INT TERM
  while :; do
    status=0
    wait "$pid" || status=$?
    # A trapped signal ends the wait early; the child may still be stopping.
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - INT TERM
  return "$status"
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}
