#!/bin/bash
# Checks NBD_CMD_FLAG_REQ_ONE on block status: exactly one extent comes back (the first of the range, clipped to the request), where the same request without the flag returns several.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 8M "$WORK/disk.img"
for off in 1 3 5; do   # data at 1, 3 and 5 MiB, 256 KiB each
  head -c 256K /dev/urandom | dd of="$WORK/disk.img" bs=256K seek=$((off * 4)) conv=notrunc status=none
done
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import nbd
from nbd_raw import *
M = 1 << 20
h = handle()
def status(length, off, flags=0):
    out = []
    h.block_status(length, off, lambda ctx, o, e, err: out.extend(zip(e[0::2], e[1::2])), flags)
    return out

full = status(8 * M, 0)
assert len(full) >= 6, full
assert full[:2] == [(M, 3), (256 << 10, 0)], full

one = status(8 * M, 0, nbd.CMD_FLAG_REQ_ONE)
assert one == [(M, 3)], f"REQ_ONE from 0: {one}"
one = status(7 * M, M, nbd.CMD_FLAG_REQ_ONE)
assert one == [(256 << 10, 0)], f"REQ_ONE from 1 MiB: {one}"
one = status(4096, M + 8192, nbd.CMD_FLAG_REQ_ONE)
assert one == [(4096, 0)], f"REQ_ONE inside a data extent: {one}"
one = status(3 * M, M + (128 << 10), nbd.CMD_FLAG_REQ_ONE)
assert one == [(128 << 10, 0)], f"REQ_ONE from the middle of a data extent: {one}"
h.shutdown()

# Raw, to see the reply exactly as sent.
r = Raw().go(meta=["base:allocation"])
bs = r.cmd(CMD_BLOCK_STATUS, 0, 8 * M, flags=CMD_FLAG_REQ_ONE)
assert bs["error"] == 0 and bs["chunks"] == [REPLY_BLOCK_STATUS], bs
assert bs["extents"] == [(M, 3)], bs["extents"]
bs = r.cmd(CMD_BLOCK_STATUS, 0, 8 * M)
assert len(bs["extents"]) >= 6, bs["extents"]
r.disconnect()
print("req one ok")
PYEOF

finish
