#!/usr/bin/env bash
# make test: the suite in two passes against the running PostgreSQL and Kafka.
#   1. every test not marked `serial`, TEST_WORKERS (2) at a time (pytest-xdist;
#      tests sharing a module's fixture or the local EVM stay on one worker);
#   2. the `serial` ones, one at a time: they stop PostgreSQL or Kafka, or bound a
#      time or a load that another test beside them could break.
# Arguments go to both passes (a path, -k, -x ...); a marker expression (-m EXPR)
# narrows each pass's own. Each pass writes its JUnit report to
# .run/junit-<pass>.xml. Fails when a pass fails or when neither ran a test; stops
# when a pass is interrupted.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=${TEST_WORKERS:-2}
if ! [[ $workers =~ ^[1-9][0-9]*$ ]]; then
  echo "[test] TEST_WORKERS must be a positive number, not '$workers'" >&2
  exit 4
fi
mkdir -p .run
rm -f .run/junit-parallel.xml .run/junit-serial.xml

# -m EXPR among the arguments: kept apart, ANDed with each pass's own.
args=()
marks=""
while [ $# -gt 0 ]; do
  case $1 in
    -m) marks=${2:?"-m needs an expression"}; shift 2 ;;
    -m=*) marks=${1#-m=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
only() { if [ -n "$marks" ]; then echo "$1 and ($marks)"; else echo "$1"; fi; }

status=0
ran=0
pass() {
  local name=$1
  shift
  echo "[test] pass '$name': pytest $*"
  deploy/local/with-env .venv/bin/python -m pytest "$@" --junitxml=".run/junit-$name.xml"
  local rc=$?
  case $rc in
    0) ran=$((ran + 1)) ;;
    5) echo "[test] pass '$name' selected no test" ;;  # e.g. a path holding only serial tests
    1) status=1 ;;
    *) echo "[test] pass '$name' was interrupted or could not run (pytest exit $rc)"; exit "$rc" ;;
  esac
}

pass parallel -n "$workers" --dist loadgroup -m "$(only "not serial")" --durations=15 ${args[@]+"${args[@]}"}
pass serial -m "$(only serial)" --durations=10 ${args[@]+"${args[@]}"} -n 0

if [ "$status" -eq 0 ] && [ "$ran" -eq 0 ]; then
  echo "[test] no test ran"
  status=5
fi
exit "$status"
