# A write smaller than a chunk, made while `strata merge` folds the top into
# its parent, to a chunk the top holds newer data (or zeros) for than the
# parent: the rest of the chunk must keep the top's bytes, not the parent's
# older ones. Driven by test-cow-merge-partial-*.sh (see there).
#
#   cow_partial_merge.py write STRATA CTL SOCK LOG VARIANT VIA [FUSEFILE]   (LOG: the server's log)
#   cow_partial_merge.py check SOCK VARIANT
#
# VARIANT: what step 2 leaves at X in the top and what step 3 writes:
#   data        top: 'C' x 4096,  during the merge: 120 B of 'B' at X+3976
#   trim        top: TRIM 4096,   during the merge: 120 B of 'B'
#   zero        top: ZERO 4096,   during the merge: 120 B of 'B'
#   zero-tail   top: 'C' x 4096,  during the merge: WRITE_ZEROES of 120 B
# VIA: nbd, or fuse (the step-3 write is an O_DIRECT pwrite on FUSEFILE).
import os
import subprocess
import sys
import time

import nbd

SIZE = 256 << 20
X = SIZE - (64 << 10)  # near the end: the merge copies low chunks first
FILL = 192 << 20       # top data before X, so the merge takes a while
TAIL_OFF, TAIL_LEN = 3976, 120


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def expected(variant):
    head = b"C" * TAIL_OFF if variant in ("data", "zero-tail") else b"\0" * TAIL_OFF
    tail = b"\0" * TAIL_LEN if variant == "zero-tail" else b"B" * TAIL_LEN
    return head + tail


def fill_block(i):
    return (b"%08d" % i) * (131072)  # 1 MiB, distinct per MiB


def connect(sock):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///d?socket=" + sock)
    return h


def write_phase(strata, ctl, sock, log, variant, via, fusefile):
    h = connect(sock)
    # 1. 'A' at X reaches a read-only layer.
    h.pwrite(b"A" * 4096, X)
    h.flush()
    subprocess.run([strata, "snapshot", "d", "--control", ctl], check=True, capture_output=True)
    # 2. Data for the merge to copy, then X made newer in the top.
    for i in range(FILL >> 20):
        h.pwrite(fill_block(i), i << 20)
    if variant in ("data", "zero-tail"):
        h.pwrite(b"C" * 4096, X)
    elif variant == "trim":
        h.trim(4096, X)
    elif variant == "zero":
        h.zero(4096, X)
    else:
        fail("unknown variant " + variant)
    h.flush()
    # 3. The merge; the partial write as soon as the server logs that writes
    # go to the parent (step 1 of the merge; the copy follows).
    def switches():
        with open(log, errors="replace") as f:
            return f.read().count("merge: writes now go to")

    before = switches()
    m = subprocess.Popen([strata, "merge", "d", "--json", "--control", ctl], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while switches() == before:
        if m.poll() is not None or time.time() > deadline:
            fail("the merge never switched writes to the parent: %s" % (m.communicate(),))
        time.sleep(0.001)
    if via == "fuse":
        fd = os.open(fusefile, os.O_RDWR | os.O_DIRECT)
        if variant == "zero-tail":
            fail("zero-tail is an NBD variant")
        n = os.pwrite(fd, b"B" * TAIL_LEN, X + TAIL_OFF)
        if n != TAIL_LEN:
            fail("short pwrite through FUSE: %d" % n)
        os.close(fd)
    elif variant == "zero-tail":
        h.zero(TAIL_LEN, X + TAIL_OFF)
    else:
        h.pwrite(b"B" * TAIL_LEN, X + TAIL_OFF)
    # The write must land before the copy reaches X, or this proves nothing:
    # X is the last chunk the top holds, the copy goes in order over 48k
    # chunks, and the merge must still be running now.
    if m.poll() is not None:
        fail("the merge had ended when the write returned: nothing tested")
    out, err = m.communicate(timeout=120)
    if m.returncode != 0:
        fail("merge failed: %s %s" % (out, err))
    got = h.pread(4096, X)
    if got != expected(variant):
        fail("after the merge X reads %r..%r, expected %r..%r" % (got[:8], got[-130:], expected(variant)[:8],
                                                                expected(variant)[-130:]))
    for i in (0, 77, (FILL >> 20) - 1):
        if h.pread(1 << 20, i << 20) != fill_block(i):
            fail("MiB %d lost across the merge" % i)
    h.shutdown()


def check_phase(sock, variant):
    h = connect(sock)
    got = h.pread(4096, X)
    if got != expected(variant):
        fail("after a restart X reads %r..%r, expected %r..%r" % (got[:8], got[-130:], expected(variant)[:8],
                                                                expected(variant)[-130:]))
    h.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write_phase(*sys.argv[2:8], sys.argv[8] if len(sys.argv) > 8 else None)
    else:
        check_phase(sys.argv[2], sys.argv[3])
