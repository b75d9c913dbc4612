#!/bin/bash
# Checks that NBD_OPT_STARTTLS on a server without TLS gets ERR_UNSUP (as does an unknown option) and the plain-text session then continues to GO and serves I/O.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
from nbd_raw import *

r = Raw()
r.greet()
typ, infos, _ = r.option(OPT_STARTTLS)
assert typ == REP_ERR_UNSUP, f"STARTTLS: {typ:#x}"
assert infos == []
typ, infos, _ = r.option(0x1234, b"some data")
assert typ == REP_ERR_UNSUP, f"unknown option: {typ:#x}"
r.negotiate_structured()
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
assert typ == REP_ACK, hex(typ)
wr = r.cmd(CMD_WRITE, 8192, 4096, payload=b"\x11" * 4096)
assert wr["error"] == 0, wr
rd = r.cmd(CMD_READ, 8192, 4096)
assert rd["error"] == 0 and rd["data"] == b"\x11" * 4096
r.disconnect()

# libnbd with TLS required must fail cleanly (it learns TLS is not offered).
import nbd, os
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
try:
    h.connect_unix(os.environ["SOCK"])
    raise AssertionError("TLS-required connect succeeded against a server without TLS")
except nbd.Error as e:
    print("libnbd:", e.string)
check_other_client()
print("starttls ok")
PYEOF

finish
