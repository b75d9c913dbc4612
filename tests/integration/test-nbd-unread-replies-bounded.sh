#!/bin/bash
# Checks that a client which pipelines requests but does not read the replies cannot make the server buffer without bound: with 24 x 32 MiB reads (768 MiB) outstanding the server's memory stays near its 128 MiB in-flight limit, a flood of tiny reads is throttled (the server stops reading), and once the client reads, every reply arrives intact.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

head -c 1M /dev/urandom >"$WORK/disk.img"
truncate -s 64M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"
export STRATA_PID

py <<'PYEOF'
import os, socket, time
from nbd_raw import *
pid = os.environ["STRATA_PID"]
head = open(os.environ["WORK"] + "/disk.img", "rb").read(1 << 20)

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")

base = rss_mib()
# 1. Big reads, replies left unread.
r = Raw(timeout=30).go()
N = 24
for i in range(N):
    r.request(CMD_READ, 0, 32 << 20)
peak = 0
for _ in range(10):
    time.sleep(0.1)
    peak = max(peak, rss_mib())
print(f"server RSS: {base} MiB idle, {peak} MiB with {N} x 32 MiB of unread replies")
assert peak - base < 400, f"server buffered {peak - base} MiB for a client that does not read"
other = handle()
assert other.pread(4096, 0) == head[:4096], "other client starved"
for i in range(N):
    rep = r.reply()
    assert rep["error"] == 0 and len(rep["data"]) == 32 << 20, rep["error"]
    assert rep["data"][:1 << 20] == head, "reply data corrupted"
r.disconnect()

# 2. A flood of tiny reads: the server must stop reading (our send blocks)
#    instead of queueing replies without end.
r = Raw().go()
r.s.setblocking(False)
hdr = struct.Struct(">IHHQQI")
sent = 0
buf = b"".join(hdr.pack(REQUEST_MAGIC, 0, CMD_READ, i, 0, 1) for i in range(1000))
pending = b""
end = time.monotonic() + 1.5
while time.monotonic() < end:
    if not pending:
        pending = buf
    try:
        n = r.s.send(pending)
    except BlockingIOError:
        time.sleep(0.01)
        continue
    pending = pending[n:]
    sent += n
nreq = sent // 28
print(f"tiny reads accepted before the server pushed back: {nreq}")
assert nreq < 200000, f"server read {nreq} requests whose replies were never read"
assert rss_mib() - base < 400
# Finish the partial request, then read every reply.
r.s.setblocking(True)
r.s.settimeout(30)
if sent % 28:
    r.send(pending[:28 - sent % 28])
    nreq += 1
for i in range(nreq):
    r.pending[i % 1000] = (CMD_READ, 1)
    rep = r.reply()
    assert rep["error"] == 0 and rep["data"] == head[:1], rep
r.disconnect()
other.shutdown()
print("unread replies bounded ok")
PYEOF

finish
