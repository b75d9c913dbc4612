#!/bin/bash
# Checks the client flags of the handshake: the server drops a client that sets an unknown flag (the spec's MUST), and accepts FIXED_NEWSTYLE with or without NO_ZEROES.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
from nbd_raw import *

for flags in (FLAG_FIXED_NEWSTYLE | 4, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES | (1 << 31), 0xFFFFFFFF):
    r = Raw()
    r.greet(flags)
    try:
        r.send_option(OPT_LIST)   # whatever follows must not be answered
    except (BrokenPipeError, ConnectionResetError):
        pass                      # already dropped
    assert r.wait_closed(5), f"client flags {flags:#x}: server did not drop the connection"

for flags in (FLAG_FIXED_NEWSTYLE, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
    r = Raw()
    r.greet(flags)
    typ, infos, _ = r.option(OPT_LIST)
    assert typ == REP_ACK and len(infos) == 1, (hex(typ), infos)
    typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
    assert typ == REP_ACK
    assert r.cmd(CMD_READ, 0, 512)["error"] == 0
    r.disconnect()
check_other_client()
print("client flags ok")
PYEOF

finish
