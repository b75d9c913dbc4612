#!/usr/bin/env python3
"""populate.py URI SIZE SEED FRACTION: random data into a random FRACTION of the
4 KiB blocks of an NBD export (the same blocks and bytes for a given SEED),
64 writes in flight, then FLUSH. Used by bench/cow.sh and bench/cow-depth.sh to
fill layers. Needs Debian's python3 (libnbd bindings)."""
import random
import sys

import nbd

uri, size, seed, fraction = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng, data = random.Random(seed), random.Random(seed + 1000)
chunks = [c for c in range(size // 4096) if rng.random() < fraction]
h = nbd.NBD()
h.connect_uri(uri)
pending = {}


def reap():
    h.poll(-1)
    for c in list(pending):
        if h.aio_command_completed(c):
            del pending[c]


for c in chunks:
    while len(pending) >= 64:
        reap()
    buf = nbd.Buffer.from_bytearray(bytearray(data.randbytes(4096)))
    pending[h.aio_pwrite(buf, c * 4096)] = buf
while pending:
    reap()
h.flush()
