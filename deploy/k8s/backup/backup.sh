#!/bin/sh
# Logical backups in Kubernetes: the CronJob erc8004-backup runs `backup.sh dump`,
# the restore pod (restore-pod.yaml) `backup.sh restore FILE DATABASE`; both in
# the official postgres image (busybox sh), so this is POSIX sh. The same steps
# as tools/backup.py (make backup / make restore), which needs Python.
#
#   backup.sh dump
#       pg_dump -Fc of DATABASE_URL's database into $BACKUP_DIR as
#       <database>-<UTC time>.dump (written as .partial, renamed once verified:
#       a .dump file is always complete and readable), then deletes the dumps
#       older than $BACKUP_RETENTION_DAYS days (default 14). Fails, and deletes
#       nothing, when the dump or its verification fails.
#   backup.sh restore FILE DATABASE
#       creates DATABASE (never over an existing one: it fails if it exists) and
#       restores FILE into it in one transaction, objects owned by the login
#       (--no-owner); on failure the new database is dropped again. Extensions
#       only a superuser may create (pg_stat_statements) are skipped.
#
# DATABASE_URL is the schema owner's login (Secret erc8004-secrets, key
# DATABASE_URL_MIGRATE). Its password is moved into PGPASSWORD, with shell
# built-ins only, and the URL is passed on without it: no password is ever on a
# command line (visible in /proc to the node).
set -eu
umask 077

log() { printf '[backup] %s\n' "$*" >&2; }
fail() {
  log "error: $*"
  exit 1
}

partial=
work=
cleanup() {
  if [ -n "$partial" ]; then rm -f -- "$partial"; fi
  if [ -n "$work" ]; then rm -rf -- "$work"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# pct_decode STRING: STRING with its %XX escapes decoded (RFC 3986).
pct_decode() {
  rest=$1
  out=
  while :; do
    case $rest in
      *%*) ;;
      *) break ;;
    esac
    out=$out${rest%%\%*}
    rest=${rest#*%}
    hex=${rest%"${rest#??}"}
    case $hex in
      [0-9A-Fa-f][0-9A-Fa-f]) ;;
      *) return 1 ;;
    esac
    out=$out$(printf '%b' "\\0$(printf '%o' "$((0x$hex))")")
    rest=${rest#??}
  done
  printf '%s' "$out$rest"
}

# connect: from DATABASE_URL (postgresql://user:password@host:port/db?params),
# export PGPASSWORD and set URL (the same URL without the password), BASE (up
# to the host and port), DBNAME and QUERY (?params or empty). The user name,
# host and database stay percent-encoded: libpq decodes them.
connect() {
  url=${DATABASE_URL:-}
  case $url in
    postgres://* | postgresql://*) ;;
    '') fail "DATABASE_URL is not set" ;;
    *) fail "DATABASE_URL is not a postgresql:// URL" ;;
  esac
  scheme=${url%%://*}
  rest=${url#*://}
  authority=${rest%%/*}
  path=
  case $rest in */*) path=${rest#*/} ;; esac
  QUERY=
  case $path in *\?*) QUERY="?${path#*\?}" ;; esac
  DBNAME=${path%%\?*}
  case $QUERY in *[?\&]password=*) fail "DATABASE_URL: put the password before the @, not in ?password=" ;; esac
  # libpq takes the credentials up to the first @, the user up to the first :.
  hostport=$authority
  user=
  case $authority in
    *@*)
      userinfo=${authority%%@*}
      hostport=${authority#*@}
      user=${userinfo%%:*}
      case $userinfo in
        *:*)
          PGPASSWORD=$(pct_decode "${userinfo#*:}") || fail "DATABASE_URL: bad %-escape in the password"
          export PGPASSWORD
          ;;
      esac
      ;;
  esac
  [ -n "$DBNAME" ] || fail "DATABASE_URL names no database"
  BASE=$scheme://${user:+$user@}$hostport
  URL=$BASE/$DBNAME$QUERY
}

sql() { psql -X -q -A -t -v ON_ERROR_STOP=1 --no-password --dbname="$URL" -c "$1"; }

