#!/bin/bash
# Checks 8 clients at once (separate processes, each with many requests in flight) writing, zeroing and reading back their own regions of one export: every client verifies its data, and afterwards a fresh client and the backing file hold exactly what each wrote.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 32M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

cat >"$WORK/worker.py" <<'PYEOF'
import random, sys, nbd
from nbd_raw import handle
i = int(sys.argv[1])
REGION, CHUNK = 4 << 20, 64 << 10
base = i * REGION
rng = random.Random(i)
h = handle()
assert h.can_multi_conn()
for rnd in range(3):
    want = {}
    cookies = []
    for c in range(REGION // CHUNK):
        off = base + c * CHUNK
        if rnd == 1 and c % 5 == 0:
            cookies.append(h.aio_zero(CHUNK, off))
            want[off] = bytes(CHUNK)
        else:
            d = rng.randbytes(CHUNK)
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(d)), off))
            want[off] = d
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
    bufs = {}
    for off in want:
        b = nbd.Buffer(CHUNK)
        bufs[h.aio_pread(b, off)] = (b, off)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c, (b, off) in bufs.items():
        assert h.aio_command_completed(c)
        assert bytes(b.to_bytearray()) == want[off], f"client {i} round {rnd}: bad data at {off}"
h.flush()
h.shutdown()
# The final contents, for the parent to check.
with open(f"{sys.argv[2]}/want.{i}", "wb") as f:
    for off in sorted(want):
        f.write(want[off])
PYEOF

pids=()
for i in 0 1 2 3 4 5 6 7; do
  py "$i" "$WORK" <"$WORK/worker.py" &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
[ $failed -eq 0 ] || die "$failed of 8 parallel clients failed"

py <<'PYEOF'
import os
from nbd_raw import handle
w = os.environ["WORK"]
disk = open(f"{w}/disk.img", "rb").read()
h = handle()
for i in range(8):
    want = open(f"{w}/want.{i}", "rb").read()
    assert len(want) == 4 << 20
    assert h.pread(4 << 20, i * (4 << 20)) == want, f"fresh client: region {i} differs"
    assert disk[i * (4 << 20):(i + 1) * (4 << 20)] == want, f"backing file: region {i} differs"
h.shutdown()
print("8 parallel clients ok")
PYEOF

finish
