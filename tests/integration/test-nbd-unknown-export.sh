#!/bin/bash
# Checks that asking for an export that does not exist fails cleanly: libnbd's connect raises, NBD_OPT_GO gets ERR_UNKNOWN and the same session can still pick a real export, NBD_OPT_EXPORT_NAME closes the session, and the server keeps serving the real exports.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

truncate -s 4M "$WORK/a.img"
cat >"$WORK/table" <<EOT
[a]
0 8192 file $WORK/a.img 0
[b]
0 2048 memory
EOT
start_strata --table "$WORK/table"

if nbdinfo "$(uri nosuch)" >"$WORK/out" 2>&1; then die "nbdinfo on an unknown export succeeded"; fi

py <<'PYEOF'
import os, nbd
from nbd_raw import *

# A plain libnbd connect to an unknown export raises.
h = nbd.NBD()
h.set_export_name("nosuch")
try:
    h.connect_unix(os.environ["SOCK"])
    raise AssertionError("connect to an unknown export succeeded")
except nbd.Error as e:
    print("libnbd:", e.string)
check_other_client("a")

# In option mode the failed GO leaves the session usable.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(os.environ["SOCK"])
h.set_export_name("nosuch")
try:
    h.opt_go()
    raise AssertionError("opt_go to an unknown export succeeded")
except nbd.Error:
    pass
assert h.aio_is_negotiating(), "session left option mode after a failed GO"
h.set_export_name("b")
h.opt_go()
assert h.get_size() == 1 << 20
h.pwrite(b"x" * 512, 0)
assert h.pread(512, 0) == b"x" * 512
h.shutdown()

# Raw: INFO and GO on an unknown name get ERR_UNKNOWN (with a message).
r = Raw()
r.greet()
for opt in (OPT_INFO, OPT_GO):
    typ, infos, msg = r.option(opt, Raw.info_go_data("nosuch"))
    assert typ == REP_ERR_UNKNOWN, hex(typ)
    assert infos == [], infos
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data("a"))
assert typ == REP_ACK, hex(typ)
assert r.cmd(CMD_READ, 0, 4096)["error"] == 0
r.disconnect()

# Raw NBD_OPT_EXPORT_NAME with an unknown name: the server must end the session.
r = Raw()
r.greet()
r.send_option(OPT_EXPORT_NAME, b"nosuch")
assert r.wait_closed(5), "server kept the session open after EXPORT_NAME of an unknown export"
r.close()

check_other_client("a")
check_other_client("b")
print("unknown export ok")
PYEOF

finish
