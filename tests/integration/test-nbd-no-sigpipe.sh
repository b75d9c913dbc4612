#!/bin/bash
# Checks that the server survives clients that close before reading their replies (large reads in flight, option replies in the handshake): no SIGPIPE death, no leaked connection, other clients still served.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 64M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import os, socket, struct, time
from nbd_raw import *

other = handle()
data = os.urandom(4096)
other.pwrite(data, 0)

for structured in (True, False):
    for rounds in range(3):
        r = Raw().go(structured=structured)
        # 8 x 32 MiB of replies: far more than the socket buffers hold.
        for i in range(8):
            r.request(CMD_READ, (i % 2) << 25, 32 << 20)
        # Read a little of the first reply so the server is surely sending.
        r.recvn(4096)
        r.close()
    assert other.pread(4096, 0) == data

# Shut down only our reading side's peer: half-close, then vanish.
r = Raw().go()
for i in range(4):
    r.request(CMD_READ, 0, 32 << 20)
r.s.shutdown(socket.SHUT_WR)
time.sleep(0.1)
r.close()

# Handshake replies to a client that has gone.
for _ in range(10):
    r = Raw()
    r.greet()
    for _ in range(50):
        r.send_option(OPT_LIST)
    r.close()
time.sleep(0.2)
assert other.pread(4096, 0) == data
other.shutdown()
check_other_client()
print("no sigpipe ok")
PYEOF

server_alive
wait_connections 0
finish
