#!/bin/bash
# Checks that requests with an unknown command type get EINVAL (structured and simple replies) and the same connection, and a second client connected meanwhile, keep working.
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

for structured in (True, False):
    r = Raw().go(structured=structured)
    for typ in (8, 9, 42, 0x7FFF, 0xFFFF):
        rep = r.cmd(typ, 0, 512)
        assert rep["structured"] == structured, rep
        assert rep["error"] == EINVAL, f"command type {typ}: {rep}"
        rd = r.cmd(CMD_READ, 0, 4096)
        assert rd["error"] == 0 and rd["data"] == data, "read after an unknown command failed"
    # Several unknown commands pipelined with reads: every one is answered.
    cookies = [r.request(t, 0, 4096) for t in (CMD_READ, 77, CMD_READ, 78)]
    got = {}
    for _ in cookies:
        rep = r.reply()
        got[rep["cookie"]] = rep
    assert got[cookies[0]]["data"] == data and got[cookies[2]]["data"] == data
    assert got[cookies[1]]["error"] == EINVAL and got[cookies[3]]["error"] == EINVAL
    r.disconnect()

assert other.pread(4096, 0) == data
other.shutdown()
check_other_client()
print("unknown command ok")
PYEOF

finish
