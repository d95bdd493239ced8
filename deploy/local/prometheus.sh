#!/usr/bin/env bash
# Prometheus and promtool from Debian's `prometheus` package (2.42 on bookworm),
# installed when missing: promtool checks and unit-tests the alert rules, and a
# test runs prometheus itself against the local services (make test).
#   prometheus.sh install   install the package if a binary is missing; the
#                           package's own service is never left running
#   prometheus.sh status
set -euo pipefail
source "$(dirname "$0")/lib.sh"

installed() { command -v prometheus >/dev/null && command -v promtool >/dev/null; }

install() {
  if installed; then return 0; fi
  log "prometheus/promtool not found: installing Debian's prometheus package"
  # The package would start its own server on :9090 (and write /var/lib/prometheus):
  # a policy-rc.d that refuses every start keeps invoke-rc.d from doing it.
  local policy=/usr/sbin/policy-rc.d created=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created=1
  fi
  apt_install prometheus || { [ -z "$created" ] || as_root rm -f "$policy"; exit 1; }
  [ -z "$created" ] || as_root rm -f "$policy"
  # Under systemd, units are enabled whatever policy-rc.d says: stop and disable it.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  installed || die "prometheus still missing after installing the package"
  log "$(promtool --version 2>&1 | head -1)"
}

case "${1:-}" in
  install) install ;;
  status) installed && { prometheus --version 2>&1 | head -1; } || echo "not installed" ;;
  *) echo "usage: $0 install|status" >&2; exit 2 ;;
esac
