#!/bin/bash
# The control socket serves many clients at once: while a merge job and a sync job each copy 192 MiB (STATUS_MIB=2048
# runs it at 2 GiB: test-control-status-2g), 20 clients
# asking `device_status` in a loop get every answer with a p99 under 50 ms, and so do they with an idle client, a
# client that sent half a line and one that sends requests but never reads its replies connected all along. A line
# over the limit and a field of the wrong type are refused with a clear error; the jobs end done and the merged
# stack reads as before.
source "$(dirname "$0")/functions.sh"
requires jq nbdcopy cmp
S="$STRATA"
SIZE=$((${STATUS_MIB:-192} * 1048576))
head -c $SIZE /dev/urandom >"$WORK/base.img"
"$S" layer create "$WORK/l1.layer" --size $SIZE >/dev/null
"$S" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" >/dev/null
cat >"$WORK/t.conf" <<EOT
[base]
0 $((SIZE / 512)) file $WORK/base.img 0 ro
[vm]
0 $((SIZE / 512)) cow $WORK/top.layer base=base
[plain]
0 $((SIZE / 512)) file $WORK/plain.img 0
EOT
truncate -s $SIZE "$WORK/plain.img"
start_strata --table "$WORK/t.conf"
ctl dirty start plain m >/dev/null
# The top holds every chunk (the merge copies them all); plain is all dirty.
head -c $SIZE /dev/urandom >"$WORK/data.img"
nbdcopy "$WORK/data.img" "$(uri vm)"
nbdcopy "$WORK/data.img" "$(uri plain)"

$PYTHON - "$CTL" "$WORK" <<'PY'
import json, socket, subprocess, sys, threading, time
ctl, work = sys.argv[1], sys.argv[2]
strata = __import__("os").environ["STRATA"]

def conn():
    s = socket.socket(socket.AF_UNIX)
    s.connect(ctl)
    return s

def ask(s, f, req):
    s.sendall((json.dumps(req) + "\n").encode())
    while True:
        line = f.readline()
        if not line:
            raise RuntimeError("connection closed")
        r = json.loads(line)
        if "progress" not in r:
            return r

# Clients that must not delay anyone: idle, half a line, never reading.
idle = conn()
half = conn(); half.sendall(b'{"method": "device_st')
deaf = conn()
deaf.setblocking(False)
deaf_sent = 0
def flood():
    global deaf_sent
    req = (json.dumps({"method": "device_status"}) + "\n").encode() * 64
    end = time.time() + 3
    while time.time() < end:
        try:
            deaf_sent += deaf.send(req)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break   # dropped by the server: fine
flooder = threading.Thread(target=flood); flooder.start()

# Errors are clear.
s = conn(); f = s.makefile("r")
r = ask(s, f, {"method": "device_status", "params": {"name": 5}})
assert r == {"ok": False, "error": '"name" must be a string'}, r
r = ask(s, f, {"method": "dirty_start", "params": {"device": "plain", "name": "x", "granularity": "4k"}})
assert not r["ok"] and "granularity" in r["error"], r
try:
    s.sendall(b'{"method": "device_list", "params": {"pad": "' + b"x" * (2 << 20) + b'"}}\n')
except (BrokenPipeError, ConnectionResetError):
    pass   # the server answered and closed before reading it all
r = json.loads(f.readline())
assert not r["ok"] and "longer than" in r["error"], r
s.close()

# The askers are processes, not threads of this one: a thread's measured time
# would include its waits for the interpreter lock held by the other 19.
import multiprocessing as mp
def asker(stop, out, ready):
    lat, err = [], None
    try:
        s = conn(); f = s.makefile("r")
        ready.put(1)
        while not stop.is_set():
            t0 = time.perf_counter()
            r = ask(s, f, {"method": "device_status", "params": {"name": "vm"}})
            lat.append(time.perf_counter() - t0)
            assert r["ok"], r
            time.sleep(0.01)
    except Exception as e:
        err = repr(e)
    out.put((lat, err))
mpc = mp.get_context("fork")
stop_ev, out, ready = mpc.Event(), mpc.Queue(), mpc.Queue()
ts = [mpc.Process(target=asker, args=(stop_ev, out, ready)) for _ in range(20)]
for t in ts: t.start()
for _ in ts: ready.get(timeout=60)   # every asker connected before the jobs start
# The jobs, detached, started on the socket (a CLI process starting between them took longer than the jobs under
# the sanitizers).
js = conn(); jf = js.makefile("r")
r = ask(js, jf, {"method": "device_merge", "params": {"device": "vm", "detach": True}})
assert r["ok"], r
merge = r["result"]["job"]
r = ask(js, jf, {"method": "device_sync", "params": {"device": "plain", "map": "m", "to": work + "/replica.img",
                                                     "detach": True}})
assert r["ok"], r
sync = r["result"]["job"]
s = conn(); f = s.makefile("r")
saw_running = False
deadline = time.time() + 120
while time.time() < deadline:
    jobs = ask(s, f, {"method": "job_list"})["result"]
    st = {j["id"]: j["state"] for j in jobs}
    if "running" in st.values():
        saw_running = True
    if st.get(merge) not in (None, "running") and st.get(sync) not in (None, "running"):
        break
    time.sleep(0.1)
stop_ev.set()
lat, errors = [], []
for _ in ts:
    l, e = out.get(timeout=60)
    lat += l
    if e: errors.append(e)
for t in ts: t.join()
flooder.join()
# The idle and half-line clients are still served.
half.sendall(b'atus"}\n')
hf = half.makefile("r")
assert json.loads(hf.readline())["ok"]
idle.sendall(b'{"method": "server_status"}\n')
assert json.loads(idle.makefile("r").readline())["ok"]
jobs = {j["id"]: j for j in ask(s, f, {"method": "job_list"})["result"]}
assert jobs[merge]["state"] == "done", jobs[merge]
assert jobs[sync]["state"] == "done", jobs[sync]
assert jobs[sync]["result"]["converged"], jobs[sync]
assert saw_running, "the jobs ended before any status was asked"
assert not errors, errors
lat.sort()
p99 = lat[int(len(lat) * 0.99)] * 1000
print("status requests: %d, p50 %.2f ms, p99 %.2f ms, max %.2f ms; merge %.2f s, sync %.2f s; unread bytes sent %d"
      % (len(lat), lat[len(lat) // 2] * 1000, p99, lat[-1] * 1000, jobs[merge]["seconds"], jobs[sync]["seconds"],
         deaf_sent))
assert len(lat) > 100, len(lat)
# Under the sanitizers (scripts/asan.sh) the bound is scaled by STRATA_TEST_TIME_SCALE; the plain build holds 50 ms.
assert p99 < 50 * float(__import__("os").environ.get("STRATA_TEST_TIME_SCALE", "1")), "status p99 %.2f ms" % p99
PY
cmp "$WORK/data.img" "$WORK/replica.img" || die "the replica differs from the device"
nbdcopy "$(uri vm)" "$WORK/after.img"
cmp "$WORK/data.img" "$WORK/after.img" || die "the merged stack reads differently"
[ "$(ctl status vm --json | jq '.[0].segments[0].info.layers')" = 1 ] || die "the merge did not drop the top"
stop_strata
echo PASS
