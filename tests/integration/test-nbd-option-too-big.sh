#!/bin/bash
# Checks that an option with a 100 KiB payload gets NBD_REP_ERR_TOO_BIG, its payload is skipped, and the same session then negotiates and serves I/O.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os
from nbd_raw import *

r = Raw()
r.greet()
big = os.urandom(100 * 1024)
# A known option (GO) and an unknown one, both oversized.
for opt in (OPT_GO, OPT_LIST_META_CONTEXT, 0x4242):
    typ, infos, _ = r.option(opt, big)
    assert typ == REP_ERR_TOO_BIG, f"option {opt} with 100 KiB: {typ:#x}"
    assert infos == []
r.negotiate_structured()
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
assert typ == REP_ACK, hex(typ)
wr = r.cmd(CMD_WRITE, 0, 4096, payload=big[:4096])
assert wr["error"] == 0, wr
rd = r.cmd(CMD_READ, 0, 4096)
assert rd["error"] == 0 and rd["data"] == big[:4096]
r.disconnect()
check_other_client()
print("too big ok")
PYEOF

finish
