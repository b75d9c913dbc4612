#!/bin/bash
# strata sync to an NBD replica (a second strata): incremental rounds while writers keep writing over NBD, then the writers stop and `sync --final` leaves the replica byte-for-byte equal to the source (sha256 via nbdcopy), with the replica flushed.
. "$(dirname "$0")/functions.sh"
requires nbdcopy jq sha256sum

SIZE=$((64 << 20))
IMG=$WORK/d.img
REP=$WORK/replica.img
head -c $SIZE /dev/urandom >"$IMG"
cp "$IMG" "$REP"   # the replica starts as a copy; the map starts before any write

# The replica server, with its own sockets.
RSOCK=$WORK/r.sock
RCTL=$WORK/r.ctl
"$STRATA" serve --unix "$RSOCK" --control "$RCTL" --file "$REP" --export r >"$WORK/replica.log" 2>&1 &
RPID=$!
WPID=
trap 'rc=$?; set +e; [ -n "$WPID" ] && kill $WPID 2>/dev/null; kill -9 $RPID 2>/dev/null; wait $RPID 2>/dev/null; (exit $rc); cleanup' EXIT
for _ in $(seq 100); do "$STRATA" list --control "$RCTL" >/dev/null 2>&1 && break; sleep 0.05; done
RURI="nbd+unix:///r?socket=$RSOCK"

start_strata --file "$IMG" --export d --state-dir "$WORK/state"
ctl dirty start d m >/dev/null

# Writers: 3 connections, 8 requests in flight each, random sizes (512 B to
# 256 KiB, unaligned too), writes, zeroes and trims, until told to stop.
"$PYTHON" - "$(uri d)" "$WORK/stop" >"$WORK/writer.out" 2>&1 <<'PY' &
import os, random, sys, threading, nbd
uri, stopfile = sys.argv[1], sys.argv[2]
SIZE = 64 << 20
errors, counts = [], [0, 0, 0]
def writer(i):
    rng = random.Random(i)
    h = nbd.NBD()
    h.connect_uri(uri)
    buf = os.urandom(256 << 10)
    pending = []
    def retire():
        h.poll(-1)
        for c in [c for c in pending if h.aio_command_completed(c)]:
            pending.remove(c)
    try:
        while not os.path.exists(stopfile):
            while len(pending) >= 8:
                retire()
            ln = rng.choice([512, 4096, 4096, 65536, 262144, rng.randrange(1, 262144)])
            off = rng.randrange(SIZE - ln)
            op = rng.random()
            if op < 0.85:
                s = rng.randrange(len(buf) - ln + 1)
                pending.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(buf[s:s + ln])), off))
            elif op < 0.95:
                pending.append(h.aio_zero(ln, off))
            else:
                pending.append(h.aio_trim(ln, off))
            counts[i] += 1
        while pending:
            retire()
        h.flush()
        h.shutdown()
    except Exception as e:
        errors.append(f"writer {i}: {e!r}")
ts = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
for t in ts: t.start()
for t in ts: t.join()
print("errors:", errors)
print("writes:", sum(counts))
sys.exit(1 if errors else 0)
PY
WPID=$!

sleep 0.5
# Incremental rounds under load: each succeeds and copies something.
for r in 1 2 3 4 5 6; do
  ctl sync d --map m --to "$RURI" --json --max-rounds 2 >"$WORK/sync$r.json" 2>"$WORK/sync$r.err" ||
    die "sync round $r under load failed: $(cat "$WORK/sync$r.err")"
  [ "$(jq '.copied_bytes > 0 and .rounds >= 1 and .final == false' "$WORK/sync$r.json")" = true ] ||
    die "sync round $r: $(cat "$WORK/sync$r.json")"
  sleep 0.2
done
touch "$WORK/stop"
wait $WPID || die "writer failed: $(cat "$WORK/writer.out")"
WPID=
grep -q '^errors: \[\]$' "$WORK/writer.out" || die "writer: $(cat "$WORK/writer.out")"

flushes_before=$("$STRATA" status r --json --control "$RCTL" | jq '.[0].segments[0].info.flushes')
ctl sync d --map m --to "$RURI" --final --json >"$WORK/final.json" 2>"$WORK/final.err" ||
  die "final sync failed: $(cat "$WORK/final.err")"
[ "$(jq -c '[.converged, .final, .dirty_bytes_left]' "$WORK/final.json")" = '[true,true,0]' ] ||
  die "final sync: $(cat "$WORK/final.json")"
flushes_after=$("$STRATA" status r --json --control "$RCTL" | jq '.[0].segments[0].info.flushes')
[ "$flushes_after" -gt "$flushes_before" ] || die "the final sync did not flush the replica ($flushes_before -> $flushes_after)"
[ -z "$(ctl dirty list d m)" ] || die "map not empty after the final sync"

src=$(nbdcopy "$(uri d)" - | sha256sum | cut -d' ' -f1)
rep=$(nbdcopy "$RURI" - | sha256sum | cut -d' ' -f1)
if [ "$src" != "$rep" ]; then
  # Say where they differ, to help whoever debugs it.
  nbdcopy "$(uri d)" "$WORK/src.raw"; nbdcopy "$RURI" "$WORK/rep.raw"
  cmp -l "$WORK/src.raw" "$WORK/rep.raw" | awk '{ b = int(($1 - 1) / 4096); if (b != last) print "differs in block", b; last = b }' | head -20 >&2
  die "replica sha256 $rep != source $src after sync --final"
fi
[ "$(sha256sum <"$IMG" | cut -d' ' -f1)" = "$src" ] || die "the source file differs from what the export reads"
echo "writes: $(grep '^writes:' "$WORK/writer.out"), final: $(cat "$WORK/final.json" | jq -c .)"
stop_strata
echo PASS
