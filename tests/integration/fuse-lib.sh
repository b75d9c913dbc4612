# shellcheck shell=bash
# fuse-lib.sh: helpers for the FUSE export tests (test-fuse-*.sh), sourced
# after functions.sh.
#
#   MNT                  $WORK/mnt, an empty directory for --fuse
#   attach_loop [-r] FILE  `losetup --direct-io=on` a free loop device over
#                        FILE (-r: read-only); sets $LOOP; fails unless the
#                        loop device really does direct I/O
#   fuse_mounts DIR      how many fuse.strata mounts /proc/mounts has at DIR
#   flushes DEVICE       the device's FLUSH counter (its first segment's)
#   seg_counter DEVICE FIELD   another counter of that segment
#   errno_of CMD...      run CMD (python snippet: os calls) and print the
#                        errno name it fails with, or "ok"
#
# A watchdog fails a test that is still running after $FUSE_TEST_TIMEOUT
# seconds (default 120): a server that stops answering leaves its clients in
# uninterruptible sleep, so it kills the servers this test started (by pid,
# checked against $WORK), which aborts the FUSE connection and lets every
# blocked request fail.
#
# On exit, pass or fail, before functions.sh's cleanup (which kills the
# server and removes $WORK): every non-FUSE file system mounted under $WORK
# is unmounted, every loop device over a file under $WORK is detached, then
# every FUSE mount under $WORK is unmounted (lazily when it is busy or
# stale). Nothing is tracked by hand, so devices made in subshells or by a
# failing step are found too.

MNT=$WORK/mnt
mkdir -p "$MNT"
LOOP=

# Remember every server this test starts, for the watchdog.
: >"$WORK/.strata-pids"
eval "_fuse_lib_$(declare -f start_strata)"
start_strata() {
  _fuse_lib_start_strata "$@"
  echo "$STRATA_PID" >>"$WORK/.strata-pids"
}
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FUSE_TEST_TIMEOUT:-120}" &
  s=$!
  wait "$s"
  echo "FAIL: still running after ${FUSE_TEST_TIMEOUT:-120} s; killing its servers" >&2
  while read -r p; do
    grep -qF "$WORK" "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p"
  done <"$WORK/.strata-pids"
) </dev/null >&2 &
_FUSE_WATCHDOG=$!

# Mountpoints under $WORK (deepest first), of type FUSE (fuse=1) or not (0).
_work_mounts() {
  awk -v w="$WORK/" -v fuse="$1" '
    index($2, w) == 1 { isf = ($3 ~ /^fuse/); if (isf == fuse) print length($2), $2 }' /proc/mounts |
    sort -rn | cut -d' ' -f2-
}

_work_loops() {
  losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 { print $1 }'
}

fuse_cleanup() {
  local rc=$? m l
  set +e
  kill "$_FUSE_WATCHDOG" 2>/dev/null
  for m in $(_work_mounts 0); do
    timeout 20 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "cleanup: cannot unmount $m" >&2
  done
  for l in $(_work_loops); do
    timeout 20 losetup -d "$l" 2>/dev/null || echo "cleanup: cannot detach $l" >&2
  done
  for m in $(_work_mounts 1); do
    timeout 20 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "cleanup: cannot unmount $m" >&2
  done
  (exit $rc)
  cleanup
}
trap fuse_cleanup EXIT

attach_loop() {
  local ro=()
  if [ "$1" = -r ]; then ro=(-r); shift; fi
  LOOP=$(losetup "${ro[@]}" --direct-io=on -f --show "$1") || die "losetup --direct-io=on $1 failed"
  [ -b "$LOOP" ] || die "losetup printed '$LOOP', not a block device"
  [ "$(losetup -n -O DIO "$LOOP" | tr -d ' ')" = 1 ] || die "$LOOP over $1 does not do direct I/O: $(losetup -l "$LOOP")"
}

fuse_mounts() { awk -v d="$1" '$2 == d && $3 == "fuse.strata"' /proc/mounts | wc -l; }

seg_counter() { ctl status "$1" --json | jq ".[0].segments[0].info.$2"; }
flushes() { seg_counter "$1" flushes; }

errno_of() {
  $PYTHON - "$@" <<'PY'
import errno, os, sys
try:
    exec(sys.argv[1])
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY
}
