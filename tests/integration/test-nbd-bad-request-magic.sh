#!/bin/bash
# Checks that a request with a bad magic makes the server close that connection (after answering the valid request before it), while other clients are unaffected.
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
    # Bad magic alone.
    r = Raw().go(structured=structured)
    r.send(struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 1, 0, 512))
    assert r.wait_closed(5), "server kept a connection that sent a bad request magic"
    # A valid read, then garbage in the same segment: the read is answered, then close.
    r = Raw().go(structured=structured)
    r.pending[7] = (CMD_READ, 4096)
    r.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 7, 0, 4096) + b"\x00" * 28)
    rep = r.reply()
    assert rep["cookie"] == 7 and rep["error"] == 0 and rep["data"] == data, rep
    assert r.wait_closed(5), "server kept a connection after zero bytes as a request"
    # A reply magic sent as a request.
    r = Raw().go(structured=structured)
    r.send(struct.pack(">IIQ", SIMPLE_MAGIC, 0, 1) + b"\x00" * 12)
    assert r.wait_closed(5)
    assert other.pread(4096, 0) == data, "other client broken"

# Bad option magic during the handshake closes too.
r = Raw()
r.greet()
r.send(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
assert r.wait_closed(5), "server kept a connection with a bad option magic"

d2 = os.urandom(4096)
other.pwrite(d2, 8192)
assert other.pread(4096, 8192) == d2
other.shutdown()
check_other_client()
print("bad magic ok")
PYEOF

finish
