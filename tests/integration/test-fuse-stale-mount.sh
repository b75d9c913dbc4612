#!/bin/bash
# FUSE stale mount: after kill -9 the mount stays and answers ENOTCONN; a new server (at once, and after the caches expired) with the same --fuse logs "replacing a stale mount", leaves exactly one live mount and serves the file (old data readable, new writes land); a second server on the live mount is refused with a clear error and leaves the first one working.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires cmp timeout

IMG=$WORK/disk.img
truncate -s $((8 << 20)) "$IMG"
start_strata --file "$IMG" --export disk --fuse "$MNT"
fill "$MNT/disk" 65536 4096 0x5a
expect_bytes "$IMG" 65536 4096 0x5a
kill9_strata

# check_stale: the mount is left behind, dead. statfs always asks the server;
# stat may be answered from the attribute cache (1 s) right after the crash,
# so it is checked once that has expired.
check_stale() {
  [ "$(fuse_mounts "$MNT")" = 1 ] || die "no stale mount at $MNT after kill -9: $(grep " $MNT " /proc/mounts)"
  e=$(errno_of "os.statvfs('$MNT')")
  [ "$e" = ENOTCONN ] || die "statfs $MNT on the stale mount gave '$e', want ENOTCONN"
  if [ "${1:-}" = wait ]; then
    sleep 1.5
    e=$(errno_of "os.stat('$MNT/disk')")
    [ "$e" = ENOTCONN ] || die "stat $MNT/disk on the stale mount gave '$e', want ENOTCONN"
    e=$(errno_of "os.stat('$MNT')")
    [ "$e" = ENOTCONN ] || die "stat $MNT on the stale mount gave '$e', want ENOTCONN"
    e=$(errno_of "open('$MNT/disk', 'rb').read(1)")
    [ "$e" = ENOTCONN ] || die "reading $MNT/disk on the stale mount gave '$e', want ENOTCONN"
  fi
}
# restart: a new server on the same mountpoint replaces the stale mount.
restart() {
  : >"$STRATA_LOG"
  start_strata --file "$IMG" --export disk --fuse "$MNT"
  grep -q "replacing a stale mount" "$STRATA_LOG" || die "no 'replacing a stale mount' in the log: $(cat "$STRATA_LOG")"
  grep -q "replacing a stale mount" <(grep -F "$MNT" "$STRATA_LOG") || die "the stale-mount message does not name $MNT"
  [ "$(fuse_mounts "$MNT")" = 1 ] || die "want exactly one fuse.strata mount at $MNT, have $(fuse_mounts "$MNT")"
  [ "$(errno_of "os.stat('$MNT/disk')")" = ok ] || die "stat $MNT/disk fails after the restart"
  [ "$(stat -c %s "$MNT/disk")" = $((8 << 20)) ] || die "$MNT/disk has the wrong size after the restart"
  [ "$(ctl fuse list)" = "$(realpath "$MNT")" ] || die "fuse list after the replacement: $(ctl fuse list)"
}

# Round 1: restart at once, while the kernel still caches the root's attributes.
check_stale
restart
expect_bytes "$MNT/disk" 65536 4096 0x5a
fill "$MNT/disk" 32768 4096 0x3c
expect_bytes "$IMG" 32768 4096 0x3c
kill9_strata

# Round 2: once the caches expired, everything on the stale mount is ENOTCONN.
check_stale wait
restart
expect_bytes "$MNT/disk" 65536 4096 0x5a
expect_bytes "$MNT/disk" 32768 4096 0x3c
fill "$MNT/disk" 131072 8192 0xa5
expect_bytes "$IMG" 131072 8192 0xa5
expect_bytes "$MNT/disk" 131072 8192 0xa5

# A second server on the live mount is refused and exits non-zero; the first keeps serving.
# (lock=off: the image itself would be refused first, the first server holds its lock.)
rc=0
echo "[disk]
0 $(($(stat -c %s "$IMG") / 512)) file $IMG 0 lock=off" >"$WORK/second.table"
timeout 20 "$STRATA" serve --table "$WORK/second.table" --unix "$WORK/second.sock" --control "$WORK/second.ctl" \
  --fuse "$MNT" >"$WORK/second.log" 2>&1 || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "a second server on the live mount exited $rc: $(cat "$WORK/second.log")"
grep -q "a live FUSE file system is mounted there" "$WORK/second.log" ||
  die "no clear error from the second server: $(cat "$WORK/second.log")"
grep -qF "$MNT" "$WORK/second.log" || die "the second server's error does not name $MNT: $(cat "$WORK/second.log")"
! grep -q "replacing a stale mount" "$WORK/second.log" || die "the second server took the live mount for stale"
[ "$(fuse_mounts "$MNT")" = 1 ] || die "the refused server changed the mounts at $MNT: $(grep " $MNT " /proc/mounts)"
expect_bytes "$MNT/disk" 131072 8192 0xa5
fill "$MNT/disk" 0 4096 0x11
expect_bytes "$IMG" 0 4096 0x11
# The same refusal through the control socket of the running server.
out=$(ctl fuse start "$MNT" 2>&1) && die "fuse start on the live mount succeeded: $out"
grep -q "a live FUSE file system is mounted there" <<<"$out" || die "fuse start on the live mount: $out"
[ "$(fuse_mounts "$MNT")" = 1 ] || die "the refused fuse start changed the mounts at $MNT"
running "$STRATA_PID" || die "the server died"
stop_strata
[ "$(fuse_mounts "$MNT")" = 0 ] || die "the mount is still there after SIGTERM"
echo PASS
