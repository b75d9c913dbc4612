#!/bin/bash
# Checks zero-length requests (unspecified by the spec, but the server SHOULD NOT disconnect): a zero-length read succeeds with a structured reply when structured replies are negotiated (libnbd drops the connection on a simple one) and a simple one otherwise; zero-length write/trim/zero/cache/flush each get exactly one reply and the connection stays usable.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

for structured in (True, False):
    h = handle(structured=structured)
    h.set_strict_mode(0)
    assert h.pread(0, 0) == b"", "zero-length read returned data"
    assert h.pread(0, 4 << 20) == b""          # at the very end
    d = os.urandom(4096)
    h.pwrite(d, 0)
    assert h.pread(4096, 0) == d, "connection unusable after a zero-length read"
    h.pwrite(b"", 0)
    h.shutdown()

    r = Raw().go(structured=structured)
    rep = r.cmd(CMD_READ, 4096, 0)
    assert rep["error"] == 0 and rep["data"] == b"", rep
    assert rep["structured"] == structured, f"zero-length read: structured={rep['structured']}, negotiated={structured}"
    if structured:
        rep = r.cmd(CMD_READ, 0, 0, flags=CMD_FLAG_DF)
        assert rep["structured"] and rep["error"] == 0, rep
    for typ in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE, CMD_FLUSH):
        rep = r.cmd(typ, 8192, 0)        # one reply each (cmd checks the cookie)
        rd = r.cmd(CMD_READ, 0, 4096)
        assert rd["error"] == 0 and rd["data"] == d, f"after zero-length type {typ}: {rd}"
    r.disconnect()
check_other_client()
print("zero-length requests ok")
PYEOF

finish
