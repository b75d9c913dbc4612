#!/bin/bash
# Checks that a write whose payload is larger than 32 MiB (raw socket) gets an error reply, writes nothing, and its payload is consumed so the connection stays in sync: the following read on the same connection works (simple and structured replies).
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 64M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os
from nbd_raw import *

other = handle()
mark = os.urandom(4096)
other.pwrite(mark, 0)

for structured in (True, False):
    r = Raw(timeout=30).go(structured=structured)
    n = (32 << 20) + 4096
    payload = b"\xee" * n
    rep = r.cmd(CMD_WRITE, 0, n, payload=payload)
    assert rep["error"] == EINVAL, f"oversized write: {rep}"
    rd = r.cmd(CMD_READ, 0, 4096)
    assert rd["error"] == 0, rd
    assert rd["data"] == mark, "oversized write changed the data, or the stream lost sync"
    # Too large and out of range at once, then a pipelined read behind it.
    c1 = r.request(CMD_WRITE, 40 << 20, 40 << 20, payload=b"\xdd" * (40 << 20))
    c2 = r.request(CMD_READ, 0, 4096)
    reps = {}
    for _ in range(2):
        rep = r.reply()
        reps[rep["cookie"]] = rep
    assert reps[c1]["error"] in (EINVAL, ENOSPC), reps[c1]
    assert reps[c2]["error"] == 0 and reps[c2]["data"] == mark, "stream out of sync after oversized write"
    # A good write on the same connection still lands.
    good = os.urandom(8192)
    assert r.cmd(CMD_WRITE, 1 << 20, 8192, payload=good)["error"] == 0
    assert r.cmd(CMD_READ, 1 << 20, 8192)["data"] == good
    r.disconnect()
    assert other.pread(4096, 0) == mark

other.shutdown()
# Nothing of the refused payloads reached the file.
with open(os.environ["WORK"] + "/disk.img", "rb") as f:
    d = f.read()
assert b"\xee" * 512 not in d and b"\xdd" * 512 not in d, "refused write payload reached the disk"
check_other_client()
print("write too large ok")
PYEOF

finish