dump() {
  dir=${BACKUP_DIR:-}
  days=${BACKUP_RETENTION_DAYS:-14}
  [ -n "$dir" ] || fail "BACKUP_DIR is not set"
  case $days in
    '' | *[!0-9]*) fail "BACKUP_RETENTION_DAYS=$days is not a whole number of days" ;;
  esac
  [ "$days" -ge 1 ] || fail "BACKUP_RETENTION_DAYS must be at least 1"
  if [ ! -d "$dir" ] || [ ! -w "$dir" ]; then fail "$dir is not a writable directory"; fi
  connect
  case $DBNAME in
    *[!A-Za-z0-9_.-]*) prefix=database ;;
    *) prefix=$DBNAME ;;
  esac
  file=$dir/$prefix-$(date -u +%Y%m%dT%H%M%SZ).dump
  [ ! -e "$file" ] || fail "$file exists already"
  partial=$file.partial
  log "dumping $DBNAME into $file"
  pg_dump --format=custom --compress=6 --no-password --file="$partial" --dbname="$URL"
  # Verified before it counts: the table of contents reads back and lists the
  # tables' data, and every data block reads and decompresses (a restore into
  # /dev/null reads them all).
  listing=$(pg_restore --list "$partial") || fail "pg_restore --list cannot read the new dump"
  tables=$(printf '%s\n' "$listing" | grep -c ' TABLE DATA ') || tables=0
  [ "$tables" -gt 0 ] || fail "the new dump holds no table data"
  pg_restore --file=/dev/null "$partial" || fail "the new dump does not read back completely"
  mv -- "$partial" "$file"
  partial=
  log "wrote $file ($(wc -c <"$file") bytes, data of $tables tables), verified"
  prune "$dir" "$days"
}

# prune DIR DAYS: the dumps older than DAYS days, and .partial files a killed
# run left (older than a day: longer than a run may last, so never one in
# progress). Only after a verified dump, so the newest one is always kept.
prune() {
  work=$(mktemp -d)
  find "$1" -maxdepth 1 -type f \( -name '*.dump' -mmin "+$(($2 * 1440))" \
    -o -name '*.dump.partial' -mmin +1440 \) -print >"$work/old"
  while IFS= read -r old; do
    rm -f -- "$old"
    case $old in
      *.partial) log "deleted $old (left by a run that failed or was stopped)" ;;
      *) log "deleted $old (older than $2 days)" ;;
    esac
  done <"$work/old"
  log "kept $(find "$1" -maxdepth 1 -type f -name '*.dump' | wc -l | tr -d ' ') dumps (retention: $2 days)"
}

# skip_extensions TRUSTED SKIPPED_FILE: pg_restore's table of contents (stdin)
# without the extensions (and their comments) not named in TRUSTED (a space-
# separated list; "*": all of them); the names left out go to SKIPPED_FILE.
skip_extensions() {
  awk -v trusted=" $1 " -v skipped="$2" '
    { name = "" }
    $1 ~ /^[0-9]+;$/ && $4 == "EXTENSION" && $5 == "-" { name = $6 }
    $1 ~ /^[0-9]+;$/ && $4 == "COMMENT" && $5 == "-" && $6 == "EXTENSION" { name = $7 }
    name != "" && trusted != " * " && index(trusted, " " name " ") == 0 {
      print name > skipped
      next
    }
    { print }'
}

restore() {
  [ $# -eq 2 ] || fail "usage: backup.sh restore FILE DATABASE"
  file=$1
  name=$2
  case $name in
    '' | [!a-z_]* | *[!a-z0-9_]*) fail "$name is not a plain database name (a-z, 0-9, _)" ;;
  esac
  [ "${#name}" -le 63 ] || fail "$name is longer than 63 characters"
  [ -f "$file" ] || fail "$file: no such dump"
  connect
  work=$(mktemp -d)
  pg_restore --list "$file" >"$work/all.list" || fail "$file is not a readable dump"
  if [ "$(sql "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")" = t ]; then
    trusted='*'
  else
    trusted=$(sql "SELECT string_agg(DISTINCT name, ' ') FROM pg_available_extension_versions WHERE trusted")
  fi
  : >"$work/skipped"
  skip_extensions "$trusted" "$work/skipped" <"$work/all.list" >"$work/use.list"
  if grep -qx timescaledb "$work/skipped"; then
    fail "a TimescaleDB dump: restore it as a superuser following TimescaleDB's procedure (timescaledb_pre_restore / timescaledb_post_restore)"
  fi
  if [ -s "$work/skipped" ]; then
    # shellcheck disable=SC2046 # extension names: one word each
    set -- $(sort -u "$work/skipped")
    log "not restored (needs a superuser; monitoring only): $*"
  fi
  sql "CREATE DATABASE \"$name\"" ||
    fail "cannot create database $name (it exists, or the login may not create databases)"
  log "restoring $file into $name"
  if pg_restore --exit-on-error --single-transaction --no-owner --no-password \
    --use-list="$work/use.list" --dbname="$BASE/$name$QUERY" "$file"; then
    log "restored $file into $name"
  else
    sql "DROP DATABASE \"$name\"" || log "could not drop $name again: drop it by hand"
    fail "pg_restore failed: $name dropped again"
  fi
}

main() {
  command=${1:-}
  [ $# -eq 0 ] || shift
  case $command in
    dump)
      [ $# -eq 0 ] || fail "usage: backup.sh dump"
      dump
      ;;
    restore) restore "$@" ;;
    *) fail "usage: backup.sh dump | backup.sh restore FILE DATABASE" ;;
  esac
}

# Sourced by the tests (ERC8004_BACKUP_SOURCED=1) to call one function.
if [ "${ERC8004_BACKUP_SOURCED:-}" != 1 ]; then main "$@"; fi
