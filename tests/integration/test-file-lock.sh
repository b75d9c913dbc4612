#!/bin/bash
# Checks that what one server serves is locked: a second strata on the same image is refused (read-write or read-only) with the file and the holder's pid named, serving nothing; qemu-io is refused too (the same OFD locks); lock=off opts out; read-only servers share an image; a device's dirty maps in a state dir are locked (a second server with a device of the same name and maps there is refused, naming the holder), and the default state dirs of two servers on different control sockets differ.
source "$(dirname "$0")/functions.sh"
requires qemu-io

IMG=$WORK/disk.img
truncate -s 16M "$IMG"
OTHER_PID=
cleanup_other() { [ -z "$OTHER_PID" ] || { kill -9 "$OTHER_PID" 2>/dev/null; wait "$OTHER_PID" 2>/dev/null; } || true; }
trap 'cleanup_other; cleanup' EXIT

# second_fails NAME MESSAGE ARGS...: another `strata serve ARGS` exits non-zero
# at start-up with MESSAGE in its output, and creates no socket.
second_fails() {
  local name=$1 msg=$2 rc=0
  shift 2
  timeout 10 "$STRATA" serve --unix "$WORK/s2.sock" --control "$WORK/c2.sock" "$@" >"$WORK/second.out" 2>&1 || rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || die "$name: the second server did not fail at start-up (rc $rc): $(cat "$WORK/second.out")"
  grep -qF -- "$msg" "$WORK/second.out" || die "$name: expected '$msg' in: $(cat "$WORK/second.out")"
  [ ! -e "$WORK/s2.sock" ] || die "$name: the second server created its socket"
}

# start_other ARGS...: a second server that must start.
start_other() {
  rm -f "$WORK/s2.sock" "$WORK/c2.sock"
  "$STRATA" serve --unix "$WORK/s2.sock" --control "$WORK/c2.sock" "$@" >"$WORK/other.out" 2>&1 &
  OTHER_PID=$!
  for _ in $(seq 1 100); do
    [ -S "$WORK/c2.sock" ] && "$STRATA" list --control "$WORK/c2.sock" >/dev/null 2>&1 && return 0
    kill -0 "$OTHER_PID" 2>/dev/null || die "the second server exited: $(cat "$WORK/other.out")"
    sleep 0.05
  done
  die "the second server did not start"
}
stop_other() { kill -TERM "$OTHER_PID"; wait "$OTHER_PID" || die "the second server exited with $?"; OTHER_PID=; }

start_strata --file "$IMG" --state-dir "$WORK/st1"
held="in use by another process: pid $STRATA_PID (strata)"
second_fails "read-write" "file $IMG: $held (it holds a lock on it); refusing to serve it read-write" \
  --file "$IMG" --state-dir "$WORK/st2"
second_fails "read-only" "file $IMG: $held (it holds a lock on it); refusing to serve it read-only" \
  --file "$IMG" --read-only --state-dir "$WORK/st2"
echo "0 32768 file $IMG 0 ro" >"$WORK/ro.table"
second_fails "table ro" "refusing to serve it read-only" --table "$WORK/ro.table" --state-dir "$WORK/st2"
# qemu takes the same kind of lock: it is refused as well.
if out=$(qemu-io -f raw -c "read 0 4096" "$IMG" 2>&1); then die "qemu-io opened an image strata serves: $out"; fi
grep -qi "lock" <<<"$out" || die "qemu-io failed for another reason: $out"
# lock=off: the operator's choice.
echo "0 32768 file $IMG 0 lock=off" >"$WORK/nolock.table"
start_other --table "$WORK/nolock.table" --state-dir "$WORK/st2"
stop_other
# The same state dir: a device of the same name is refused (its dirty maps are
# the first server's), naming the holder; another device name is not.
truncate -s 1M "$WORK/other.img"
"$STRATA" dirty start '' m --control "$CTL" >/dev/null
second_fails "state dir" "dirty maps of device '' ($WORK/st1/_default): in use by another server (pid $STRATA_PID (strata)): give each server its own --state-dir" \
  --file "$WORK/other.img" --state-dir "$WORK/st1"
start_other --file "$WORK/other.img" --export other --state-dir "$WORK/st1"
stop_other
stop_strata

# Read-only servers share the image; a writer is then refused.
start_strata --file "$IMG" --read-only --state-dir "$WORK/st1"
start_other --file "$IMG" --read-only --state-dir "$WORK/st2"
"$STRATA" list --control "$WORK/c2.sock" >/dev/null
rm -f "$WORK/s3.sock"
rc=0
timeout 10 "$STRATA" serve --unix "$WORK/s3.sock" --control "$WORK/c3.sock" --file "$IMG" --state-dir "$WORK/st3" \
  >"$WORK/third.out" 2>&1 || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "a writer started beside two read-only servers: $(cat "$WORK/third.out")"
grep -qF "file $IMG: in use by another process: pid" "$WORK/third.out" || die "writer beside readers: $(cat "$WORK/third.out")"
stop_other
stop_strata

# The default state dir (as root, no --state-dir, no $STRATA_STATE_DIR): one
# per control socket, so two servers never share one.
unset STRATA_STATE_DIR
dir1=/var/lib/strata/@$(sed 's|/|%2F|g' <<<"$CTL")
dir2=/var/lib/strata/@$(sed 's|/|%2F|g' <<<"$WORK/c2.sock")
trap 'cleanup_other; rm -rf "$dir1" "$dir2"; cleanup' EXIT
start_strata --file "$IMG"
truncate -s 1M "$WORK/other.img"
start_other --file "$WORK/other.img"
"$STRATA" dirty start '' m --control "$CTL" >/dev/null
"$STRATA" dirty start '' m --control "$WORK/c2.sock" >/dev/null
[ -f "$dir1/_default/m.dmap" ] && [ -f "$dir2/_default/m.dmap" ] || die "default state dirs: $(ls -la /var/lib/strata)"
stop_other
stop_strata
echo "PASS: $(basename "$0")"
