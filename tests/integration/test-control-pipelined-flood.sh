#!/bin/bash
# The control socket under a pipelined flood: one client sends 300,000 small requests in one go (900 KB, under the
# 1 MiB line limit) and reads the replies; the server answers every one of them in order, does not crash (serving
# them by recursion overflowed the stack: a finding of the sanitizer run), and another client's requests are answered
# within 200 ms each meanwhile (one client's pipeline is served 4 requests per turn).
source "$(dirname "$0")/functions.sh"
printf '[m]\n0 2048 memory\n' >"$WORK/t.conf"
start_strata --table "$WORK/t.conf"
$PYTHON - "$CTL" <<'PY'
import json, socket, sys, threading, time
ctl = sys.argv[1]
import os
# Under the sanitizers 100,000 (the old recursion overflowed there well before that; every request costs more).
N = 100000 if os.environ.get("STRATA_SANITIZED") else 300000
flood = socket.socket(socket.AF_UNIX); flood.connect(ctl)
got = [0]
bad = []
def reader():
    f = flood.makefile("rb")
    for i in range(N):
        line = f.readline()
        if not line:
            bad.append(f"connection closed after {i} replies"); return
        r = json.loads(line)
        if r != {"ok": False, "error": 'request must be a JSON object with a string "method"'}:
            bad.append(r); return
        got[0] += 1
t = threading.Thread(target=reader); t.start()
flood.sendall(b"{}\n" * N)
other = socket.socket(socket.AF_UNIX); other.connect(ctl); of = other.makefile("r")
lat = []
while t.is_alive() and len(lat) < 2000:
    t0 = time.monotonic()
    other.sendall(b'{"method": "device_list"}\n')
    r = json.loads(of.readline())
    lat.append(time.monotonic() - t0)
    assert r["ok"], r
t.join(timeout=120)
assert not t.is_alive(), f"only {got[0]} of {N} replies in 120 s"
assert not bad, bad[:3]
assert got[0] == N, got[0]
print(f"{N} pipelined requests answered; the other client: {len(lat)} requests meanwhile, max {max(lat) * 1000:.1f} ms")
assert max(lat) < 0.2, f"the other client waited {max(lat) * 1000:.0f} ms"
PY
kill -0 "$STRATA_PID" 2>/dev/null || die "strata died"
ctl list >/dev/null || die "the server does not answer after the flood"
stop_strata
echo PASS
