#!/bin/bash
# Checks that NBD_CMD_BLOCK_STATUS without a negotiated meta context gets EINVAL (structured and simple replies, also through libnbd with strict mode off) and the connection and a parallel client keep working.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

other = handle(meta=True)
for structured in (True, False):
    r = Raw().go(structured=structured)
    for flags in (0, CMD_FLAG_REQ_ONE):
        rep = r.cmd(CMD_BLOCK_STATUS, 0, 65536, flags=flags)
        assert rep["error"] == EINVAL, f"block status without a context (structured={structured}): {rep}"
        assert rep["extents"] == []
    rd = r.cmd(CMD_READ, 0, 4096)
    assert rd["error"] == 0 and len(rd["data"]) == 4096
    r.disconnect()
    ents = []
    other.block_status(65536, 0, lambda ctx, off, e, err: ents.append(list(e)))
    assert ents, "parallel client with a context got no extents"

# libnbd: structured replies, no context requested, strict mode off.
h = handle(meta=False)
h.set_strict_mode(0)
try:
    h.block_status(65536, 0, lambda *a: 0)
    raise AssertionError("block status without a context succeeded")
except nbd.Error as e:
    # libnbd may refuse it itself (ENOTSUP) or pass on the server's EINVAL.
    assert e.errnum in (EINVAL, ENOTSUP), e
assert len(h.pread(4096, 0)) == 4096
h.shutdown()
other.shutdown()
print("block status without context ok")
PYEOF

finish
