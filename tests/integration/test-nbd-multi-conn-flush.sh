#!/bin/bash
# Checks multi-conn semantics: both a file export and a memory export advertise can_multi_conn, and a write on connection A is visible on connection B and flushed by a flush sent on B (also with FUA writes and with connections served by different queues).
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 8M "$WORK/disk.img"
cat >"$WORK/table" <<EOT
[f]
0 16384 file $WORK/disk.img 0
[m]
0 16384 memory
EOT
start_strata --table "$WORK/table" --queues 2

py <<'PYEOF'
import os, nbd
from nbd_raw import *
w = os.environ["WORK"]
for exp in ("f", "m"):
    # Several pairs, so that A and B land on different queues at least once.
    for pair in range(3):
        a, b = handle(exp), handle(exp)
        assert a.can_multi_conn() and b.can_multi_conn(), f"{exp}: multi-conn not advertised"
        assert b.can_flush()
        off = (pair * 2 + 1) << 20
        d = os.urandom(1 << 20)
        a.pwrite(d, off)                     # no FUA
        b.flush()                            # flush on the other connection
        assert b.pread(1 << 20, off) == d, f"{exp}: B does not see A's write after flush"
        if exp == "f":
            with open(f"{w}/disk.img", "rb") as f:
                f.seek(off)
                assert f.read(1 << 20) == d, "backing file lacks A's write after B's flush"
        # FUA write on B, read on A.
        d2 = os.urandom(65536)
        b.pwrite(d2, off, nbd.CMD_FLAG_FUA)
        assert a.pread(65536, off) == d2, f"{exp}: A does not see B's FUA write"
        # Zero on A, flush on B.
        a.zero(65536, off)
        b.flush()
        assert b.pread(65536, off) == bytes(65536)
        a.shutdown()
        b.shutdown()
print("multi-conn ok")
PYEOF

finish
