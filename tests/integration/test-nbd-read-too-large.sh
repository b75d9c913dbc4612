#!/bin/bash
# Checks that a read longer than the 32 MiB maximum block size gets EINVAL (also a 4 GiB - 1 read, which must not be allocated), while a read of exactly 32 MiB works, and the connection stays usable.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 64M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

h = handle()
h.set_strict_mode(0)
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
mark = os.urandom(4096)
h.pwrite(mark, 32 << 20)
got = nbd_errno(h.pread, (32 << 20) + 512, 0)
assert got == EINVAL, f"read of 32 MiB + 512: errno {got}"
big = h.pread(32 << 20, 4096)     # exactly the maximum
assert len(big) == 32 << 20 and big[-4096:] == mark
assert h.pread(4096, 32 << 20) == mark

for structured in (True, False):
    r = Raw().go(structured=structured)
    for length in ((32 << 20) + 1, 48 << 20, 0xFFFFFFFF):
        rep = r.cmd(CMD_READ, 0, length)
        assert rep["error"] == EINVAL, f"raw read of {length}: {rep}"
        assert rep["data"] == b""
    rd = r.cmd(CMD_READ, 32 << 20, 4096)
    assert rd["error"] == 0 and rd["data"] == mark
    r.disconnect()
h.shutdown()
check_other_client()
print("read too large ok")
PYEOF

finish
