#!/bin/bash
# Checks that reads, writes and errors work with both simple replies (structured replies declined) and structured replies: data matches, errors carry the right errno, a failed read in simple mode sends no payload, DF and chunked reads work in structured mode, and many requests in flight are matched by cookie.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 16M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, nbd
from nbd_raw import *
M = 1 << 20

for structured in (False, True):
    h = handle(structured=structured, meta=structured)
    assert h.get_structured_replies_negotiated() == structured
    assert h.can_df() == structured, "DF advertised without structured replies" if not structured else "no DF"
    h.set_strict_mode(0)
    base = (0 if structured else 8) * M
    data = os.urandom(2 * M)
    h.pwrite(data, base)
    assert h.pread(2 * M, base) == data
    assert h.pread(4096, base + 4096) == data[4096:8192]
    h.zero(4096, base, nbd.CMD_FLAG_NO_HOLE)
    h.trim(4096, base + 4096)
    h.flush()
    h.cache(M, base)
    assert h.pread(8192, base) == bytes(8192)
    # Errors.
    assert nbd_errno(h.pread, 4096, 16 * M) == EINVAL
    assert nbd_errno(h.pwrite, b"x" * 4096, 16 * M) == ENOSPC
    assert h.pread(M, base + M) == data[M:], "read after an error failed"
    # Many reads in flight, completed by cookie.
    h.pwrite(data, base)
    bufs = {}
    for i in range(64):
        off = (i * 12288) % (2 * M - 4096)
        b = nbd.Buffer(4096)
        bufs[h.aio_pread(b, base + off)] = (b, off)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c, (b, off) in bufs.items():
        assert h.aio_command_completed(c)
        assert bytes(b.to_bytearray()) == data[off:off + 4096], f"in-flight read at {off} got other data"
    if structured:
        chunks = []
        def cb(buf, off, status, err):
            chunks.append((off, status, len(buf)))
            return 0
        got = h.pread_structured(M, base + M, cb, nbd.CMD_FLAG_DF)
        assert got == data[M:], "DF read returned other data"
        assert chunks and all(s in (nbd.READ_DATA, nbd.READ_HOLE) for o, s, n in chunks), chunks
        assert sum(n for o, s, n in chunks) == M, chunks
    h.shutdown()

# Raw: the wire format of each mode.
for structured in (False, True):
    r = Raw().go(structured=structured)
    rep = r.cmd(CMD_READ, 16 * M - 512, 4096)  # past the end
    assert rep["structured"] == structured and rep["error"] == EINVAL, rep
    if structured:
        assert rep["chunks"] == [REPLY_ERROR], rep["chunks"]
    # In simple mode the server must not have sent data after the error: the
    # next reply starts with a reply magic (Raw.reply checks it).
    rep = r.cmd(CMD_READ, 0, 65536)
    assert rep["error"] == 0 and len(rep["data"]) == 65536
    if structured:
        assert rep["chunks"][-1] in (REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_NONE), rep["chunks"]
    rep = r.cmd(CMD_WRITE, 0, 512, payload=b"s" * 512)
    assert rep["error"] == 0 and (structured or not rep["structured"]), rep
    r.disconnect()
print("reply modes ok")
PYEOF

finish
