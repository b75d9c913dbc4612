#!/bin/bash
# cow durability: kill -9 during an async libnbd workload (8 in flight; 4 KiB-block writes and zeroes into 16 KiB chunks, so many copy up; FUA writes; flushes, up to two in flight; flush-free stretches) on a 3-deep stack, twice (the second time in a flush-free stretch); after each restart (which logs "was not closed cleanly", needs no repair and checks clean) every block holds its value at the last flush or FUA that covered it, or a value written to it later, or, if nothing covering it completed, its lower layers' value or one written to it; never data not written to that block.
. "$(dirname "$0")/functions.sh"
requires jq

BS=4096
NB=8192                 # blocks of 4 KiB: a 32 MiB device
SIZE=$((NB * BS))
CH=16384
B=$WORK/base.img
head -c $SIZE /dev/urandom >"$B"
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"

# Block values: "DURA" + block + seq, repeated; lower layers use seq >= 10^9.
cat >"$WORK/lib.py" <<'PY'
import struct
BS = 4096
def value(b, seq):
    return struct.pack('<4sIQ', b'DURA', b, seq) * (BS // 16)
def ident(data, b, lower):
    """What a block holds, as a set of names: 'L' (its lower value), 'Z'
    (zeros), the seq of a value written to it; empty: garbage. A lower value
    of zeros (zeroed in an earlier cycle) is both 'L' and 'Z'."""
    names = set()
    if data == lower: names.add('L')
    if data.count(0) == BS: names.add('Z')
    head = data[:16]
    if head[:4] == b'DURA' and head * (BS // 16) == data:
        blk, seq = struct.unpack('<IQ', head[4:16])
        if blk == b: names.add(seq)
    return names
PY

# The lower layers: l1 then l2, each served as the top while written.
"$STRATA" layer create "$WORK/l1.layer" --size $SIZE --chunk-size $CH >/dev/null
sed -i "s|cow [^ ]* base|cow $WORK/l1.layer base|" "$WORK/t.conf"
start_strata --table "$WORK/t.conf"
(cd "$WORK" && $PYTHON -c "
import nbd
from lib import *
h = nbd.NBD(); h.connect_uri('$(uri d)')
for b in range(0, $NB // 2, 3): h.pwrite(value(b, 10**9 + b), b * BS)
h.flush()
") || die "writing l1"
stop_strata
"$STRATA" layer create "$WORK/l2.layer" --parent "$WORK/l1.layer" --chunk-size $CH >/dev/null
sed -i "s|cow [^ ]* base|cow $WORK/l2.layer base|" "$WORK/t.conf"
start_strata --table "$WORK/t.conf"
(cd "$WORK" && $PYTHON -c "
import nbd
from lib import *
h = nbd.NBD(); h.connect_uri('$(uri d)')
for b in range($NB // 4, 3 * $NB // 4, 5): h.pwrite(value(b, 2 * 10**9 + b), b * BS)
h.flush()
") || die "writing l2"
stop_strata
"$STRATA" layer create "$WORK/top.layer" --parent "$WORK/l2.layer" --chunk-size $CH >/dev/null
sed -i "s|cow [^ ]* base|cow $WORK/top.layer base|" "$WORK/t.conf"

# The writer: runs until the connection dies, then writes its log (JSON):
# per block the seqs issued to it in order, and the latest durable one.
cat >"$WORK/writer.py" <<'PY'
import json, nbd, random, sys
from lib import *
uri, nb, log, seed, seq, quiet_after, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
rng = random.Random(seed)
# Normal ops (flushes, FUA) go to the lower half of the device; "quiet" ones
# (no flush, no FUA) to the upper half: the last 500 of every 1500 ops, and
# all of them after op quiet_after (then the marker file is created).
issued = 0
def quiet():
    if quiet_after and issued >= quiet_after:
        if issued == quiet_after: open(marker, 'w').close()
        return True
    return issued % 1500 >= 1000
h = nbd.NBD(); h.connect_uri(uri)
hist, durable, acked, kinds = {}, {}, {}, {}
busy, inflight = set(), {}
stats = dict(writes=0, zeros=0, fua=0, flushes=0, acked=0, error='')
flushes_in_flight = 0
try:
    while True:
        tries = 0
        while len(inflight) < 8 and tries < 20:
            tries += 1
            q = quiet()
            if not q and rng.random() < 0.06:
                if flushes_in_flight >= 2: continue
                c = h.aio_flush()
                inflight[c] = ('f', dict(acked))
                flushes_in_flight += 1
                stats['flushes'] += 1
                continue
            n = rng.choice((1, 1, 1, 2, 3, 4, 8))
            half = nb // 2
            b0 = (half if q else 0) + rng.randrange(half - n + 1)
            if any(b in busy for b in range(b0, b0 + n)): continue
            seq += 1
            issued += 1
            fua = not q and rng.random() < 0.1
            flags = nbd.CMD_FLAG_FUA if fua else 0
            if rng.random() < 0.1:
                kinds[seq] = 'z'
                c = h.aio_zero(n * BS, b0 * BS, flags=flags)
                stats['zeros'] += 1
                buf = None
            else:
                kinds[seq] = 'w'
                buf = nbd.Buffer.from_bytearray(bytearray(b''.join(value(b, seq) for b in range(b0, b0 + n))))
                c = h.aio_pwrite(buf, b0 * BS, flags=flags)
                stats['writes'] += 1
            stats['fua'] += fua
            for b in range(b0, b0 + n):
                hist.setdefault(b, []).append(seq)
                busy.add(b)
            inflight[c] = ('w', seq, b0, n, fua, buf)
        h.poll(-1)
        for c in list(inflight):
            if not h.aio_command_completed(c): continue
            op = inflight.pop(c)
            if op[0] == 'f':
                flushes_in_flight -= 1
                for b, s in op[1].items(): durable[b] = max(durable.get(b, 0), s)
            else:
                _, s, b0, n, fua, _ = op
                stats['acked'] += 1
                for b in range(b0, b0 + n):
                    acked[b] = s
                    busy.discard(b)
                    if fua: durable[b] = max(durable.get(b, 0), s)
except nbd.Error as e:
    stats['error'] = str(e)
json.dump(dict(hist=hist, durable=durable, kinds=kinds, stats=stats, seq=seq), open(log, 'w'))
print(json.dumps(stats))
PY

# The oracle: LOWER is the device as it read before the cycle.
cat >"$WORK/check.py" <<'PY'
import json, nbd, sys
from lib import *
uri, lower_path, log = sys.argv[1], sys.argv[2], sys.argv[3]
lower = open(lower_path, 'rb').read()
L = json.load(open(log))
hist = {int(b): v for b, v in L['hist'].items()}
durable = {int(b): v for b, v in L['durable'].items()}
kinds = {int(s): k for s, k in L['kinds'].items()}
h = nbd.NBD(); h.connect_uri(uri)
img = h.pread(len(lower), 0)
bad, counts = [], dict(durable_value=0, later_value=0, lower=0, unflushed_value=0)
val = lambda s: 'Z' if kinds[s] == 'z' else s
for b in range(len(lower) // BS):
    got = ident(img[b * BS:(b + 1) * BS], b, lower[b * BS:(b + 1) * BS])
    if not got:
        bad.append(f'block {b}: data never written to it'); continue
    seqs = hist.get(b, [])
    d = durable.get(b)
    if d:
        after = {val(s) for s in seqs if s > d}
        if val(d) in got: counts['durable_value'] += 1
        elif got & after: counts['later_value'] += 1
        else:
            bad.append(f'block {b}: reads {got}, but {d} ({kinds[d]}) was durable (later: {sorted(map(str, after))})')
    else:
        if 'L' in got: counts['lower'] += 1
        elif got & {val(s) for s in seqs}: counts['unflushed_value'] += 1
        else: bad.append(f'block {b}: reads {got}, which was never written to it (issued: {seqs})')
open(lower_path, 'wb').write(img)   # the next cycle starts from here
print(json.dumps(counts))
if bad:
    print('\n'.join(bad[:20])); sys.exit(1)
PY

SEQ=0
for cycle in 1 2; do
  start_strata --table "$WORK/t.conf"
  nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
open('$WORK/lower.img', 'wb').write(h.pread($SIZE, 0))
" || die "reading the device before cycle $cycle"
  # Cycle 1 is killed at a random time; cycle 2 while it writes without
  # flushes, so chunks first written since the last flush are dropped.
  quiet_after=$([ $cycle = 2 ] && echo 3000 || echo 0)
  rm -f "$WORK/quiet"
  (cd "$WORK" && exec $PYTHON writer.py "$(uri d)" $NB "$WORK/w$cycle.json" $cycle $SEQ $quiet_after "$WORK/quiet" \
    >"$WORK/w$cycle.out" 2>&1) &
  W=$!
  if [ $cycle = 1 ]; then
    sleep "$(shuf -i 1500-3000 -n 1 | sed 's/...$/.&/')"
  else
    for _ in $(seq 200); do [ -e "$WORK/quiet" ] && break; sleep 0.05; done
    [ -e "$WORK/quiet" ] || die "cycle 2: the writer never reached its flush-free phase"
    sleep 0.4
  fi
  running "$W" || die "cycle $cycle: the writer stopped before the kill: $(cat "$WORK/w$cycle.out")"
  kill9_strata
  wait $W || die "cycle $cycle: writer failed: $(cat "$WORK/w$cycle.out")"
  stats=$(tail -1 "$WORK/w$cycle.out")
  echo "cycle $cycle writer: $stats" >&2
  [ "$(jq .acked <<<"$stats")" -gt 200 ] && [ "$(jq .flushes <<<"$stats")" -gt 10 ] || die "cycle $cycle: too little work before the kill: $stats"
  SEQ=$(jq .seq "$WORK/w$cycle.json")
  [ "$("$STRATA" layer info "$WORK/top.layer" --json | jq .in_use)" = true ] || die "the top is not marked in use after SIGKILL"
  "$STRATA" layer check "$WORK/top.layer" >/dev/null || die "cycle $cycle: layer check after SIGKILL: $("$STRATA" layer check "$WORK/top.layer")"
  start_strata --table "$WORK/t.conf"
  grep -q "top.layer was not closed cleanly" "$STRATA_LOG" || die "cycle $cycle: no 'was not closed cleanly' in the log"
  out=$(cd "$WORK" && $PYTHON check.py "$(uri d)" "$WORK/lower.img" "$WORK/w$cycle.json" 2>&1) || die "cycle $cycle: $out"
  echo "cycle $cycle after restart: $out" >&2
  if [ $cycle = 2 ]; then
    [ "$(jq .lower <<<"$out")" -gt 0 ] || die "cycle 2: no block written after the last flush reads its lower value (nothing dropped?): $out"
  fi
  stop_strata
  [ "$("$STRATA" layer info "$WORK/top.layer" --json | jq .in_use)" = false ] || die "the top is still in use after a clean stop"
  sed -i 's/was not closed cleanly/(seen: not closed cleanly)/' "$STRATA_LOG"
done
for l in l1 l2 top; do "$STRATA" layer check "$WORK/$l.layer" >/dev/null || die "layer check $l"; done
echo PASS
