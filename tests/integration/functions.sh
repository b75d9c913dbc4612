# shellcheck shell=bash
# functions.sh: shared helpers for the integration tests (sourced).
#
#   requires TOOL...        fail (never skip) when a tool is missing
#   start_strata ARGS...    start `strata serve ARGS` on $SOCK with control $CTL,
#                           wait until it answers; sets $STRATA_PID
#   stop_strata             SIGTERM and wait up to 10 s (checks exit status 0)
#   kill9_strata            SIGKILL and wait
#   uri [EXPORT]            NBD URI of an export on $SOCK
#   ctl ARGS...             run the strata CLI against $CTL
#   nbdsh_py SCRIPT         run nbdsh's python (Debian's python3 with libnbd)
#   start_replica_strata SIZE   a first strata serving `vm`, SIZE random bytes
#                           ($WORK/a.img), and a second ("host B") serving an
#                           empty `vm` ($WORK/b.img) on NBD over TCP on loopback,
#                           control $WORK/b.ctl; sets B_PID and B_URI (killed on exit)
#   cow_table OUT SIZE BASE LAYER   write a table: device "base" (the file
#                           BASE, read-only) and device "d", a cow stack of
#                           SIZE bytes whose top is LAYER over "base"
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
# Dirty maps of this test stay in its own directory (never /var/lib/strata).
export STRATA_STATE_DIR=$WORK/state

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

start_replica_strata() {
  local size=$1 port i
  head -c "$size" /dev/urandom >"$WORK/a.img"
  truncate -s "$size" "$WORK/b.img"
  printf '[vm]\n0 %d file %s 0\n' $((size / 512)) "$WORK/a.img" >"$WORK/a.conf"
  printf '[vm]\n0 %d file %s 0\n' $((size / 512)) "$WORK/b.img" >"$WORK/b.conf"
  start_strata --table "$WORK/a.conf"
  for port in $(shuf -i 20000-45000 -n 20); do ! ss -ltn | grep -q ":$port " && break; done
  "$STRATA" serve --table "$WORK/b.conf" --tcp 127.0.0.1:$port --control "$WORK/b.ctl" --state-dir "$WORK/b-state" \
    >>"$WORK/b.log" 2>&1 &
  B_PID=$!
  trap 'st=$?; set +e; kill -9 $B_PID 2>/dev/null; (exit $st); cleanup' EXIT
  for i in $(seq 1 100); do "$STRATA" list --control "$WORK/b.ctl" >/dev/null 2>&1 && break; sleep 0.05; done
  "$STRATA" list --control "$WORK/b.ctl" >/dev/null 2>&1 || die "the second strata did not start: $(cat "$WORK/b.log")"
  B_URI="nbd://127.0.0.1:$port/vm"
}

cow_table() {
  cat >"$1" <<CONF
[base]
0 $(($2 / 512)) file $3 0 ro
[d]
0 $(($2 / 512)) cow $4 base=base
CONF
}

start_strata() {
  rm -f "$SOCK"
  "$STRATA" serve --unix "$SOCK" --control "$CTL" --allow-path "$WORK" "$@" >>"$STRATA_LOG" 2>&1 &
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

# running PID: the process exists and is not a zombie waiting to be reaped.
running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

stop_strata() {
  kill -TERM "$STRATA_PID"
  local rc=0 i
  # Bounded: a server that hangs on the way out fails the test, not stalls it.
  for i in $(seq 1 100); do
    running "$STRATA_PID" || break
    sleep 0.1
  done
  if running "$STRATA_PID"; then
    kill -9 "$STRATA_PID" 2>/dev/null || true
    wait "$STRATA_PID" 2>/dev/null || true
    STRATA_PID=
    die "strata did not exit within 10 s of SIGTERM"
  fi
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

# ---- data helpers ------------------------------------------------------------
#   qio [-r] URI CMD...     run qemu-io commands (-c each) on URI (-r: open it
#                           read-only); fail with its output when any fails
#   qio_fails [-r] URI CMD... the same, but the commands must fail
#   bytes LEN BYTE          LEN copies of BYTE (0xNN) on stdout
#   fill FILE OFF LEN BYTE  write LEN copies of BYTE at byte OFF of FILE
#   expect_bytes FILE OFF LEN BYTE   bytes OFF..OFF+LEN of FILE are all BYTE
#   file_range FILE OFF LEN bytes OFF..OFF+LEN of FILE on stdout

qio() {
  local args=() c out u
  if [ "$1" = -r ]; then args+=(-r); shift; fi
  u=$1
  shift
  for c in "$@"; do args+=(-c "$c"); done
  if ! out=$(qemu-io -f raw "$u" "${args[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    die "qemu-io failed on $u: $*"
  fi
  if grep -qiE 'fail|error' <<<"$out"; then
    printf '%s\n' "$out" >&2
    die "qemu-io reported an error on $u: $*"
  fi
}

qio_fails() {
  local args=() c out u
  if [ "$1" = -r ]; then args+=(-r); shift; fi
  u=$1
  shift
  for c in "$@"; do args+=(-c "$c"); done
  if out=$(qemu-io -f raw "$u" "${args[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    die "qemu-io succeeded but should have failed on $u: $*"
  fi
  printf '%s\n' "$out"
}

bytes() { head -c "$1" /dev/zero | tr '\000' "\\$(printf '%03o' "$2")"; }

fill() {
  bytes "$3" "$4" | dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc iflag=fullblock status=none
}

file_range() { dd if="$1" bs=64K skip="$2" count="$3" iflag=skip_bytes,count_bytes status=none; }

expect_bytes() {
  local diff
  diff=$(cmp <(file_range "$1" "$2" "$3") <(bytes "$3" "$4") 2>&1) ||
    die "$1: bytes $2..$(($2 + $3)) are not all $4: $diff"
}

# bad_table NAME TABLE-TEXT EXPECTED-SUBSTRING...  (the table error tests; the nfs and rbd ones
# keep their own, which also bound the time and take the cluster's messages)
# The table goes to $WORK/NAME.conf; serve must fail fast, print every
# expected substring on stderr and create neither socket.
bad_table() {
  local name=$1 text=$2 rc=0 out
  shift 2
  local conf=$WORK/$name.conf
  printf '%b' "$text" >"$conf"
  rm -f "$SOCK" "$CTL"
  out=$(timeout 10 "$STRATA" serve --table "$conf" --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
  [ $rc -ne 0 ] || die "$name: serve accepted a bad table"
  [ $rc -ne 124 ] || die "$name: serve did not exit (it is serving a bad table)"
  local want
  for want in "$@"; do
    want=${want//@CONF@/$conf}
    grep -qF -- "$want" <<<"$out" || die "$name: error message lacks '$want': $out"
  done
  [ ! -e "$SOCK" ] || die "$name: the NBD socket was created"
  [ ! -e "$CTL" ] || die "$name: the control socket was created"
  [ "$(grep -c . <<<"$out")" -le 2 ] || die "$name: expected one error, got: $out"
  echo "ok: $name: $out"
}
