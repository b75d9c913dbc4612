# shellcheck shell=bash
# functions.sh: shared helpers for the integration tests (sourced).
#
#   requires TOOL...        fail (never skip) when a tool is missing
#   start_strata ARGS...    start `strata serve ARGS` on $SOCK with control $CTL,
#                           wait until it answers; sets $STRATA_PID
#   stop_strata             SIGTERM and wait (checks exit status 0)
#   kill9_strata            SIGKILL and wait
#   uri [EXPORT]            NBD URI of an export on $SOCK
#   ctl ARGS...             run the strata CLI against $CTL
#   nbdsh_py SCRIPT         run nbdsh's python (Debian's python3 with libnbd)
#
# Every test runs in its own $WORK directory, removed on exit; the server is
# stopped by its pid.
set -euo pipefail

: "${STRATA_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${STRATA:=$STRATA_SRC/build/strata}"
export STRATA STRATA_SRC
PYTHON=/usr/bin/python3   # Debian's python3 has the libnbd bindings

WORK=$(mktemp -d /tmp/strata-test.XXXXXX)
SOCK=$WORK/nbd.sock
CTL=$WORK/control.sock
STRATA_PID=
STRATA_LOG=$WORK/strata.log

cleanup() {
  local rc=$?
  if [ -n "$STRATA_PID" ] && kill -0 "$STRATA_PID" 2>/dev/null; then
    kill -9 "$STRATA_PID" 2>/dev/null || true
    wait "$STRATA_PID" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ -f "$STRATA_LOG" ]; then
    echo "---- strata log (last 50 lines) ----" >&2
    tail -50 "$STRATA_LOG" >&2 || true
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

die() { echo "FAIL: $*" >&2; exit 1; }

requires() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || die "required tool '$t' is missing (run scripts/install-deps.sh)"
  done
}

uri() { echo "nbd+unix:///${1:-}?socket=$SOCK"; }

start_strata() {
  rm -f "$SOCK"
  "$STRATA" serve --unix "$SOCK" --control "$CTL" "$@" >>"$STRATA_LOG" 2>&1 &
  STRATA_PID=$!
  local i
  for i in $(seq 1 200); do
    if ! kill -0 "$STRATA_PID" 2>/dev/null; then
      cat "$STRATA_LOG" >&2
      die "strata exited during start-up"
    fi
    if [ -S "$CTL" ] && "$STRATA" list --control "$CTL" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  die "strata did not start within 10 s"
}

stop_strata() {
  kill -TERM "$STRATA_PID"
  local rc=0
  wait "$STRATA_PID" || rc=$?
  STRATA_PID=
  [ $rc -eq 0 ] || die "strata exited with status $rc after SIGTERM"
}

kill9_strata() {
  kill -9 "$STRATA_PID"
  wait "$STRATA_PID" 2>/dev/null || true
  STRATA_PID=
}

ctl() { "$STRATA" "$@" --control "$CTL"; }

nbdsh_py() { $PYTHON -c "import nbd, sys
$1"; }
