#!/bin/bash
# Checks NBD_OPT_ABORT: the server acknowledges it and closes the session (raw client and libnbd's opt_abort), also when the client closes without waiting for the reply, and keeps serving others.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

r = Raw()
r.greet()
r.negotiate_structured()
r.send_option(OPT_ABORT)
opt, typ, data = r.option_reply()
assert opt == OPT_ABORT and typ == REP_ACK, (opt, hex(typ))
assert r.wait_closed(5), "server did not close the session after NBD_OPT_ABORT"

# libnbd in option mode.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(os.environ["SOCK"])
assert h.aio_is_negotiating()
h.opt_abort()
assert h.aio_is_closed(), "libnbd handle not closed after opt_abort"

# A client that aborts and hangs up at once (the spec allows it).
for _ in range(20):
    r = Raw()
    r.greet()
    r.send_option(OPT_ABORT)
    r.close()

check_other_client()
print("abort ok")
PYEOF

finish
