#!/bin/bash
# Checks NBD_CMD_FLAG_FAST_ZERO: on a regular file (with and without NO_HOLE) and on a memory device the fast zero succeeds and reads back zeros; on a file whose filesystem cannot zero quickly (tmpfs has no FALLOC_FL_ZERO_RANGE) a NO_HOLE fast zero fails at once with ENOTSUP and leaves the data untouched, while the same zero without FAST_ZERO succeeds.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] || die "/dev/shm is not a tmpfs; this test needs one"
SHM=$(mktemp /dev/shm/strata-fast-zero.XXXXXX)
trap 'rc=$?; rm -f "$SHM"; (exit $rc); cleanup' EXIT
export SHM

head -c 8M /dev/urandom >"$WORK/disk.img"
head -c 4M /dev/urandom >"$SHM"
cat >"$WORK/table" <<EOT
[file]
0 16384 file $WORK/disk.img 0
[mem]
0 16384 memory
[shm]
0 8192 file $SHM 0
EOT
start_strata --table "$WORK/table"

py <<'PYEOF'
import ctypes, os, nbd
from nbd_raw import *
M = 1 << 20

for exp in ("file", "mem"):
    h = handle(exp)
    assert h.can_fast_zero(), f"{exp}: FAST_ZERO not advertised"
    h.pwrite(os.urandom(2 * M), 0)
    h.zero(M, 0, nbd.CMD_FLAG_FAST_ZERO)
    h.zero(M, M, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    assert h.pread(2 * M, 0) == bytes(2 * M), f"{exp}: fast zero did not zero"
    h.shutdown()

# The same through a raw client, both reply kinds.
for structured in (True, False):
    r = Raw().go("file", structured=structured)
    assert r.tflags & TFLAG_SEND_FAST_ZERO
    assert r.cmd(CMD_WRITE, 4 * M, 65536, payload=b"\x77" * 65536)["error"] == 0
    rep = r.cmd(CMD_WRITE_ZEROES, 4 * M, 65536, flags=CMD_FLAG_FAST_ZERO)
    assert rep["error"] == 0, rep
    assert r.cmd(CMD_READ, 4 * M, 65536)["data"] == bytes(65536)
    r.disconnect()

# tmpfs: does the kernel offer FALLOC_FL_ZERO_RANGE there?
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(os.environ["SHM"] + ".probe", os.O_CREAT | os.O_RDWR)
os.ftruncate(fd, 65536)
zero_range = libc.fallocate(fd, 0x10 | 0x01, ctypes.c_long(0), ctypes.c_long(4096)) == 0
os.close(fd)
os.unlink(os.environ["SHM"] + ".probe")

h = handle("shm")
h.set_strict_mode(0)
orig = h.pread(M, 0)
try:
    h.zero(M, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
    assert zero_range, "fast zero succeeded where the filesystem cannot zero quickly"
    assert h.pread(M, 0) == bytes(M)
except nbd.Error as e:
    assert not zero_range, f"fast zero failed although tmpfs can zero ranges: {e}"
    assert e.errnum == ENOTSUP, f"slow fast-zero: errno {e.errnum}, expected ENOTSUP"
    assert h.pread(M, 0) == orig, "a refused fast zero changed the data"
    print("tmpfs: fast zero refused with ENOTSUP")
# Without FAST_ZERO the server falls back to writing zeros.
h.zero(M, M, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(M, M) == bytes(M), "slow zero on tmpfs did not zero"
# Without NO_HOLE a fast zero may punch a hole, which tmpfs can do.
h.zero(M, 2 * M, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(M, 2 * M) == bytes(M)
h.shutdown()
check_other_client("file")
print("fast zero ok")
PYEOF

finish
