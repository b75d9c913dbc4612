#!/bin/bash
# Checks base:allocation across a table of zero, file, memory and sparse-file segments: nbdinfo --map shows the zero segment and unwritten ranges as hole,zero and written ranges as data, extents merge across segment boundaries, and raw block status requests crossing boundaries are clipped to the request.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

M=$((1 << 20))
head -c 1M /dev/urandom >"$WORK/data.img"
truncate -s 1M "$WORK/sparse.img"
cat >"$WORK/table" <<EOT
[t]
0 2048 zero
2048 2048 file $WORK/data.img 0
4096 2048 memory
6144 2048 file $WORK/sparse.img 0
EOT
start_strata --table "$WORK/table"

map() { nbdinfo --map --json "$(uri t)"; }
expect_map() {  # JSON-LIST-OF-[offset,length,type]
  map >"$WORK/map.json"
  EXPECT=$1 py <<'PYEOF'
import json, os
got = [[e["offset"], e["length"], e["type"]] for e in json.load(open(os.environ["WORK"] + "/map.json"))]
want = json.loads(os.environ["EXPECT"])
assert got == want, f"map\n got  {got}\n want {want}"
PYEOF
}

# zero | data | memory (empty) + sparse file: the last two merge into one hole.
expect_map "[[0, $M, 3], [$M, $M, 0], [$((2 * M)), $((2 * M)), 3]]"

# Write into the memory segment and the sparse file.
py <<'PYEOF'
import os
from nbd_raw import *
h = handle("t")
h.pwrite(os.urandom(65536), (2 << 20) + 65536)   # the memory target allocates 64 KiB pages
h.pwrite(os.urandom(4096), (3 << 20) + 4096)
h.flush()
h.shutdown()
PYEOF
expect_map "[[0, $M, 3], [$M, $M, 0], [$((2 * M)), 65536, 3], [$((2 * M + 65536)), 65536, 0], [$((2 * M + 131072)), $((M - 131072 + 4096)), 3], [$((3 * M + 4096)), 4096, 0], [$((3 * M + 8192)), $((M - 8192)), 3]]"

py <<'PYEOF'
from nbd_raw import *
r = Raw().go("t", meta=["base:allocation"])
# A request across zero|file stops at the request's end.
bs = r.cmd(CMD_BLOCK_STATUS, (1 << 20) - 4096, 8192)
assert bs["error"] == 0, bs
assert bs["extents"] == [(4096, 3), (4096, 0)], bs["extents"]
# Entirely inside the zero segment.
bs = r.cmd(CMD_BLOCK_STATUS, 512, 1000)
assert bs["extents"] == [(1000, 3)], bs["extents"]
# The whole device in one request: lengths add up to the device size.
bs = r.cmd(CMD_BLOCK_STATUS, 0, 4 << 20)
assert sum(l for l, f in bs["extents"]) == 4 << 20, bs["extents"]
assert len(bs["extents"]) == 7, bs["extents"]
# Zero-length block status is invalid.
assert r.cmd(CMD_BLOCK_STATUS, 0, 0)["error"] == EINVAL
r.disconnect()
print("table block status ok")
PYEOF

finish
