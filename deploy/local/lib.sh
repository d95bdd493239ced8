# Sourced by the scripts in deploy/local: paths, settings, small helpers.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN="$ROOT/.run"
mkdir -p "$RUN/logs" "$RUN/pids"

# What the caller set before dev.env is read: a DATABASE_URL or
# KAFKA_BOOTSTRAP_SERVERS from outside means "use that, start nothing local".
# The verdict is exported (LOCAL_DB, LOCAL_KAFKA) so that scripts run from a
# shell that already loaded dev.env (make test, the tests) reach the same one.
if [ -z "${LOCAL_DB+x}" ]; then
  if [ -n "${DATABASE_URL:-}" ]; then LOCAL_DB=0; else LOCAL_DB=1; fi
fi
if [ -z "${LOCAL_KAFKA+x}" ]; then
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then LOCAL_KAFKA=0; else LOCAL_KAFKA=1; fi
fi
export LOCAL_DB LOCAL_KAFKA
EXTERNAL_DB=; [ "$LOCAL_DB" = 1 ] || EXTERNAL_DB=1
EXTERNAL_KAFKA=; [ "$LOCAL_KAFKA" = 1 ] || EXTERNAL_KAFKA=1

# dev.env fills in whatever the environment does not already set.
load_env() {
  local line key
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    key=${line%%=*}
    if [ -z "${!key+x}" ]; then export "${line?}"; fi
  done < "$ROOT/deploy/local/dev.env"
}
load_env

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*"; }
die() { printf '[%s] error: %s\n' "$(basename "$0" .sh)" "$*" >&2; exit 1; }

PY="$ROOT/.venv/bin/python"

# pid_alive FILE: the pid in FILE names a running process (a killed one that is
# not reaped yet, a zombie, is not running).
pid_alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$pid/stat" 2>/dev/null
}

# port_open HOST PORT: something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# stop_pid NAME FILE [SECONDS]: TERM the process named in FILE, KILL it after
# SECONDS, remove FILE. Only ever touches the pid we recorded ourselves.
stop_pid() {
  local name=$1 file=$2 wait=${3:-15} pid i
  if ! pid_alive "$file"; then rm -f "$file"; log "$name: not running"; return 0; fi
  pid=$(cat "$file")
  log "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: pid $pid still alive after ${wait}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

APT_UPDATED=
apt_install() {
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
