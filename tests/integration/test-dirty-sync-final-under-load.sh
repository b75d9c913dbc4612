#!/bin/bash
# strata sync --final while a writer keeps writing: the writer is held, not failed, and goes on afterwards; the replica is exactly the device as of one point in the writer's sequence of writes (a prefix, no later write and no missing earlier one); after the writer stops a final sync makes the replica equal to the source.
. "$(dirname "$0")/functions.sh"
requires jq sha256sum

G=4096
SIZE=$((8 << 20))   # 2048 blocks: the writer overwrites each many times
IMG=$WORK/d.img
REP=$WORK/replica.img
truncate -s $SIZE "$IMG"
truncate -s $SIZE "$REP"
start_strata --file "$IMG" --export d --state-dir "$WORK/state"
ctl dirty start d m >/dev/null

# One writer, one request at a time, so its writes are totally ordered. Write
# number s (from 1) fills each 4 KiB block it covers with (s, block) and is
# logged ("s off len t_start") before it is sent and ("done s t") after.
"$PYTHON" - "$(uri d)" "$WORK" >"$WORK/writer.out" 2>&1 <<'PY' &
import os, random, sys, struct, time, nbd
uri, work = sys.argv[1], sys.argv[2]
G, N = 4096, (8 << 20) // 4096
rng = random.Random(11)
h = nbd.NBD()
h.connect_uri(uri)
log = open(f"{work}/writes.log", "w", buffering=1)
s = 0
try:
    while not os.path.exists(f"{work}/stop"):
        s += 1
        n = rng.choice([1, 1, 1, 2, 4])
        b = rng.randrange(N - n + 1)
        data = b"".join(struct.pack("<QQ", s, b + i) * (G // 16) for i in range(n))
        log.write(f"{s} {b} {n} {time.monotonic()}\n")
        h.pwrite(data, b * G)
        log.write(f"done {s} {time.monotonic()}\n")
    h.flush()
    h.shutdown()
    print(f"ok {s}")
except Exception as e:
    print(f"error after {s} writes: {e!r}")
    sys.exit(1)
PY
WPID=$!
trap 'rc=$?; set +e; kill $WPID 2>/dev/null; (exit $rc); cleanup' EXIT
ndone() { local n; n=$(grep -c '^done' "$WORK/writes.log" 2>/dev/null) || true; echo "${n:-0}"; }
for _ in $(seq 200); do [ "$(ndone)" -ge 2000 ] && break; sleep 0.05; done
[ "$(ndone)" -ge 2000 ] || die "the writer is too slow: $(cat "$WORK/writer.out")"

# An incremental round under load, then the final one, still under load.
ctl sync d --map m --to "$REP" --json >"$WORK/s1.json" 2>/dev/null || die "sync under load failed"
sleep 0.3
t0=$("$PYTHON" -c 'import time; print(time.monotonic())')
ctl sync d --map m --to "$REP" --final --json >"$WORK/final.json" 2>"$WORK/final.err" ||
  die "sync --final under load failed: $(cat "$WORK/final.err")"
t1=$("$PYTHON" -c 'import time; print(time.monotonic())')
[ "$(jq -c '[.converged, .final]' "$WORK/final.json")" = '[true,true]' ] || die "final: $(cat "$WORK/final.json")"
# Snapshot the replica now, while the writer goes on.
cp "$REP" "$WORK/snap.img"

# The writer keeps going after the final sync.
n1=$(ndone)
for _ in $(seq 100); do [ "$(ndone)" -gt $((n1 + 100)) ] && break; sleep 0.05; done
n2=$(ndone)
[ "$n2" -gt $((n1 + 100)) ] || die "the writer did not go on after sync --final ($n1 -> $n2 writes)"
kill -0 $WPID || die "the writer died: $(cat "$WORK/writer.out")"

"$PYTHON" - "$WORK/snap.img" "$WORK/writes.log" "$t0" "$t1" <<'PY' || die "the replica is not a prefix of the writes"
import struct, sys
snap, logf, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
G, N = 4096, (8 << 20) // 4096
writes, start, done = {}, {}, {}
for line in open(logf):
    f = line.split()
    if f[0] == "done":
        done[int(f[1])] = float(f[2])
    elif len(f) == 4:
        s = int(f[0]); writes[s] = (int(f[1]), int(f[2])); start[s] = float(f[3])
data = open(snap, "rb").read()
assert len(data) == N * G
seen = []
for b in range(N):
    blk = data[b * G:(b + 1) * G]
    s, bb = struct.unpack_from("<QQ", blk)
    if s == 0:
        assert blk == bytes(G), f"block {b}: torn or foreign data"
    else:
        assert bb == b and blk == struct.pack("<QQ", s, b) * (G // 16), f"block {b}: torn or misplaced data (write {s})"
    seen.append(s)
P = max(seen)
# The replica must be exactly the device after writes 1..P.
last = [0] * N
for s in range(1, P + 1):
    b, n = writes[s]
    for i in range(b, b + n):
        last[i] = s
bad = [b for b in range(N) if last[b] != seen[b]]
assert not bad, f"replica is not the state after write {P}: {len(bad)} blocks differ, e.g. block {bad[0]} holds write {seen[bad[0]]}, expected {last[bad[0]]}"
# And P is a point inside the final sync: every write acked before it
# started is in, no write started after it returned is.
acked_before = max((s for s, t in done.items() if t < t0), default=0)
started_after = min((s for s, t in start.items() if t > t1), default=10**12)
assert P >= acked_before, f"prefix {P} misses write {acked_before}, acked before sync --final started"
assert P < started_after, f"prefix {P} holds write {started_after}, started after sync --final returned"
print(f"replica = device after write {P} (acked before: {acked_before}, started after: {started_after})")
PY

touch "$WORK/stop"
wait $WPID || die "writer: $(cat "$WORK/writer.out")"
grep -q '^ok ' "$WORK/writer.out" || die "writer: $(cat "$WORK/writer.out")"
ctl sync d --map m --to "$REP" --final --json >"$WORK/final2.json" 2>/dev/null || die "last sync failed"
[ "$(jq -c '[.converged, .dirty_bytes_left]' "$WORK/final2.json")" = '[true,0]' ] || die "last sync: $(cat "$WORK/final2.json")"
src=$(nbdcopy "$(uri d)" - | sha256sum | cut -d' ' -f1)
rep=$(sha256sum <"$REP" | cut -d' ' -f1)
[ "$src" = "$rep" ] || die "replica $rep != source $src after the writer stopped and a final sync"
stop_strata
echo PASS
