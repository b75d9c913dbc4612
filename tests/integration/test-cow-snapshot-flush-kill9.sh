#!/bin/bash
# A snapshot holds writes only while the new top takes the old one's place; the old top's last data and bits are made
# durable after writes resume, and every FLUSH waits for that. Checked with kill -9: writers keep 16 requests in
# flight (4 KiB writes at random places of 16 KiB chunks, many copying up) on two connections while another connection
# sends FLUSH after FLUSH and `strata snapshot` runs; strata is killed just after a FLUSH completes, at a random moment
# of the snapshot. After the restart every write acknowledged before that FLUSH was sent reads back (whether it went
# to the old top or the new one), and no block holds bytes never written to it. Eight cycles, a snapshot each; in half
# of them a failpoint (STRATA_FAILPOINT_SEAL_DELAY_MS) delays the seal so that the FLUSH after the switch must wait.
. "$(dirname "$0")/functions.sh"
requires jq

BS=4096
NB=16384 # 64 MiB
SIZE=$((NB * BS))
B=$WORK/base.img
head -c $SIZE /dev/zero >"$B"
"$STRATA" layer create "$WORK/top.layer" --size $SIZE --chunk-size 16384 >/dev/null
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"
export STRATA CTL WORK SOCK

for cycle in 1 2 3 4 5 6 7 8; do
  # Odd cycles: the seal of the old top starts 300 ms after the switch (a failpoint), so that the FLUSH sent after
  # the switch has to wait for it, and the kill lands while nothing but that wait made the old top's bits durable.
  if [ $((cycle % 2)) = 1 ]; then export STRATA_FAILPOINT_SEAL_DELAY_MS=300; else unset STRATA_FAILPOINT_SEAL_DELAY_MS; fi
  start_strata --table "$WORK/t.conf"
  export STRATA_PID CYCLE=$cycle
  $PYTHON - <<'PY' || die "cycle $cycle failed"
import json, os, random, struct, subprocess, threading, time, nbd
sock, ctl, work, strata = os.environ["SOCK"], os.environ["CTL"], os.environ["WORK"], os.environ["STRATA"]
pid, cycle = int(os.environ["STRATA_PID"]), int(os.environ["CYCLE"])
BS, NB = 4096, 16384
state_path = f"{work}/acked.json"
# Every block's value: (cycle, serial) in its first 16 bytes, repeated.
def value(b, seq): return struct.pack("<IIQ", 0x534E4150, b, seq) * (BS // 16)
acked = json.load(open(state_path)) if os.path.exists(state_path) else {}   # block -> last acked seq (durable ones)
# 1. Check what the previous cycle's FLUSH covered.
h = nbd.NBD(); h.set_export_name("d"); h.connect_unix(sock)
bad = 0
for b in range(NB):
    d = h.pread(BS, b * BS)
    want = acked.get(str(b))
    if d.count(0) == BS:
        if want is not None: bad += 1; print(f"block {b}: zeros, expected seq {want}")
        continue
    head = d[:16]
    ok_form = head * (BS // 16) == d and struct.unpack("<IIQ", head)[:2] == (0x534E4150, b)
    if not ok_form:
        bad += 1; print(f"block {b}: bytes never written to it"); continue
    seq = struct.unpack("<IIQ", head)[2]
    if want is not None and seq < want:
        bad += 1; print(f"block {b}: seq {seq}, a FLUSH covered seq {want}")
assert bad == 0, f"{bad} blocks wrong after the kill of cycle {cycle - 1}"
h.shutdown()

# 2. Load, flushes, a snapshot, kill -9 just after a FLUSH completes.
stop = threading.Event()
lock = threading.Lock()
done = {}        # block -> highest acknowledged seq
seq_box = [cycle * 10**9]
def writer(k):
    w = nbd.NBD(); w.set_export_name("d"); w.connect_unix(sock)
    rnd = random.Random(cycle * 100 + k)
    inflight = []
    while not stop.is_set():
        while len(inflight) < 8:
            b = rnd.randrange(k, NB, 2)   # each writer its own blocks: no overlap in flight
            if any(x[0] == b for x in inflight): continue
            with lock:
                seq_box[0] += 1; s = seq_box[0]
            c = w.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(value(b, s))), b * BS)
            inflight.append((b, s, c))
        try:
            w.poll(-1)
            finished = [x for x in inflight if w.aio_command_completed(x[2])]
        except nbd.Error:
            if stop.is_set() or not os.path.exists(f"/proc/{pid}/status"): return   # the kill
            raise
        for x in finished:
            if True:
                inflight.remove(x)
                with lock:
                    if done.get(x[0], -1) < x[1]: done[x[0]] = x[1]
    # requests still in flight at the kill: not acknowledged, not counted
