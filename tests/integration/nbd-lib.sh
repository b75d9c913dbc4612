# shellcheck shell=bash
# nbd-lib.sh: helpers for the NBD protocol tests (test-nbd-*.sh), sourced
# after functions.sh.
#
#   py [ARGS]        run a python script read from stdin with Debian's python3:
#                    `import nbd` (libnbd) and `from nbd_raw import *` work,
#                    $SOCK and $WORK are in the environment
#   server_alive     fail unless the server process is still running
#   log_clean        fail if the server log shows a crash, a failed CHECK, a
#                    sanitizer report or an error line (lines matching the
#                    regex $LOG_ALLOW, when set, are expected)
#   connections      how many NBD clients the server has now (strata server)
#   wait_connections N   wait up to 5 s until the server has exactly N clients
#   finish           server_alive, no client left connected, stop the server (exit status 0 required),
#                    log_clean
export SOCK WORK
export PYTHONPATH="$STRATA_SRC/tests/integration${PYTHONPATH:+:$PYTHONPATH}"

py() { $PYTHON - "$@"; }

server_alive() {
  kill -0 "$STRATA_PID" 2>/dev/null || die "strata (pid $STRATA_PID) is no longer running"
}

log_clean() {
  if grep -E 'CHECK failed|terminate called|Sanitizer|runtime error:|Segmentation fault|strata: error:' "$STRATA_LOG" |
    grep -vE "${LOG_ALLOW:-^\$}" >&2; then
    die "the server log shows a crash or an error (above)"
  fi
}

connections() {
  ctl server --json | $PYTHON -c 'import json, sys; print(json.load(sys.stdin)["connections"])'
}

wait_connections() {
  local n
  for _ in $(seq 1 100); do
    n=$(connections)
    [ "$n" = "$1" ] && return 0
    sleep 0.05
  done
  die "the server still has $n connections, expected $1 (leaked connections?)"
}

finish() {
  server_alive
  wait_connections 0
  stop_strata
  log_clean
  echo "PASS: $(basename "$0")"
}
