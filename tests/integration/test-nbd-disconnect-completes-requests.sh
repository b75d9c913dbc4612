#!/bin/bash
# Checks NBD_CMD_DISC: requests sent before it are all carried out and answered before the server closes the connection, and the data they wrote is there for the next client.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 16M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os
from nbd_raw import *

for structured in (True, False):
    r = Raw().go(structured=structured)
    want = {}
    for i in range(64):
        d = os.urandom(65536)
        want[i * 65536 + (0 if structured else 8 << 20)] = d
    cookies = [r.request(CMD_WRITE, off, len(d), payload=d) for off, d in want.items()]
    cookies += [r.request(CMD_READ, off, 65536) for off in list(want)[:8]]
    cookies.append(r.request(CMD_FLUSH))
    r.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0xD15C, 0, 0))
    got = set()
    for _ in cookies:
        rep = r.reply()
        assert rep["error"] == 0, rep
        got.add(rep["cookie"])
    assert got == set(cookies), "some requests before NBD_CMD_DISC were not answered"
    assert r.wait_closed(5), "server did not close after NBD_CMD_DISC"

    h = handle()
    for off, d in want.items():
        assert h.pread(len(d), off) == d, f"write at {off} before NBD_CMD_DISC is missing"
    h.shutdown()
print("disconnect ok")
PYEOF

finish
