#!/bin/bash
# Checks that clients vanishing mid-request (write header without payload, half a payload, half a header, requests in flight, mid-option in the handshake, RST instead of FIN) leave the server running, leak no connection, and do not disturb a client connected in parallel.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 64M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, socket, struct, time
from nbd_raw import *

other = handle()
data = os.urandom(65536)
other.pwrite(data, 0)

def rst(r):
    # SO_LINGER 0: close() sends RST instead of FIN.
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()

def hdr(typ, off, length, flags=0, cookie=1):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, typ, cookie, off, length)

for structured in (True, False):
    for closer in (Raw.close, rst):
        # Header of a 1 MiB write, no payload.
        r = Raw().go(structured=structured); r.send(hdr(CMD_WRITE, 1 << 20, 1 << 20)); closer(r)
        # Header plus a third of the payload.
        r = Raw().go(structured=structured); r.send(hdr(CMD_WRITE, 1 << 20, 3 << 20) + b"p" * (1 << 20)); closer(r)
        # Half a request header.
        r = Raw().go(structured=structured); r.send(hdr(CMD_READ, 0, 4096)[:13]); closer(r)
        # Oversized (refused) write, payload cut short while the server discards it.
        r = Raw().go(structured=structured); r.send(hdr(CMD_WRITE, 0, 40 << 20) + b"q" * (2 << 20)); closer(r)
        # Many requests in flight, gone before any reply.
        r = Raw().go(structured=structured)
        r.send(b"".join(hdr(CMD_READ, i << 20, 1 << 20, cookie=i) for i in range(32)) +
               b"".join(hdr(CMD_WRITE, (32 + i) << 20, 4096, cookie=100 + i) + b"w" * 4096 for i in range(16)) +
               hdr(CMD_FLUSH, 0, 0, cookie=999))
        closer(r)
        assert other.pread(65536, 0) == data, "parallel client broken"

# Mid-handshake: after the greeting, mid-option-header, mid-option-payload.
r = Raw(); r.close()
r = Raw(); r.recvn(18); r.close()
r = Raw(); r.greet(); r.send(struct.pack(">Q", IHAVEOPT)); r.close()
r = Raw(); r.greet(); r.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 1000) + b"x" * 100); rst(r)
r = Raw(); r.greet(); r.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 200000) + b"x" * 70000); r.close()

d2 = os.urandom(4096)
other.pwrite(d2, 8 << 20)
assert other.pread(4096, 8 << 20) == d2
assert other.pread(65536, 0) == data
other.shutdown()
check_other_client()
print("abrupt disconnects ok")
PYEOF

server_alive
wait_connections 0
finish
