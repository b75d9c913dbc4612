# shellcheck shell=bash
# service-lib.sh: helpers for the service manager tests (test-service-*.sh),
# sourced after functions.sh. No systemd as PID 1 is needed: the tests play
# its part with systemd-socket-activate (LISTEN_FDS) and a datagram socket
# of their own (NOTIFY_SOCKET).
#
#   free_port                 a free TCP port on 127.0.0.1
#   notify_listen             bind $NOTIFY on an AF_UNIX datagram socket; each
#                             message received is appended to $NOTIFY_LOG as one
#                             line, its assignments joined by '|'
#   wait_notify REGEX [N]     wait up to 10 s for the Nth (default 1st) message
#                             matching REGEX
#   notify_count REGEX        how many messages match REGEX now
#   wait_port PORT            wait up to 10 s until something listens on PORT
#   activate SOCKARGS -- ARGS start `strata serve ARGS` under
#                             systemd-socket-activate SOCKARGS (-l ADDRESS
#                             --fdname=...); NOTIFY_SOCKET and the state dir are
#                             passed (systemd-socket-activate passes no other
#                             variable); sets $STRATA_PID (the same process
#                             execs strata)
requires systemd-socket-activate ss

NOTIFY=$WORK/notify.sock
NOTIFY_LOG=$WORK/notify.log
NOTIFY_PID=

free_port() {
  $PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

notify_listen() {
  : >"$NOTIFY_LOG"
  $PYTHON - "$NOTIFY" "$NOTIFY_LOG" <<'PY' &
import os, socket, sys
path, log = sys.argv[1:3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
while True:
    msg = s.recv(65536).decode("utf-8", "replace")
    with open(log, "a") as f:
        f.write(msg.strip("\n").replace("\n", "|") + "\n")
PY
  NOTIFY_PID=$!
  local i
  for i in $(seq 1 100); do
    [ -S "$NOTIFY" ] && return 0
    sleep 0.05
  done
  die "the notify listener did not start"
}

wait_port() {
  local i
  for i in $(seq 1 200); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.05
  done
  die "nothing listens on port $1"
}

notify_count() { grep -cE "$1" "$NOTIFY_LOG" || true; }

wait_notify() {
  local n=${2:-1} i
  for i in $(seq 1 200); do
    [ "$(notify_count "$1")" -ge "$n" ] && return 0
    sleep 0.05
  done
  echo "---- notify messages ----" >&2
  cat "$NOTIFY_LOG" >&2
  die "no notify message '$1' (#$n) within 10 s"
}

activate() {
  local sa=()
  while [ "$1" != -- ]; do
    sa+=("$1")
    shift
  done
  shift
  systemd-socket-activate "${sa[@]}" -E NOTIFY_SOCKET="$NOTIFY" -E STRATA_STATE_DIR="$STRATA_STATE_DIR" \
    ${WATCHDOG_USEC:+-E WATCHDOG_USEC="$WATCHDOG_USEC"} \
    "$STRATA" serve "$@" >>"$STRATA_LOG" 2>&1 &
  STRATA_PID=$!
}

stop_notify_listener() {
  if [ -n "$NOTIFY_PID" ]; then
    kill "$NOTIFY_PID" 2>/dev/null || true
    wait "$NOTIFY_PID" 2>/dev/null || true
    NOTIFY_PID=
  fi
}

# The listener goes with the test, whatever ends it.
trap 'rc=$?; stop_notify_listener; (exit $rc); cleanup' EXIT
