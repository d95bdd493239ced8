#!/usr/bin/env bash
# The four services of the local stack, each `python -m services.<name>`.
#   services.sh start   start in the background (logs in .run/logs), wait for every /readyz
#   services.sh stop    SIGTERM each service we started (by its pid)
#   services.sh run     start in the foreground; Ctrl-C (or TERM) stops them all
#   services.sh status
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SERVICES=(ingest matcher dispatcher api)
declare -A PORT=([api]=8080 [ingest]=8081 [matcher]=9101 [dispatcher]=9102)
# The API's and ingest's second port: /metrics and the detailed /readyz (OPS_PORT).
declare -A OPS_PORT=([api]=9104 [ingest]=9105)

start_one() {
  local name=$1 pidfile="$RUN/pids/$name.pid"
  if pid_alive "$pidfile"; then log "$name: already running (pid $(cat "$pidfile"))"; return 0; fi
  local port ops=${OPS_PORT[$name]:-}
  for port in "${PORT[$name]}" $ops; do
    if port_open 127.0.0.1 "$port"; then die "$name: port $port is taken by another process"; fi
  done
  (cd "$ROOT" && HTTP_PORT=${PORT[$name]} OPS_PORT=${ops:-0} exec "$PY" -m "services.$name") \
    >>"$RUN/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  log "$name: started pid $! on 127.0.0.1:${PORT[$name]}${ops:+ (metrics: 127.0.0.1:$ops)} (log: .run/logs/$name.log)"
}

wait_ready() {
  local name deadline=$((SECONDS + ${READY_TIMEOUT:-90}))
  for name in "${SERVICES[@]}"; do
    until curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$name]}/readyz" 2>/dev/null; do
      if ! pid_alive "$RUN/pids/$name.pid"; then
        tail -n 30 "$RUN/logs/$name.log" >&2
        die "$name exited during start (log: .run/logs/$name.log)"
      fi
      [ $SECONDS -lt $deadline ] || die "$name not ready after ${READY_TIMEOUT:-90}s (log: .run/logs/$name.log)"
      sleep 0.2
    done
    log "$name: ready (http://127.0.0.1:${PORT[$name]}/readyz)"
  done
}

stop_all() {
  local name
  for name in "${SERVICES[@]}"; do stop_pid "$name" "$RUN/pids/$name.pid" 12; done
}

case "${1:-status}" in
  start)
    for name in "${SERVICES[@]}"; do start_one "$name"; done
    wait_ready
    log "all services ready; logs in $RUN/logs"
    ;;
  stop) stop_all ;;
  run)
    trap 'echo; log "stopping"; stop_all; exit 0' INT TERM
    for name in "${SERVICES[@]}"; do start_one "$name"; done
    wait_ready
    log "all services ready; following their logs (Ctrl-C stops everything)"
    tail -n 0 -F $(printf "$RUN/logs/%s.log " "${SERVICES[@]}") --pid=$$ 2>/dev/null &
    while true; do
      for name in "${SERVICES[@]}"; do
        pid_alive "$RUN/pids/$name.pid" || { log "$name exited"; stop_all; exit 1; }
      done
      sleep 1
    done
    ;;
  status)
    for name in "${SERVICES[@]}"; do
      if pid_alive "$RUN/pids/$name.pid"; then echo "$name: running (pid $(cat "$RUN/pids/$name.pid"))"
      else echo "$name: stopped"; fi
    done
    ;;
  *) die "usage: $0 start|stop|run|status" ;;
esac
