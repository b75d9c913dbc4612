#!/bin/bash
# nfs target server outage: with timeout=3 and the server SIGKILLed, reads, writes, flushes (also 16 in flight) fail with EIO within timeout + 2 s and the NBD connection stays usable; once the server is back the same connection and new ones work without restarting strata, and data flushed before the outage is intact; with timeout=15 a write+flush sent while the server is down completes once it is back.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
source "$(dirname "$0")/nbd-lib.sh"

SZ=$((8 << 20))
TIMEOUT=3 LIMIT=5   # LIMIT = timeout + 2
nfs_serve_disk $SZ 0x5e $TIMEOUT
pid0=$STRATA_PID
U=$(uri d)
export U LIMIT

# ---- 1. before the outage: data written and flushed, one FUA write
qio "$U" "write -P 0x31 0 1M" "flush" "write -P 0x32 2M 64k"
py <<'PYEOF' || die "FUA write before the outage failed"
import nbd, os
h = nbd.NBD(); h.connect_uri(os.environ["U"])
h.pwrite(b"\x33" * 8192, 3 << 20, nbd.CMD_FLAG_FUA)
h.flush()
PYEOF
expect_bytes "$F" 0 1048576 0x31
expect_bytes "$F" $((3 << 20)) 8192 0x33

# ---- 2. the server dies; a client connected before (with an acknowledged,
# unflushed write) keeps its connection
rm -f "$WORK/ready" "$WORK/down" "$WORK/failed" "$WORK/back"
cat >"$WORK/during.py" <<'PYEOF'
import nbd, os, sys, time
w, limit = os.environ["WORK"], float(os.environ["LIMIT"])
def wait_for(name, secs):
    end = time.monotonic() + secs
    while not os.path.exists(f"{w}/{name}"):
        assert time.monotonic() < end, f"no {name} marker within {secs} s"
        time.sleep(0.02)
h = nbd.NBD(); h.connect_uri(os.environ["U"])
assert h.pread(4096, 0) == b"\x31" * 4096
# Acknowledged but not flushed: the FLUSHes below have work to do.
h.pwrite(b"\x34" * 16384, (4 << 20) + 65536)
open(f"{w}/ready", "w").close()
wait_for("down", 30)
def must_fail(what, fn):
    t = time.monotonic()
    try:
        fn()
    except nbd.Error as e:
        dt = time.monotonic() - t
        print(f"{what}: failed after {dt:.2f} s: {e.errno} ({e.string})")
        assert e.errno == "EIO", f"{what}: expected EIO, got {e.errno}: {e.string}"
        assert dt <= limit, f"{what}: took {dt:.2f} s to fail, more than {limit} s"
        return
    raise AssertionError(f"{what}: succeeded while the server is down")
must_fail("read", lambda: h.pread(4096, 0))
must_fail("write", lambda: h.pwrite(b"\x41" * 4096, 4 << 20))
must_fail("fua write", lambda: h.pwrite(b"\x42" * 4096, 5 << 20, nbd.CMD_FLAG_FUA))
must_fail("flush", lambda: h.flush())
# 16 requests in flight at once: all fail with EIO, none later than the limit.
t = time.monotonic()
bufs, cookies = [], []
for i in range(16):
    if i % 2:
        b = nbd.Buffer(65536); cookies.append(h.aio_pread(b, i << 16))
    else:
        b = nbd.Buffer.from_bytearray(bytearray(b"\x43" * 65536)); cookies.append(h.aio_pwrite(b, (6 << 20) + (i << 16)))
    bufs.append(b)
cookies.append(h.aio_flush())
done, worst = {}, 0.0
while len(done) < len(cookies):
    assert time.monotonic() - t < limit + 5, f"{len(cookies) - len(done)} requests still pending after {limit + 5} s"
    h.poll(100)
    for c in cookies:
        if c in done:
            continue
        try:
            if h.aio_command_completed(c):
                done[c] = "ok"
        except nbd.Error as e:
            done[c] = e.errno
        if c in done:
            worst = max(worst, time.monotonic() - t)
