#!/bin/bash
# Checks an `error` segment in a table (simple and structured replies): reads, writes, write-zeroes, trims and block status touching it fail with EIO while a device-wide flush succeeds (as documented), the file segments around it keep working on the same connection, and the server stays up for other clients.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

head -c 2M /dev/urandom >"$WORK/disk.img"
cat >"$WORK/table" <<EOT
[e]
0 2048 file $WORK/disk.img 0
2048 2048 error
4096 2048 file $WORK/disk.img 1048576
[ok]
0 2048 memory
[allerr]
0 2048 error
EOT
start_strata --table "$WORK/table"

# The all-error device still completes the handshake; reading it fails.
nbdinfo "$(uri allerr)" >/dev/null || die "nbdinfo on an error device failed"
if nbdcopy "$(uri allerr)" - >/dev/null 2>&1; then die "copying an error device succeeded"; fi

py <<'PYEOF'
import os, nbd
from nbd_raw import *
M = 1 << 20
disk = open(os.environ["WORK"] + "/disk.img", "rb").read()
other = handle("ok")

h = handle("e")
cases = [
    ("read", lambda: h.pread(4096, M)),
    ("read across file|error", lambda: h.pread(8192, M - 4096)),
    ("read across error|file", lambda: h.pread(8192, 2 * M - 4096)),
    ("write", lambda: h.pwrite(b"w" * 4096, M + 4096)),
    ("write across file|error", lambda: h.pwrite(b"w" * 8192, M - 4096)),
    ("write-zeroes", lambda: h.zero(4096, M)),
    ("trim", lambda: h.trim(4096, M)),
    ("block status", lambda: h.block_status(4096, M, lambda *a: 0)),
]
for name, fn in cases:
    got = nbd_errno(fn)
    assert got == EIO, f"{name}: errno {got}, expected EIO"
    assert h.pread(4096, 0) == disk[:4096], f"after {name}: file segment unreadable"
    assert h.pread(4096, 2 * M) == disk[M:M + 4096]
    d = os.urandom(4096)
    other.pwrite(d, 0)
    assert other.pread(4096, 0) == d
# A flush succeeds: the error target has nothing to make durable
# (docs/targets/error.md), so the file segments can still be flushed.
h.flush()
# The file segments are still writable.
d = os.urandom(8192)
h.pwrite(d, 2 * M + 8192)
assert h.pread(8192, 2 * M + 8192) == d
h.shutdown()

for structured in (True, False):
    r = Raw().go("e", structured=structured)
    rep = r.cmd(CMD_READ, M, 65536)
    assert rep["error"] == EIO and rep["data"] == b"", rep
    if structured:
        assert rep["chunks"] == [REPLY_ERROR], rep["chunks"]
    rep = r.cmd(CMD_WRITE, M, 65536, payload=b"x" * 65536)
    assert rep["error"] == EIO, rep
    rd = r.cmd(CMD_READ, 0, 4096)
    assert rd["error"] == 0 and rd["data"] == disk[:4096], "stream out of sync after EIO"
    r.disconnect()
other.shutdown()
check_other_client("ok")
print("error target ok")
PYEOF

finish
