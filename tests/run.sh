#!/usr/bin/env bash
# make test: the suite in two passes against the running PostgreSQL and Kafka.
#   1. every test not marked `serial`, TEST_WORKERS (2) at a time (pytest-xdist;
#      tests sharing a module's fixture or the local EVM stay on one worker);
#   2. the `serial` ones, one at a time: they stop PostgreSQL or Kafka, or bound a
#      time or a load that another test beside them could break.
# Arguments go to both passes (a path, -k, -x ...). Each pass writes its JUnit
# report to .run/junit-<pass>.xml. Fails when a pass fails or when neither ran a test.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=${TEST_WORKERS:-2}
mkdir -p .run
rm -f .run/junit-parallel.xml .run/junit-serial.xml

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
    *) status=$rc ;;
  esac
}

if [ "$workers" -gt 1 ]; then
  pass parallel -n "$workers" --dist loadgroup -m "not serial" --durations=15 "$@"
else
  pass parallel -m "not serial" --durations=15 "$@"
fi
pass serial -m serial --durations=10 "$@"

if [ "$status" -eq 0 ] && [ "$ran" -eq 0 ]; then
  echo "[test] no test ran"
  status=5
fi
exit "$status"
