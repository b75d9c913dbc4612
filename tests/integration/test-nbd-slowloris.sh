#!/bin/bash
# Checks that handshakes cannot starve clients (slowloris): an attacker holds 1,000 half-open connections (connects, sends nothing) and reconnects each one the server closes; meanwhile a good client connects, completes the handshake and a verified 4 KiB read within 1 s, 50 tries out of 50. Handshake slots (--max-handshakes) are apart from connection slots, and the oldest silent handshake is evicted for a new one.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdsh jq curl
PORT=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# metric NAME: its value on /metrics.
metric() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 == n { print $2 + 0 }'; }

cat >"$WORK/table" <<CONF
0 $((1 << 21)) pattern
CONF
start_strata --table "$WORK/table" --max-handshakes 128 --metrics "127.0.0.1:$PORT"
export STRATA_PID

# Before the attack: no handshake evicted, in `strata server` (JSON and text) and the metrics.
[ "$(ctl server --json | jq .handshakes_evicted)" = 0 ] || die "handshakes evicted before any client: $(ctl server --json)"
ctl server | grep -q '"handshakes_evicted": 0' || die "strata server does not show handshakes_evicted: $(ctl server)"
[ "$(metric strata_nbd_handshakes_evicted_total)" = 0 ] || die "metric before the attack: $(metric strata_nbd_handshakes_evicted_total)"

# The attacker, in its own process (its own file limit).
py >"$WORK/attacker.log" 2>&1 <<'PYEOF' &
import os, resource, select, socket, errno, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(4096, soft), max(4096, hard)))
path = os.environ["SOCK"]
stop = os.environ["WORK"] + "/stop"
socks = {}
opened = closed = 0
last = 0
poller = select.poll()
while not os.path.exists(stop):
    while len(socks) < 1000:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except (BlockingIOError, InterruptedError):
            s.close()
            break
        socks[s.fileno()] = s
        poller.register(s, select.POLLIN)
        opened += 1
    for fd, ev in poller.poll(10):
        s = socks[fd]
        try:
            data = s.recv(4096)   # the greeting; then nothing is ever sent
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)
            del socks[fd]
            s.close()
            closed += 1
    if time.monotonic() - last > 0.1:
        last = time.monotonic()
        with open(os.environ["WORK"] + "/attacker.tmp", "w") as f:
            f.write(f"{len(socks)} {opened} {closed}\n")
        os.rename(os.environ["WORK"] + "/attacker.tmp", os.environ["WORK"] + "/attacker.count")
print(f"attacker: {opened} connections opened, {closed} closed by the server, {len(socks)} open at the end")
PYEOF
ATTACKER=$!

# Wait until the attacker has opened 1,000 sockets (it keeps up to 1,000 open;
# the server holds 128 handshakes and evicts the rest as new ones come).
for _ in $(seq 1 100); do
  [ -f "$WORK/attacker.count" ] && [ "$(cut -d' ' -f2 "$WORK/attacker.count")" -ge 1000 ] && break
  sleep 0.1
done
[ "$(cut -d' ' -f2 "$WORK/attacker.count")" -ge 1000 ] || die "the attacker did not open 1,000 connections: $(cat "$WORK/attacker.count")"

py <<'PYEOF'
import struct, time, nbd
from nbd_raw import handle
# Under the sanitizers (scripts/asan.sh) the 1 s is scaled by STRATA_TEST_TIME_SCALE; the plain build holds 1 s.
limit = float(__import__("os").environ.get("STRATA_TEST_TIME_SCALE", "1"))
times, fails = [], []
for i in range(50):
    t = time.monotonic()
    try:
        h = nbd.NBD()
        h.connect_unix(__import__("os").environ["SOCK"])
        off = 4096 * (i * 7919 % 1000)
        d = h.pread(4096, off)
        assert d[:8] == struct.pack(">Q", off) and d[-8:] == struct.pack(">Q", off + 4088), "wrong data"
        h.shutdown()
        el = time.monotonic() - t
        times.append(el)
        if el >= limit:
            fails.append(f"try {i}: {el:.2f} s")
    except Exception as e:
        fails.append(f"try {i}: {e} after {time.monotonic() - t:.2f} s")
    time.sleep(0.05)
times.sort()
print(f"good client under 1,000 half-open sockets: {len(times)} of 50 served; handshake + read "
      f"median {times[len(times) // 2] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms" if times else "none served")
assert not fails, f"{len(fails)} of 50 tries failed or took 1 s or more: {fails[:5]}"
PYEOF
echo "attacker state (open opened closed): $(cat "$WORK/attacker.count")"
touch "$WORK/stop"
wait $ATTACKER
cat "$WORK/attacker.log"
read -r _ opened closed <"$WORK/attacker.count"
[ "$closed" -gt 100 ] || die "the server closed only $closed of the attacker's connections"
# After it: the evictions counted, the same number everywhere.
evicted=$(ctl server --json | jq .handshakes_evicted)
echo "handshakes evicted: $evicted"
[ "$evicted" -gt 0 ] || die "no eviction counted after the attack: $(ctl server --json)"
ctl server | grep -qE '"handshakes_evicted": [1-9][0-9]*' || die "strata server text: $(ctl server)"
m=$(metric strata_nbd_handshakes_evicted_total)
[ "${m%.*}" -ge "$evicted" ] || die "metric strata_nbd_handshakes_evicted_total $m < $evicted"
finish
