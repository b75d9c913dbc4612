#!/bin/bash
# Checks read-only exports (--read-only, and [x ro] in a table next to a writable device): the handshake says read-only without write features, write/trim/write-zeroes get EPERM (raw writes keep the stream in sync), reads and flush work, the file is untouched, and the writable neighbour still accepts writes.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

head -c 4M /dev/urandom >"$WORK/disk.img"
cp "$WORK/disk.img" "$WORK/orig.img"

check_ro() {  # EXPORT
  EXPORT=$1 py <<'PYEOF'
import os, nbd
from nbd_raw import *
exp = os.environ["EXPORT"]
orig = open(os.environ["WORK"] + "/orig.img", "rb").read()
h = handle(exp)
assert h.is_read_only(), "export not advertised read-only"
for f in ("can_trim", "can_zero", "can_fast_zero", "can_fua"):
    assert not getattr(h, f)(), f"read-only export advertises {f}"
h.set_strict_mode(0)
for name, fn in [("write", lambda: h.pwrite(b"w" * 4096, 0)),
                 ("write fua", lambda: h.pwrite(b"w" * 4096, 4096, nbd.CMD_FLAG_FUA)),
                 ("trim", lambda: h.trim(4096, 0)),
                 ("write-zeroes", lambda: h.zero(4096, 0)),
                 ("write-zeroes no-hole", lambda: h.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE))]:
    got = nbd_errno(fn)
    assert got == EPERM, f"{name} on a read-only export: errno {got}, expected EPERM"
    assert h.pread(4096, 0) == orig[:4096]
h.flush()
assert h.pread(1 << 20, 1 << 20) == orig[1 << 20:2 << 20]
h.shutdown()
# Raw, both reply kinds: the refused write's payload is consumed.
for structured in (True, False):
    r = Raw().go(exp, structured=structured)
    assert r.tflags & TFLAG_READ_ONLY
    rep = r.cmd(CMD_WRITE, 0, 65536, payload=b"z" * 65536)
    assert rep["error"] == EPERM, rep
    rd = r.cmd(CMD_READ, 0, 4096)
    assert rd["error"] == 0 and rd["data"] == orig[:4096], "stream out of sync after refused write"
    r.disconnect()
print(f"export '{exp}' is read-only")
PYEOF
  cmp "$WORK/disk.img" "$WORK/orig.img" || die "the read-only export's file changed"
}

# 1. --read-only
start_strata --file "$WORK/disk.img" --read-only
nbdinfo --json "$(uri)" | grep -q '"is_read_only": true' || die "nbdinfo does not show is_read_only true"
check_ro ""
server_alive
stop_strata
log_clean

# 2. [x ro] next to a writable [y]
cat >"$WORK/table" <<EOT
[x ro]
0 8192 file $WORK/disk.img 0
[y]
0 8192 memory
EOT
start_strata --table "$WORK/table"
check_ro x
py <<'PYEOF'
from nbd_raw import *
h = handle("y")
assert not h.is_read_only(), "[y] is read-only too"
h.pwrite(b"q" * 4096, 0)
h.zero(4096, 4096)
h.trim(4096, 8192)
assert h.pread(4096, 0) == b"q" * 4096
h.shutdown()
PYEOF
finish
