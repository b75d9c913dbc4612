#!/bin/bash
# Checks block-size enforcement on an O_DIRECT export (minimum block size 4096): unaligned reads, writes, trims and write-zeroes get EINVAL without touching the data, aligned ones work, block status and cache may be unaligned, and the connection stays usable.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

head -c 8M /dev/urandom >"$WORK/disk.img"
cp "$WORK/disk.img" "$WORK/orig.img"
start_strata --file "$WORK/disk.img" --direct

py <<'PYEOF'
import os, nbd
from nbd_raw import *
orig = open(os.environ["WORK"] + "/orig.img", "rb").read()
h = handle()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096, h.get_block_size(nbd.SIZE_MINIMUM)
h.set_strict_mode(0)
cases = [
    ("read, unaligned offset", lambda: h.pread(4096, 512)),
    ("read, unaligned length", lambda: h.pread(1000, 0)),
    ("write, unaligned offset", lambda: h.pwrite(b"u" * 4096, 100)),
    ("write, unaligned length", lambda: h.pwrite(b"u" * 5000, 8192)),
    ("trim, unaligned", lambda: h.trim(512, 4096)),
    ("write-zeroes, unaligned", lambda: h.zero(4096, 2048)),
]
for name, fn in cases:
    got = nbd_errno(fn)
    assert got == EINVAL, f"{name}: errno {got}, expected EINVAL"
    assert h.pread(16384, 0) == orig[:16384], f"after {name}: data changed or connection broken"
# Hints and queries need no alignment.
h.cache(1000, 512)
ents = []
h.block_status(1000, 512, lambda ctx, off, e, err: ents.extend(e))
assert ents and ents[0] <= 1000 + 4096, ents
# Aligned I/O works.
d = os.urandom(8192)
h.pwrite(d, 4096)
assert h.pread(8192, 4096) == d
h.zero(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.shutdown()
print("unaligned direct ok")
PYEOF

finish
