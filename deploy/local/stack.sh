#!/usr/bin/env bash
# The whole local stack: PostgreSQL, Kafka, migrations and topics, the four services.
#   stack.sh infra   PostgreSQL and Kafka only (what the tests need)
#   stack.sh up      everything, in the background; returns when every /readyz answers 200
#   stack.sh run     everything in the foreground; Ctrl-C stops all of it
#   stack.sh down    stop the services, Kafka and PostgreSQL that we started
#   stack.sh status
set -euo pipefail
HERE=$(dirname "$0")
source "$HERE/lib.sh"

infra() {
  "$HERE/postgres.sh" start
  "$HERE/kafka.sh" start
}

migrate() { (cd "$ROOT" && "$PY" -m tools.migrate up); }

down() {
  "$HERE/services.sh" stop
  "$HERE/kafka.sh" stop
  "$HERE/postgres.sh" stop
}

case "${1:-status}" in
  infra) infra ;;
  migrate) infra; migrate ;;
  up)
    infra; migrate
    "$HERE/services.sh" start
    log "stack is up: api http://127.0.0.1:8080, ingest http://127.0.0.1:8081 (their metrics on :9104, :9105), matcher :9101, dispatcher :9102"
    log "logs: $RUN/logs/{ingest,matcher,dispatcher,api}.log, $RUN/kafka/kafka.log, $RUN/postgres/postgres.log"
    log "stop it with: make down"
    ;;
  run)
    infra; migrate
    trap 'trap - INT TERM; echo; down; exit 0' INT TERM
    "$HERE/services.sh" run &
    wait $! || true
    down
    ;;
  down) down ;;
  status)
    "$HERE/postgres.sh" status || true
    "$HERE/kafka.sh" status || true
    "$HERE/services.sh" status
    ;;
  *) die "usage: $0 infra|migrate|up|run|down|status" ;;
esac
