#!/bin/bash
# Checks requests beyond the end of the export: read, trim, cache and block status get EINVAL, write and write-zeroes get ENOSPC (as qemu-nbd), offset+length overflow is refused too, a request ending exactly at the end works, and the connection and a parallel client stay usable.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

other = handle()
h = handle()
h.set_strict_mode(0)   # libnbd would refuse these client-side
size = h.get_size()
assert size == 4 << 20
tail = os.urandom(4096)
h.pwrite(tail, size - 4096)  # ends exactly at the end: fine
assert h.pread(4096, size - 4096) == tail

def still_ok():
    assert h.pread(4096, size - 4096) == tail, "connection unusable after an error"
    d = os.urandom(512)
    other.pwrite(d, 0)
    assert other.pread(512, 0) == d, "parallel client broken"

cases = [
    ("read straddling the end", EINVAL, lambda: h.pread(4096, size - 2048)),
    ("read after the end", EINVAL, lambda: h.pread(512, size)),
    ("read far away", EINVAL, lambda: h.pread(512, 1 << 62)),
    ("write straddling the end", ENOSPC, lambda: h.pwrite(b"x" * 4096, size - 2048)),
    ("write after the end", ENOSPC, lambda: h.pwrite(b"x" * 512, size + 4096)),
    ("write-zeroes past the end", ENOSPC, lambda: h.zero(8192, size - 4096)),
    ("trim past the end", EINVAL, lambda: h.trim(8192, size - 4096)),
    ("cache past the end", EINVAL, lambda: h.cache(8192, size - 4096)),
    ("block status past the end", EINVAL,
     lambda: h.block_status(4096, size, lambda *a: 0)),
]
for name, want, fn in cases:
    got = nbd_errno(fn)
    assert got == want, f"{name}: errno {got}, expected {want}"
    still_ok()

# The straddling write did not write its in-range part.
assert h.pread(4096, size - 4096) == tail

# offset + length wraps around 2^64: raw, libnbd cannot send it.
r = Raw().go(meta=["base:allocation"])
for typ, want in ((CMD_READ, EINVAL), (CMD_TRIM, EINVAL), (CMD_WRITE_ZEROES, ENOSPC),
                  (CMD_BLOCK_STATUS, EINVAL), (CMD_CACHE, EINVAL)):
    rep = r.cmd(typ, (1 << 64) - 512, 1024)
    assert rep["error"] == want, f"type {typ} wrapping offset: {rep}"
rep = r.cmd(CMD_WRITE, (1 << 64) - 512, 1024, payload=b"y" * 1024)
assert rep["error"] == ENOSPC, rep
rd = r.cmd(CMD_READ, size - 4096, 4096)
assert rd["error"] == 0 and rd["data"] == tail, "raw connection out of sync after refused write"
r.disconnect()

h.shutdown()
other.shutdown()
print("out of range ok")
PYEOF

finish
