#!/usr/bin/env bash
# The project's own PostgreSQL cluster under .run/postgres, on 127.0.0.1:5432,
# from Debian's packages (installed when missing). TLS is on, with the server
# certificate deploy/local/tls.sh makes (127.0.0.1, ::1, localhost, signed by the
# local CA in .run/tls/ca.pem): a client may ask for sslmode=verify-full with
# sslrootcert=.run/tls/ca.pem; one that does not ask still connects.
#   postgres.sh start   initdb on first use, start, create the login and database
#   postgres.sh stop    stop the cluster this script started (PG_STOP_MODE=immediate
#                       stops it as a crash would: no checkpoint, recovery on start)
#   postgres.sh status
# With DATABASE_URL set in the environment nothing is started: that database is used.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PGRUN="$RUN/postgres"
DATA="$PGRUN/data"
PORT=5432

find_bindir() {
  local d best=
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] || continue
    [ "$(basename "$(dirname "$d")")" -ge 15 ] 2>/dev/null || continue
    best=$d
  done
  [ -n "$best" ] && printf '%s\n' "$best"
}

ensure_installed() {
  BIN=$(find_bindir) && return 0
  log "PostgreSQL 15+ not found: installing Debian's postgresql packages"
  apt_install postgresql postgresql-contrib
  # The package creates and may start a 'main' cluster on our port: stop it,
  # we run a cluster of our own.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name port status _; do
      if [ "$status" = online ]; then
        log "stopping the packaged cluster $ver/$name on port $port"
        as_root pg_ctlcluster "$ver" "$name" stop || true
      fi
    done
  fi
  BIN=$(find_bindir) || die "PostgreSQL 15+ still not found after installing"
}

# Run a command as the cluster's OS user: postgres when we are root
# (initdb refuses root), ourselves otherwise.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# url_part FIELD: user, password, db from DATABASE_URL.
url_part() {
  python3 - "$1" <<'PY'
import sys, os, urllib.parse
u = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
print({"user": u.username, "password": urllib.parse.unquote(u.password or ""),
       "db": u.path.lstrip("/")}[sys.argv[1]])
PY
}

# As root the cluster runs as the postgres OS user, which must be able to reach
# .run/postgres: grant traverse (o+x, nothing else) to ancestors that lack it,
# e.g. a checkout under a 0700 temporary directory.
ensure_reachable() {
  [ "$(id -u)" = 0 ] || return 0
  runuser -u postgres -- test -x "$PGRUN" 2>/dev/null && return 0
  local dir=$PGRUN
  while [ "$dir" != / ]; do
    if [ -d "$dir" ] && ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
      log "granting traverse permission (o+x) on $dir to the postgres user"
      chmod o+x "$dir"
    fi
    dir=$(dirname "$dir")
  done
}

# The server's certificate and key, copied where the cluster's OS user owns them
# (PostgreSQL refuses a key file others can read).
server_tls() {
  "$ROOT/deploy/local/tls.sh" ensure
  mkdir -p "$PGRUN/tls"
  cp "$RUN/tls/server.pem" "$RUN/tls/server-key.pem" "$RUN/tls/ca.pem" "$PGRUN/tls/"
  chmod 600 "$PGRUN/tls/server-key.pem"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$PGRUN/tls"; fi
}

psql_admin() { as_pg "$BIN/psql" -h "$PGRUN" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

start() {
  if [ -n "$EXTERNAL_DB" ]; then log "DATABASE_URL is set: using it, nothing started"; return 0; fi
  ensure_installed
  mkdir -p "$PGRUN"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$PGRUN"; fi
  ensure_reachable
  if [ -f "$DATA/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "already running ($DATA, port $PORT)"
    [ "$(psql_admin -c 'SHOW ssl' 2>/dev/null)" = on ] \
      || log "warning: started without TLS; make down && make infra turns it on"
    return 0
  fi
  if port_open 127.0.0.1 "$PORT"; then
    die "port $PORT is taken by another process; stop it or set DATABASE_URL"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initdb $DATA ($("$BIN/postgres" --version))"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$PGRUN/initdb.log"
    cat >>"$DATA/postgresql.conf" <<CONF
# erc8004-backend local cluster
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$PGRUN'
max_connections = 300
shared_buffers = 512MB
shared_preload_libraries = 'pg_stat_statements'
log_min_duration_statement = 1000
CONF
  fi
  server_tls
  log "starting PostgreSQL on 127.0.0.1:$PORT with TLS (log: $PGRUN/postgres.log)"
  # Given on the command line, so a cluster made before TLS was added gets it too.
  # backend_flush_after: a backend that writes out pages itself (ingest's COPYs
  # evicting dirty buffers, autovacuum through its ring) asks the kernel to write
  # them every 256 kB, as the checkpointer and the background writer already do.
  # Left in the page cache, they gathered into a gigabyte the kernel wrote back in
  # one go every 30 s, and every commit's WAL flush waited 40-140 ms behind it
  # (docs/performance.md, "Issue 17, twelfth session").
  # WAL: ingest writes every event, its outbox row and their indexes; with the
  # default max_wal_size (1GB) a sustained load forces a checkpoint every ~25 s,
  # and after each one every page's first change writes the whole page to the
  # WAL again. 4GB and 15 minutes (docs/performance.md; deploy/README.md says
  # the same for a production database).
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$PGRUN/postgres.log" -w -t 60 \
    -o "-c ssl=on -c ssl_cert_file=$PGRUN/tls/server.pem -c ssl_key_file=$PGRUN/tls/server-key.pem -c ssl_ca_file=$PGRUN/tls/ca.pem -c max_wal_size=4GB -c checkpoint_timeout=15min -c backend_flush_after=256kB" \
    start >/dev/null
  local user password db
  user=$(url_part user); password=$(url_part password); db=$(url_part db)
  # The login owns the schema and runs migrations; it may create the service
  # roles and the tests' scratch databases, and is no superuser.
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" ]; then
    log "creating role $user"
    psql_admin -c "CREATE ROLE \"$user\" LOGIN CREATEDB CREATEROLE PASSWORD '$password'"
  fi
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
    log "creating database $db"
    psql_admin -c "CREATE DATABASE \"$db\" OWNER \"$user\""
  fi
  # pg_stat_statements for the dashboards; the extension is created by the superuser.
  as_pg "$BIN/psql" -h "$PGRUN" -p "$PORT" -U postgres -d "$db" -qtA \
    -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  log "ready: $DATABASE_URL" | sed 's#://\([^:]*\):[^@]*@#://\1:***@#'
}

stop() {
  if [ -n "$EXTERNAL_DB" ]; then log "DATABASE_URL is set: nothing of ours to stop"; return 0; fi
  BIN=$(find_bindir) || { log "not installed"; return 0; }
  if [ -f "$DATA/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "stopping PostgreSQL (pid $(head -1 "$DATA/postmaster.pid"))"
    as_pg "$BIN/pg_ctl" -D "$DATA" -m "${PG_STOP_MODE:-fast}" -w -t 60 stop >/dev/null
  else
    log "not running"
  fi
}

status() {
  BIN=$(find_bindir) || { echo "postgres: not installed"; return 1; }
  if [ -f "$DATA/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    echo "postgres: running (pid $(head -1 "$DATA/postmaster.pid"), 127.0.0.1:$PORT)"
  else
    echo "postgres: stopped"; return 1
  fi
}

case "${1:-status}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
