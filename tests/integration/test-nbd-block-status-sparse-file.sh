#!/bin/bash
# Checks base:allocation on a sparse file: nbdinfo --map reports holes as hole,zero and written ranges as data, and a trim or write-zeroes (may punch) through NBD turns data back into a hole.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

M=$((1 << 20))
truncate -s 16M "$WORK/disk.img"
head -c 1M /dev/urandom | dd of="$WORK/disk.img" bs=1M seek=1 conv=notrunc status=none
head -c 64K /dev/urandom | dd of="$WORK/disk.img" bs=64K seek=128 conv=notrunc status=none  # at 8 MiB
start_strata --file "$WORK/disk.img"

map() { nbdinfo --map --json "$(uri)"; }
expect_map() {  # JSON-LIST-OF-[offset,length,type]
  map >"$WORK/map.json"
  EXPECT=$1 py <<'PYEOF'
import json, os
got = [[e["offset"], e["length"], e["type"]] for e in json.load(open(os.environ["WORK"] + "/map.json"))]
want = json.loads(os.environ["EXPECT"])
assert got == want, f"map\n got  {got}\n want {want}"
PYEOF
}

expect_map "[[0, $M, 3], [$M, $M, 0], [$((2 * M)), $((6 * M)), 3], [$((8 * M)), 65536, 0], [$((8 * M + 65536)), $((8 * M - 65536)), 3]]"

# Data written through NBD shows up; a trim and a write-zeroes punch it out again.
py <<'PYEOF'
import os
from nbd_raw import *
h = handle()
h.pwrite(os.urandom(1 << 20), 4 << 20)
h.flush()
h.shutdown()
PYEOF
expect_map "[[0, $M, 3], [$M, $M, 0], [$((2 * M)), $((2 * M)), 3], [$((4 * M)), $M, 0], [$((5 * M)), $((3 * M)), 3], [$((8 * M)), 65536, 0], [$((8 * M + 65536)), $((8 * M - 65536)), 3]]"

py <<'PYEOF'
from nbd_raw import *
h = handle()
h.trim(1 << 20, 1 << 20)
h.zero(1 << 20, 4 << 20)          # without NO_HOLE: may punch
assert h.pread(1 << 20, 4 << 20) == bytes(1 << 20)
h.shutdown()
PYEOF
expect_map "[[0, $((8 * M)), 3], [$((8 * M)), 65536, 0], [$((8 * M + 65536)), $((8 * M - 65536)), 3]]"

finish