bad = {c: r for c, r in done.items() if r != "EIO"}
assert not bad, f"in-flight requests during the outage: expected EIO for all, got {sorted(done.values())}"
assert worst <= limit, f"the last of 17 in-flight requests failed after {worst:.2f} s, more than {limit} s"
print(f"17 requests in flight: all EIO, the last after {worst:.2f} s")
open(f"{w}/failed", "w").close()
# ---- 3. the server is back: the same connection works again
wait_for("back", 60)
t = time.monotonic()
assert h.pread(1048576, 0) == b"\x31" * 1048576, "data flushed before the outage differs"
assert h.pread(8192, 3 << 20) == b"\x33" * 8192, "FUA data written before the outage differs"
assert h.pread(16384, (4 << 20) + 65536) == b"\x34" * 16384, "acknowledged data written before the outage differs"
h.pwrite(b"\x51" * 65536, 7 << 20)
h.flush()
assert h.pread(65536, 7 << 20) == b"\x51" * 65536
print(f"after the restart: first requests took {time.monotonic() - t:.2f} s")
h.shutdown()
PYEOF
py <"$WORK/during.py" >"$WORK/during.log" 2>&1 &
CPID=$!
deadline=$(($(now_ms) + 15000))
until [ -e "$WORK/ready" ]; do
  running "$CPID" || { cat "$WORK/during.log" >&2; die "the client failed before the outage (above)"; }
  [ "$(now_ms)" -lt $deadline ] || die "the client did not connect within 15 s"
  sleep 0.05
done
nfs_kill_ganesha
touch "$WORK/down"
deadline=$(($(now_ms) + 60000))
until [ -e "$WORK/failed" ]; do
  running "$CPID" || { cat "$WORK/during.log" >&2; die "the client failed during the outage (above)"; }
  [ "$(now_ms)" -lt $deadline ] || { cat "$WORK/during.log" >&2; die "requests during the outage hang (no result within 60 s)"; }
  sleep 0.05
done
[ "$STRATA_PID" = "$pid0" ] && running "$STRATA_PID" || die "strata exited during the outage"

# A new connection during the outage also gets errors, not a hang.
timeout 30 $PYTHON - <<'PYEOF' || die "a new client during the outage (above)"
import nbd, os, time
h = nbd.NBD(); h.connect_uri(os.environ["U"])
t = time.monotonic()
try:
    h.pread(4096, 0)
    raise AssertionError("a read succeeded while the server is down")
except nbd.Error as e:
    dt = time.monotonic() - t
    assert e.errno == "EIO", f"new client's read: expected EIO, got {e.errno}: {e.string}"
    assert dt <= float(os.environ["LIMIT"]), f"new client's read took {dt:.2f} s to fail"
    print(f"new client's read: EIO after {dt:.2f} s")
PYEOF

nfs_start_ganesha "$EXPORT"
touch "$WORK/back"
rc=0
deadline=$(($(now_ms) + 60000))
while running "$CPID"; do
  [ "$(now_ms)" -lt $deadline ] || die "the client hangs after the server came back"
  sleep 0.05
done
wait "$CPID" || rc=$?
cat "$WORK/during.log"
[ $rc -eq 0 ] || die "the client failed (above)"
[ "$STRATA_PID" = "$pid0" ] && running "$STRATA_PID" || die "strata was restarted or exited"

# New connections work; the data flushed before the outage is intact, in
# the file too.
qio "$U" "read -P 0x31 0 1M" "read -P 0x32 2M 64k" "read -P 0x33 3M 8k" "read -P 0x51 7M 64k" \
  "write -P 0x61 1M 128k" "flush" "read -P 0x61 1M 128k"
expect_bytes "$F" 0 1048576 0x31
expect_bytes "$F" $((1 << 20)) 131072 0x61
expect_bytes "$F" $((2 << 20)) 65536 0x32
expect_bytes "$F" $((3 << 20)) 8192 0x33
expect_bytes "$F" $((7 << 20)) 65536 0x51
expect_bytes "$F" $(((4 << 20) + 65536)) 16384 0x34
stop_strata

# ---- 4. timeout=15: a write + flush sent while the server is down completes
# once it is back (within the timeout), on the same strata.
echo "0 $((SZ / 512)) nfs $(nfs_url "$F") 0 timeout=15" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d
qio "$U" "read -P 0x31 0 4096"
nfs_kill_ganesha
t0=$(now_ms)
timeout 60 qemu-io -f raw "$U" -c "write -P 0x71 5M 256k" -c "flush" -c "read -P 0x71 5M 256k" >"$WORK/late.log" 2>&1 &
QPID=$!
sleep 1
nfs_start_ganesha "$EXPORT"
rc=0
wait "$QPID" || rc=$?
t=$(($(now_ms) - t0))
cat "$WORK/late.log"
[ $rc -eq 0 ] && ! grep -qiE 'fail|error' "$WORK/late.log" || die "a write sent during a 1 s outage failed (timeout=15)"
[ $t -lt 15000 ] || die "the write sent during a 1 s outage took $t ms"
expect_bytes "$F" $((5 << 20)) 262144 0x71
echo "write + flush during a 1 s outage: done after $t ms"
finish
