#!/bin/bash
# Checks --handshake-timeout: clients that connect and stall (send nothing, stop mid-option, or trickle options) are closed after about 1 s while another client is served meanwhile, and a client in transmission that idles longer is not closed.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

requires jq
truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img" --handshake-timeout 1
[ "$(ctl server --json | jq .handshake_timeouts)" = 0 ] || die "handshake timeouts before any client: $(ctl server --json)"

py <<'PYEOF'
import os, threading, time, nbd
from nbd_raw import *

t0 = time.monotonic()
silent = Raw()                      # reads nothing, sends nothing
greeted = Raw(); greeted.greet()    # sends its flags, then nothing
partial = Raw(); partial.greet(); partial.send(struct.pack(">QI", IHAVEOPT, OPT_GO))  # half an option header
trickle = Raw(); trickle.greet()    # keeps sending options, never GO
# In transmission before the timeout, then idle past it.
idle = Raw().go()

# Another client does I/O the whole time.
stop = threading.Event()
errors, ios = [], [0]
def worker():
    try:
        h = handle()
        while not stop.is_set():
            d = os.urandom(4096)
            h.pwrite(d, 65536)
            assert h.pread(4096, 65536) == d
            ios[0] += 1
        h.shutdown()
    except Exception as e:
        errors.append(e)
th = threading.Thread(target=worker)
th.start()

for _ in range(6):
    typ, _, _ = trickle.option(OPT_STRUCTURED_REPLY)
    assert typ == REP_ACK
    time.sleep(0.1)

closed = {}
for name, c in [("silent", silent), ("greeted", greeted), ("partial", partial)]:
    ok = c.wait_closed(4.0 - (time.monotonic() - t0))
    closed[name] = time.monotonic() - t0
    assert ok, f"{name} client not closed {closed[name]:.1f} s after connecting"
    assert closed[name] >= 0.8, f"{name} client closed after only {closed[name]:.2f} s"
assert trickle.wait_closed(4.0 - (time.monotonic() - t0)), "client trickling options was never closed"
print("closed after", {k: round(v, 2) for k, v in closed.items()})

stop.set()
th.join()
assert not errors, errors
assert ios[0] > 0, "the concurrent client did no I/O"

# The client that reached transmission idles past the timeout and is still served.
time.sleep(max(0.0, 1.6 - (time.monotonic() - t0)))
rd = idle.cmd(CMD_READ, 65536, 4096)
assert rd["error"] == 0 and len(rd["data"]) == 4096, rd
idle.disconnect()
check_other_client()
print("handshake timeout ok")
PYEOF

# The four stalled clients (silent, greeted, partial, trickling) counted as
# handshake timeouts, none as evicted (there were slots enough).
j=$(ctl server --json)
[ "$(jq .handshake_timeouts <<<"$j")" = 4 ] || die "handshake_timeouts is not 4: $j"
[ "$(jq .handshakes_evicted <<<"$j")" = 0 ] || die "handshakes evicted without a full set of slots: $j"
finish
