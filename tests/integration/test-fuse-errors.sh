#!/bin/bash
# FUSE export of a table with an `error` segment: reads and writes touching its range through the FUSE file (dd iflag=direct, pread/pwrite) fail with EIO, as do reads of a loop device over it, while every other range reads and writes fine and the server stays up.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup jq

F=$WORK/f.img
bytes 2097152 0x66 >"$F"
cat >"$WORK/t.conf" <<CONF
0    2048 file $F 0
2048 8    error
2056 2040 file $F 1048576
CONF
start_strata --table "$WORK/t.conf" --export e --fuse "$MNT"
E0=1048576 E1=$((1048576 + 4096))   # the error range in bytes
FF=$MNT/e
[ "$(stat -c %s "$FF")" = 2097152 ] || die "$FF is $(stat -c %s "$FF") bytes"

# dd iflag=direct, 4 KiB at byte OFF: prints ok or the error dd reported.
dd_read() {
  if dd if="$1" of=/dev/null bs=4096 count=1 iflag=direct,skip_bytes skip="$2" status=none 2>"$WORK/dd.err"; then
    echo ok
  elif grep -q "Input/output error" "$WORK/dd.err"; then
    echo EIO
  else
    cat "$WORK/dd.err"
  fi
}
[ "$(dd_read "$FF" $((E0 - 4096)))" = ok ] || die "dd: reading just before the error range failed"
[ "$(dd_read "$FF" $E0)" = EIO ] || die "dd: reading the error range gave '$(dd_read "$FF" $E0)', want EIO"
[ "$(dd_read "$FF" $((E0 - 2048)))" = EIO ] || die "dd: reading into the error range did not fail with EIO"
[ "$(dd_read "$FF" $((E0 + 2048)))" = EIO ] || die "dd: reading out of the error range did not fail with EIO"
[ "$(dd_read "$FF" $E1)" = ok ] || die "dd: reading just after the error range failed"

out=$($PYTHON - "$FF" $E0 $E1 <<'PY' 2>&1
import errno, os, sys
path, e0, e1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
def rd(off, n):
    try:
        d = os.pread(fd, n, off)
        return "ok" if d == b"\x66" * n or d == b"\x01" * n else "bad data %r" % d[:16]
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def wr(off, n):
    try:
        return "ok" if os.pwrite(fd, b"\x01" * n, off) == n else "short"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
cases = [
    ("read last byte before", rd(e0 - 1, 1), "ok"),
    ("read first error byte", rd(e0, 1), "EIO"),
    ("read inside", rd(e0 + 1000, 2000), "EIO"),
    ("read last error byte", rd(e1 - 1, 1), "EIO"),
    ("read first byte after", rd(e1, 1), "ok"),
    ("read spanning all of it", rd(e0 - 512, 4096 + 1024), "EIO"),
    ("write inside", wr(e0 + 512, 512), "EIO"),
    ("write spanning into it", wr(e0 - 512, 1024), "EIO"),
    ("write just before", wr(e0 - 512, 512), "ok"),
    ("write just after", wr(e1, 512), "ok"),
    ("read back before", rd(e0 - 512, 512), "ok"),
    ("read back after", rd(e1, 512), "ok"),
    ("read far before", rd(0, 65536), "ok"),
    ("read far after", rd(2097152 - 65536, 65536), "ok"),
]
os.close(fd)
bad = ["%s: got %s, want %s" % c for c in cases if c[1] != c[2]]
print("\n".join(bad) if bad else "ok")
PY
) || die "python: $out"
[ "$out" = ok ] || die "error segment through FUSE: $out"
expect_bytes "$F" $((E0 - 512)) 512 0x01
expect_bytes "$F" $E0 512 0x01   # the file behind the error segment: E1 maps to file byte 1 MiB
expect_bytes "$F" 0 $((E0 - 512)) 0x66

# A loop device over the FUSE file sees the same EIO.
attach_loop "$FF"
[ "$(dd_read "$LOOP" $E0)" = EIO ] || die "loop: reading the error range gave '$(dd_read "$LOOP" $E0)', want EIO"
[ "$(dd_read "$LOOP" 0)" = ok ] || die "loop: reading byte 0 failed"
[ "$(dd_read "$LOOP" $E1)" = ok ] || die "loop: reading just after the error range failed"
losetup -d "$LOOP"
LOOP=

# The server is still up and serving.
running "$STRATA_PID" || die "the server exited after I/O errors"
ctl list >/dev/null || die "the control socket stopped answering"
[ "$(ctl status e --json | jq '.[0].segments[0].info.errors')" = 0 ] || die "the file segment counted errors"
[ "$(dd_read "$FF" 0)" = ok ] || die "reads fail after the errors"
[ "$(fuse_mounts "$MNT")" = 1 ] || die "the mount went away"
stop_strata
echo PASS
