#!/bin/bash
# Checks that command flags that are unknown or not valid for the command (REQ_ONE on a read, FAST_ZERO on a write, DF without structured replies, bit 9...) get EINVAL, refused writes keep the stream in sync, and valid flag uses (FUA, DF, NO_HOLE, FAST_ZERO, REQ_ONE) still work.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os
from nbd_raw import *

other = handle()
data = os.urandom(4096)
other.pwrite(data, 0)

r = Raw().go(meta=["base:allocation"])
bad = [
    (CMD_READ, 1 << 9, b""),
    (CMD_READ, 1 << 15, b""),
    (CMD_READ, CMD_FLAG_REQ_ONE, b""),
    (CMD_READ, CMD_FLAG_FAST_ZERO, b""),
    (CMD_READ, CMD_FLAG_NO_HOLE, b""),
    (CMD_WRITE, CMD_FLAG_FAST_ZERO, b"\xab" * 4096),
    (CMD_WRITE, CMD_FLAG_DF, b"\xab" * 4096),
    (CMD_WRITE, 1 << 12, b"\xab" * 4096),
    (CMD_FLUSH, CMD_FLAG_REQ_ONE, b""),
    (CMD_TRIM, CMD_FLAG_NO_HOLE, b""),
    (CMD_WRITE_ZEROES, CMD_FLAG_DF, b""),
    (CMD_BLOCK_STATUS, CMD_FLAG_DF, b""),
    (CMD_BLOCK_STATUS, 1 << 9, b""),
]
for typ, flags, payload in bad:
    length = 0 if typ == CMD_FLUSH else 4096
    rep = r.cmd(typ, 0, length, flags=flags, payload=payload)
    assert rep["error"] == EINVAL, f"type {typ} flags {flags:#x}: {rep}"
    rd = r.cmd(CMD_READ, 0, 4096)
    assert rd["error"] == 0 and rd["data"] == data, f"after type {typ} flags {flags:#x}: out of sync or data changed"

# Valid flags are accepted.
ok = [
    (CMD_READ, CMD_FLAG_DF, b""),
    (CMD_READ, CMD_FLAG_FUA, b""),
    (CMD_WRITE, CMD_FLAG_FUA, data),
    (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, b""),
    (CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, b""),
    (CMD_TRIM, CMD_FLAG_FUA, b""),
    (CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, b""),
]
for typ, flags, payload in ok:
    off = 0 if typ == CMD_WRITE or typ == CMD_READ else 65536
    rep = r.cmd(typ, off, 4096, flags=flags, payload=payload)
    assert rep["error"] == 0, f"valid type {typ} flags {flags:#x}: {rep}"
r.disconnect()

# DF is only valid with structured replies.
r = Raw().go(structured=False)
assert not r.tflags & TFLAG_SEND_DF
rep = r.cmd(CMD_READ, 0, 4096, flags=CMD_FLAG_DF)
assert rep["error"] == EINVAL, f"DF read without structured replies: {rep}"
rd = r.cmd(CMD_READ, 0, 4096)
assert rd["error"] == 0 and rd["data"] == data
r.disconnect()

assert other.pread(4096, 0) == data
other.shutdown()
check_other_client()
print("unknown flags ok")
PYEOF

finish
