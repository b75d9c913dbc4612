#!/bin/bash
# nfs target, a server that stops reading (SIGSTOP: the TCP connection stays up, the socket fills): with 64 KiB TCP buffers (in the test's network namespace) 48 x 1 MiB writes all succeed on one connection though strata's sendmsg goes out in pieces; then a stop: 32 x 1 MiB writes and a read in flight on one NBD connection all fail with EIO within timeout + 2 s while strata's sendmsg to the server is blocked mid-stream; the connection is dropped (reconnects, calls_timed_out counted) by an abort that leaves none of the abandoned calls' bytes queued to the server (ss: no Send-Q); once the server runs again (SIGCONT) the same NBD connection and new ones read and write, data flushed before is intact, every 4 KiB block of the failed writes' range holds either the old or the new bytes, and the server log shows no crash.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
source "$(dirname "$0")/nbd-lib.sh"

# Small TCP buffers (this network namespace only): a 1 MiB WRITE does not
# fit in the socket, so strata's sendmsg is still going when the server
# answers the first calls it carries.
sysctl -q -w net.ipv4.tcp_wmem="4096 16384 65536" net.ipv4.tcp_rmem="4096 16384 65536" ||
  die "cannot set the namespace's TCP buffer sizes"
SZ=$((64 << 20))
TIMEOUT=3 LIMIT=5   # LIMIT = timeout + 2
nfs_serve_disk $SZ 0x00 $TIMEOUT
U=$(uri d)
export U LIMIT GANESHA_PID WORK

# Before: 32 MiB of 0x31, flushed.
qio "$U" "write -P 0x31 0 32M" "flush"
expect_bytes "$F" 0 $((32 << 20)) 0x31

# With the small buffers, 48 writes of 1 MiB in flight: strata's sendmsg
# goes out in pieces (partial_sends), records resume mid-way; every write
# succeeds on the same connection (no reconnect) and lands.
py <<'PYEOF' || die "small-buffer writes (above)"
import nbd, os, time
h = nbd.NBD(); h.connect_uri(os.environ["U"])
buf = nbd.Buffer.from_bytearray(bytearray(b"\x24" * (1 << 20)))
t0 = time.monotonic()
pending = {h.aio_pwrite(buf, (32 + i % 16) << 20) for i in range(48)}
while pending:
    for c in list(pending):
        if h.aio_command_completed(c):  # raises on a failed write
            pending.discard(c)
    assert time.monotonic() - t0 < 30, f"{len(pending)} writes hang"
    if pending:
        h.poll(1000)
h.flush()
print(f"48 writes of 1 MiB through 64 KiB socket buffers in {time.monotonic() - t0:.2f} s")
PYEOF
info=$(ctl status d --json | jq -c '.[0].segments[0].info')
echo "counters: $(jq -c '{reconnects, partial_sends, write_calls}' <<<"$info")"
[ "$(jq .reconnects <<<"$info")" -eq 0 ] || die "writes through small buffers cost a reconnect: $info"
[ "$(jq .partial_sends <<<"$info")" -ge 10 ] || die "sendmsg was not cut short by the small buffers (the case this phase is for): $info"
expect_bytes "$F" $((32 << 20)) $((16 << 20)) 0x24