ts = [threading.Thread(target=writer, args=(k,), daemon=True) for k in (0, 1)]
for t in ts: t.start()
f = nbd.NBD(); f.set_export_name("d"); f.connect_unix(sock)
time.sleep(0.3)
snap = subprocess.Popen([strata, "snapshot", "d", "--control", ctl, "--json"], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
import glob
snaps0 = len(glob.glob(f"{work}/top.layer.snap[0-9]*"))
# Odd cycles: kill just after the first FLUSH sent once the old top was renamed (the switch is over, the old top's
# seal may still run: that FLUSH must cover what it took). Even cycles: at a random moment of the snapshot.
after_switch = cycle % 2 == 1
kill_at = time.monotonic() + random.Random(cycle).uniform(0.0, 0.4)
covered = None
flushes = 0
deadline = time.monotonic() + 60
while True:
    switched = len(glob.glob(f"{work}/top.layer.snap[0-9]*")) > snaps0
    with lock:
        before = dict(done)      # acknowledged before this FLUSH is sent
    f.flush()
    flushes += 1
    covered = before
    if after_switch and switched:
        # This FLUSH was sent after the switch: it waited for the seal (300 ms later).
        break
    if not after_switch and time.monotonic() >= kill_at and flushes >= 2:
        break
    assert time.monotonic() < deadline, "the snapshot did not switch within 60 s"
os.kill(pid, 9)
stop.set()
running = snap.poll() is None
out = snap.communicate()[0].decode()
print(f"cycle {cycle}: {flushes} flushes, killed {'during' if running else 'after'} the snapshot"
      f"{' (after its switch)' if after_switch else ''} "
      f"({out.strip()[:160]}); {len(covered)} blocks covered")
acked.update({str(b): s for b, s in covered.items() if s > acked.get(str(b), -1)})
json.dump(acked, open(state_path, "w"))
PY
  wait "$STRATA_PID" 2>/dev/null || true
  STRATA_PID=
done
start_strata --table "$WORK/t.conf"
export STRATA_PID CYCLE=9
$PYTHON - <<'PY' || die "final check failed"
import json, os, struct, nbd
sock, work = os.environ["SOCK"], os.environ["WORK"]
BS, NB = 4096, 16384
acked = json.load(open(f"{work}/acked.json"))
h = nbd.NBD(); h.set_export_name("d"); h.connect_unix(sock)
bad = 0
for b, want in acked.items():
    d = h.pread(BS, int(b) * BS)
    seq = struct.unpack("<IIQ", d[:16])[2] if d.count(0) != BS else -1
    if seq < want: bad += 1
assert bad == 0, f"{bad} of {len(acked)} blocks lost what a FLUSH covered"
print(f"final: {len(acked)} blocks, every one holds at least what a FLUSH covered")
PY
n=$(ls "$WORK"/top.layer.snap* 2>/dev/null | wc -l)
echo "snapshots on disk: $n"
"$STRATA" layer check "$WORK/top.layer" >/dev/null || die "layer check failed on the stack"
stop_strata
echo PASS
