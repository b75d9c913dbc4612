#!/bin/bash
# rbd target with the whole cluster (monitor, manager and the OSD) frozen for longer than timeout=: reads and writes
# issued meanwhile fail with EIO within the timeout (plus a margin), the server stays up and its other device (a
# memory device) is served throughout; once the cluster runs again the rbd device serves again without a restart, and
# every block written and flushed before the outage reads back as it was.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
. "$(dirname "$0")/nbd-lib.sh"
requires jq

ceph_start
SIZE=$((16 << 20))
rbd_create down 16M
rbd_table "$WORK/t.conf" rbd/down $SIZE timeout=5
sed -i '1i [d]' "$WORK/t.conf"
printf '[m]\n0 2048 memory\n' >>"$WORK/t.conf"
start_strata --table "$WORK/t.conf"

# Known data, flushed, before the outage.
py d m <<'PYEOF'
import sys
from nbd_raw import handle
h = handle(sys.argv[1])
for i in range(64):
    h.pwrite(bytes([i + 1]) * 65536, i * 262144)
h.flush()
h.shutdown()
m = handle(sys.argv[2])
m.pwrite(b"m" * 4096, 0)
m.shutdown()
PYEOF

# Freeze the cluster (SIGSTOP: sockets stay open, nothing answers), ask, measure. (The write and the flush are two
# requests of timeout= each at most when librbd's cache takes the write: a write then a flush.)
pids="$CEPH_MON_PID $CEPH_MGR_PID $CEPH_OSD_PID"
thaw() { for p in $pids; do kill -CONT "$p" 2>/dev/null || true; done; }
trap 'st=$?; set +e; thaw; (exit $st); ceph_cleanup' EXIT
for p in $pids; do kill -STOP "$p"; done
py d m <<'PYEOF'
import errno, sys, time, threading, nbd
from nbd_raw import handle
h = handle(sys.argv[1])
res = {}
def op(name, f):
    t = time.monotonic()
    try:
        f()
        res[name] = ("ok", time.monotonic() - t)
    except nbd.Error as e:
        res[name] = (e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno, e.errno),
                     time.monotonic() - t)
# The memory device is served while the rbd requests wait.
m = handle(sys.argv[2])
ts = [threading.Thread(target=op, args=("read", lambda: h.pread(65536, 3 * 262144))),
      # librbd's cache may take the write (it is not durable yet): the FLUSH must fail then.
      threading.Thread(target=op, args=("write+flush", lambda: (h.pwrite(b"w" * 65536, 101 * 65536), h.flush())))]
# (one handle: libnbd serialises the two calls; each gets its own answer)
for t in ts: t.start()
mem = []
while any(t.is_alive() for t in ts):
    t0 = time.monotonic()
    assert m.pread(4096, 0) == b"m" * 4096, "the memory device read wrong"
    mem.append(time.monotonic() - t0)
    time.sleep(0.05)
    assert time.monotonic() - t0 < 60, "rbd requests still waiting after 60 s"
for t in ts: t.join()
print("during the outage:", res, f"memory device: {len(mem)} reads, max {max(mem) * 1000:.1f} ms")
for name, (r, secs) in res.items():
    assert r == "EIO", f"{name}: {r} (expected EIO)"
    assert secs < 2 * 5 + 15, f"{name} failed only after {secs:.1f} s (timeout=5)"
assert max(mem) < 0.5, f"the memory device waited {max(mem):.2f} s"
h.shutdown()
PYEOF
server_alive
grep -q "no answer from the cluster within 5 s" "$STRATA_LOG" || die "no clear timeout error in the log: $(tail -5 "$STRATA_LOG")"

# Thaw: the device serves again, data flushed before the outage intact.
thaw
trap ceph_cleanup EXIT
# The cluster recovers on its own clock after a freeze longer than the timeout (the OSD's sessions and ops time
# out and are resent): a request in the first seconds may still fail with EIO, as during the outage. Service has
# resumed once a write, a flush and every read succeed, within 60 s of the thaw, with no restart of strata; a read
# that returns other bytes than those flushed before the outage fails at once.
py d <<'PYEOF'
import sys, time, nbd
from nbd_raw import handle
t0 = time.monotonic()
deadline = t0 + 60
h = None
def again(what, f):
    global h
    while True:
        try:
            if h is None:
                h = handle(sys.argv[1])
            return f()
        except nbd.Error as e:
            assert time.monotonic() < deadline, f"the rbd device did not serve {what} again within 60 s: {e}"
            print(f"{what}: {e} at {time.monotonic() - t0:.1f} s after the thaw, again")
            time.sleep(1)
again("a write and a flush", lambda: (h.pwrite(b"z" * 4096, 201 * 65536), h.flush()))
print(f"serving again {time.monotonic() - t0:.1f} s after the thaw")
for i in range(64):
    got = again(f"block {i}", lambda: h.pread(65536, i * 262144))
    assert got == bytes([i + 1]) * 65536, f"block {i} changed across the outage"
assert again("the block written after", lambda: h.pread(4096, 201 * 65536)) == b"z" * 4096
print(f"every block read back {time.monotonic() - t0:.1f} s after the thaw")
h.shutdown()
PYEOF
st=$(ctl status d --json | jq '.[0].segments[0].info')
[ "$(jq .errors <<<"$st")" -ge 2 ] || die "strata counted no errors for the outage: $st"
stop_strata
echo PASS
