#!/usr/bin/python3
"""A verifying writer for one NBD disk (test-hosts-scenario.sh).

    hosts_writer.py --uri URI --golden FILE --seconds S --seed N --name NAME
                    [--move-to URI --after S] [--out FILE]

Keeps an in-memory model of every byte of the disk, starting from the golden
image's bytes (FILE, as large as the disk). The disk is cut into SLOTS regions;
each region has one request in flight at a time (so requests never overlap and
completions can be checked in any order): a write of random bytes or a read
(checked against the model on completion), random length 1..128 KiB at a
random byte offset, SLOTS requests in flight. A write enters the model when it
is acknowledged.

--move-to: the disk moves while we write. A request failing with ESHUTDOWN
(the old server fenced the disk) is not an error: once every request in flight
has completed, the writer connects to the new URI, sends again the writes that
failed, and goes on there for at least --after seconds. Any other error fails.

At the end: FLUSH, then every byte is read back and compared with the model.
Prints (and writes to --out) one JSON line; exits 1 on any mismatch or error.
"""
import argparse
import errno
import json
import random
import sys
import time

import nbd

SLOTS = 16
MAXLEN = 128 * 1024

ap = argparse.ArgumentParser()
ap.add_argument("--uri", required=True)
ap.add_argument("--golden", required=True)
ap.add_argument("--seconds", type=float, required=True)
ap.add_argument("--seed", type=int, required=True)
ap.add_argument("--name", required=True)
ap.add_argument("--move-to")
ap.add_argument("--after", type=float, default=5.0)
ap.add_argument("--out")
a = ap.parse_args()

with open(a.golden, "rb") as f:
    model = bytearray(f.read())
size = len(model)
rng = random.Random(a.seed)
slot_size = size // SLOTS

st = dict(name=a.name, writes=0, reads=0, bytes_written=0, bytes_read=0, read_mismatches=0,
          shutdowns=0, resent=0, moved=False, final_mismatch_bytes=-1, max_latency_ms=0.0,
          move_gap_ms=None)


def fail(msg):
    st["error"] = msg
    out(1)


def out(rc):
    line = json.dumps(st)
    print(line, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    sys.exit(rc)


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    if h.get_size() != size:
        fail("%s: the disk has %d bytes, the golden image %d" % (uri, h.get_size(), size))
    return h


h = connect(a.uri)
inflight = {}  # cookie -> (slot, kind, off, data or buffer, t0)
free = list(range(SLOTS))
failed = []  # writes that failed with ESHUTDOWN: sent again after the move
first_shutdown = None


def issue():
    s = free.pop()
    n = rng.randint(1, MAXLEN)
    off = s * slot_size + rng.randrange(0, slot_size - n)
    t = time.monotonic()
    if rng.random() < 0.7:
        data = rng.randbytes(n)
        inflight[h.aio_pwrite(data, off)] = (s, "w", off, data, t)
    else:
        buf = nbd.Buffer(n)
        inflight[h.aio_pread(buf, off)] = (s, "r", off, buf, t)


def reap():
    global first_shutdown
    for c in list(inflight):
        try:
            if not h.aio_command_completed(c):
                continue
            s, kind, off, data, t = inflight.pop(c)
            st["max_latency_ms"] = max(st["max_latency_ms"], (time.monotonic() - t) * 1000)
            if kind == "w":
                model[off:off + len(data)] = data
                st["writes"] += 1
                st["bytes_written"] += len(data)
            else:
                got = data.to_bytearray()
                st["reads"] += 1
                st["bytes_read"] += len(got)
                if got != model[off:off + len(got)]:
                    st["read_mismatches"] += 1
                    print("%s: read of %d bytes at %d differs from the model" % (a.name, len(got), off),
                          file=sys.stderr)
        except nbd.Error as e:
            s, kind, off, data, t = inflight.pop(c)
            if a.move_to and not st["moved"] and e.errnum == errno.ESHUTDOWN:
                st["shutdowns"] += 1
                if first_shutdown is None:
                    first_shutdown = time.monotonic()
                if kind == "w":
                    failed.append((off, data))
            else:
                fail("%s at %d failed: %s" % ("write" if kind == "w" else "read", off, e))
        free.append(s)


t_start = time.monotonic()
deadline = t_start + a.seconds
while True:
    now = time.monotonic()
    if first_shutdown is not None:
        # Fenced: issue nothing more, let what is in flight complete, then move.
        while inflight:
            h.poll(-1)
            reap()
        h = connect(a.move_to)
        for off, data in failed:
            h.pwrite(data, off)
            model[off:off + len(data)] = data
            st["resent"] += 1
        st["moved"] = True
        st["move_gap_ms"] = round((time.monotonic() - first_shutdown) * 1000, 1)
        first_shutdown = None
        deadline = max(deadline, time.monotonic() + a.after)
        continue
    if now >= deadline:
        if a.move_to and not st["moved"] and now < t_start + a.seconds + 120:
            pass  # the move has not happened yet: keep writing (bounded)
        else:
            break
    while free and first_shutdown is None:
        issue()
    h.poll(-1)
    reap()
while inflight:
    h.poll(-1)
    reap()
if first_shutdown is not None:
    fail("ESHUTDOWN after the deadline")
if a.move_to and not st["moved"]:
    fail("the disk never moved (no ESHUTDOWN within %d s)" % (a.seconds + 120))

h.flush()
bad = 0
STEP = 4 * 1024 * 1024
for off in range(0, size, STEP):
    got = h.pread(min(STEP, size - off), off)
    want = model[off:off + len(got)]
    if got != want:
        bad += sum(1 for x, y in zip(got, want) if x != y)
st["final_mismatch_bytes"] = bad
st["seconds"] = round(time.monotonic() - t_start, 1)
st["max_latency_ms"] = round(st["max_latency_ms"], 1)
h.shutdown()
out(1 if bad or st["read_mismatches"] else 0)