py <<'PYEOF' || die "stalled-server client (above)"
import nbd, os, signal, subprocess, time
h = nbd.NBD(); h.connect_uri(os.environ["U"])
assert h.pread(4096, 0) == b"\x31" * 4096
gpid = int(os.environ["GANESHA_PID"])
os.kill(gpid, signal.SIGSTOP)
try:
    buf = nbd.Buffer.from_bytearray(bytearray(b"\x42" * (1 << 20)))
    t0 = time.monotonic()
    cookies = {h.aio_pwrite(buf, i << 20): f"write {i} MiB" for i in range(32)}
    rbuf = nbd.Buffer(65536)
    cookies[h.aio_pread(rbuf, 48 << 20)] = "read"
    errors, done = {}, {}
    while len(done) < len(cookies):
        assert time.monotonic() - t0 < 60, f"{len(cookies) - len(done)} requests hang"
        h.poll(1000)
        for c, what in cookies.items():
            if c in done:
                continue
            try:
                if h.aio_command_completed(c):
                    done[c] = time.monotonic() - t0
            except nbd.Error as e:
                done[c] = time.monotonic() - t0
                errors[what] = e.errno
    slowest = max(done.values())
    print(f"server stopped: {len(errors)} of {len(cookies)} requests failed, slowest after {slowest:.2f} s")
    assert len(errors) == len(cookies), f"requests succeeded with the server stopped: {len(cookies) - len(errors)}"
    assert set(errors.values()) == {"EIO"}, f"expected EIO only: {errors}"
    assert slowest <= float(os.environ["LIMIT"]), f"a request took {slowest:.2f} s to fail"
    # Another request on the same connection while the server is still stopped.
    t = time.monotonic()
    try:
        h.pwrite(b"\x43" * 4096, 40 << 20)
        raise AssertionError("a write succeeded with the server stopped")
    except nbd.Error as e:
        assert e.errno == "EIO", e
    print(f"next write on the same connection: EIO after {time.monotonic() - t:.2f} s")
    # The dropped connection was aborted, not closed politely: nothing of the
    # calls given up on is left queued in strata's socket to reach the
    # server when it reads again (a FIN would leave it all in FIN-WAIT-1).
    ss = subprocess.run(["ss", "-tanH", "( dport = :2049 )"], capture_output=True, text=True, check=True).stdout
    queued = [l for l in ss.splitlines() if int(l.split()[2]) > 0]
    print("strata's sockets to the server:\n" + ss.rstrip())
    assert not queued, f"data of abandoned calls still queued to the stopped server: {queued}"
finally:
    os.kill(gpid, signal.SIGCONT)
# The server runs again: the same connection works.
t = time.monotonic()
h.pwrite(b"\x53" * (1 << 20), 40 << 20)
h.flush()
assert h.pread(1 << 20, 40 << 20) == b"\x53" * (1 << 20)
print(f"after SIGCONT: write + flush + read on the same connection in {time.monotonic() - t:.2f} s")
h.shutdown()
PYEOF

info=$(ctl status d --json | jq -c '.[0].segments[0].info')
echo "counters: $(jq -c '{reconnects, calls_timed_out, calls_resent, connect_failures}' <<<"$info")"
[ "$(jq .reconnects <<<"$info")" -ge 1 ] || die "the stalled connection was not dropped: $info"
[ "$(jq .calls_timed_out <<<"$info")" -ge 33 ] || die "fewer timed-out calls than failed requests: $info"

# New connections: data flushed before the stall and after it.
qio "$U" "read -P 0x53 40M 1M" "write -P 0x61 48M 64k" "flush" "read -P 0x61 48M 64k"
expect_bytes "$F" $((40 << 20)) $((1 << 20)) 0x53
expect_bytes "$F" $((48 << 20)) 65536 0x61
# The failed writes may or may not have reached the file (the server may have
# read some before it stopped), but each 4 KiB block holds old or new bytes.
$PYTHON - "$F" <<'PYEOF' || die "a block of the failed writes' range holds bytes never written (above)"
import sys
old, new = b"\x31" * 4096, b"\x42" * 4096
counts = {"old": 0, "new": 0}
with open(sys.argv[1], "rb") as f:
    for i in range(32 * 256):
        b = f.read(4096)
        if b == old: counts["old"] += 1
        elif b == new: counts["new"] += 1
        else: sys.exit(f"block {i}: neither old nor new bytes")
print(f"failed writes' range: {counts['old']} blocks old, {counts['new']} new")
PYEOF
server_alive
LOG_ALLOW='connection lost|timed out|no answer' log_clean
stop_strata
echo "PASS: a stopped server fails requests in time, strata drops the connection and carries on"
