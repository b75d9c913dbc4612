#!/bin/bash
# A suspended device being flattened cannot be resumed until the copy ends or is cancelled. A served cow stack becomes its flattened file under load, as an operator does it with dmsetup's verbs: suspend d,
# `strata flatten d --to F` (the copy reads the quiet table beneath the gate; resume is refused until it ends), reload
# d as `file F`, resume. Then five more rounds from file to file. A client keeps up to 16 requests in flight the whole
# time (writes, WRITE_ZEROES and reads of 1 B .. 256 KiB at random alignments, some FUA) and checks every read against
# an in-memory reference: 0 errors, 0 mismatches. A sync of a suspended device is refused with a clear error (it used
# to wait for the resume). Then kill -9 after a FLUSH: restarted on the last file, every byte equals the reference.
source "$(dirname "$0")/functions.sh"
requires jq cmp
S="$STRATA"
SIZE=$((32 << 20))
SECT=$((SIZE / 512))
head -c $SIZE /dev/urandom >"$WORK/base.img"
"$S" layer create "$WORK/top.layer" --size $SIZE >/dev/null
cow_table "$WORK/t.conf" $SIZE "$WORK/base.img" "$WORK/top.layer"
truncate -s 4G "$WORK/big.img"
printf '[big]\n0 %d file %s 0\n' $((4 << 21)) "$WORK/big.img" >>"$WORK/t.conf"
start_strata --table "$WORK/t.conf"
ctl dirty start d m >/dev/null

# A copy of 4 GiB takes a while: the resume that comes during it is refused and
# the device stays suspended; cancelled, the copy lets it go.
ctl suspend big >/dev/null
job=$(ctl flatten big --to "$WORK/big.flat" --detach)
out=$(ctl resume big 2>&1) && die "resume of a device being flattened while suspended was accepted"
grep -q "being flattened while suspended" <<<"$out" || die "unclear refusal of resume: $out"
[ "$(ctl jobs --json | jq -r ".[] | select(.id == $job) | .state")" = running ] || die "the copy of big is not running"
[ "$(ctl list --json | jq '.[] | select(.name == "big") | .suspended')" = true ] || die "big is not suspended"
ctl job cancel "$job" >/dev/null
ctl job wait "$job" >/dev/null 2>&1 && die "a cancelled flatten reported success"
ctl resume big >/dev/null || die "resume after the cancelled copy failed"
[ "$(ctl list --json | jq '.[] | select(.name == "big") | .suspended')" = false ] || die "big is still suspended"

$PYTHON - "$(uri d)" "$WORK/base.img" "$WORK/stop" "$WORK/client.out" "$WORK/ref.img" <<'PY' &
import nbd, os, random, sys
uri, init, stop, out, refout = sys.argv[1:6]
ref = bytearray(open(init, "rb").read())
h = nbd.NBD(); h.connect_uri(uri)
rng = random.Random(23)
inflight = {}  # cookie -> (kind, off, n, readbuf)
ops = errors = mismatches = 0

def busy(off, n):
    return any(off < o + l and o < off + n for _, o, l, _ in inflight.values())

def issue():
    for _ in range(20):
        n = rng.choice([1, rng.randrange(1, 512), rng.randrange(512, 8192), rng.randrange(4096, 65536),
                        rng.randrange(65536, 262144)])
        off = rng.randrange(0, len(ref) - n)
        if not busy(off, n):
            break
    else:
        return False
    k = rng.random()
    if k < 0.45:
        data = bytearray(os.urandom(n))
        fua = nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0
        c = h.aio_pwrite(nbd.Buffer.from_buffer(data), off, flags=fua)
        ref[off:off + n] = data
        inflight[c] = ("w", off, n, None)
    elif k < 0.55:
        c = h.aio_zero(n, off)
        ref[off:off + n] = bytes(n)
        inflight[c] = ("z", off, n, None)
    else:
        buf = bytearray(n)
        c = h.aio_pread(nbd.Buffer.from_buffer(buf), off)
        inflight[c] = ("r", off, n, buf)
    return True

def reap():
    global ops, errors, mismatches
    for c in list(inflight):
        try:
            if not h.aio_command_completed(c):
                continue
        except nbd.Error as e:
            errors += 1
            print("error:", e, file=sys.stderr)
            inflight.pop(c)
            continue
        kind, off, n, buf = inflight.pop(c)
        ops += 1
        if kind == "r" and buf != ref[off:off + n]:
            mismatches += 1
            print("mismatch at %d+%d" % (off, n), file=sys.stderr)

while not os.path.exists(stop):
    while len(inflight) < 16 and issue():
        pass
    h.poll(-1)
    reap()
while inflight:
    h.poll(-1)
    reap()
h.flush()
for off in range(0, len(ref), 4 << 20):
    if h.pread(4 << 20, off) != ref[off:off + (4 << 20)]:
        mismatches += 1
open(refout, "wb").write(ref)
open(out, "w").write("ops %d errors %d mismatches %d\n" % (ops, errors, mismatches))
PY
C=$!
sleep 0.5
for i in 1 2 3 4 5 6; do
  ctl suspend d >/dev/null
  [ "$(ctl list --json | jq '.[] | select(.name == "d") | .suspended')" = true ] || die "round $i: d is not suspended"
  if [ $i = 1 ]; then
    out=$(ctl sync d --map m --to "$WORK/replica.img" 2>&1) && die "a sync of a suspended device was accepted: $out"
    grep -q "is suspended" <<<"$out" || die "unclear refusal of a sync while suspended: $out"
  fi
  job=$(ctl flatten d --to "$WORK/flat$i.img" --detach)
  [[ $job =~ ^[0-9]+$ ]] || die "round $i: flatten --detach gave no job id"
  # While the copy runs the device stays suspended: a resume is refused, or
  # allowed once the copy ended (a copy made fuzzy by writes would show as a
  # mismatch in the client once d reads from it).
  if out=$(ctl resume d 2>&1); then
    ctl job wait "$job" >/dev/null || die "round $i: the flatten of the suspended device failed"
    # d ran on its old table again: the copy is behind. Copy again.
    ctl suspend d >/dev/null
    ctl flatten d --to "$WORK/flat$i.img" >/dev/null || die "round $i: flatten of the suspended device failed"
  else
    grep -q "being flattened while suspended" <<<"$out" || die "round $i: unclear refusal of resume: $out"
    refused=$((${refused:-0} + 1))
    ctl job wait "$job" >/dev/null || die "round $i: the flatten of the suspended device failed"
  fi
  echo "0 $SECT file $WORK/flat$i.img 0" | ctl reload d --table - >/dev/null
  ctl resume d >/dev/null
  [ "$(ctl table d)" = "0 $SECT file $WORK/flat$i.img 0" ] || die "round $i: the table is $(ctl table d)"
  sleep 0.3
done
echo "resume refused during a copy in ${refused:-0} of 6 rounds"
touch "$WORK/stop"
wait $C || die "the client failed"
cat "$WORK/client.out"
read -r _ ops _ errs _ mism <"$WORK/client.out"
[ "$errs" = 0 ] && [ "$mism" = 0 ] || die "client: $(cat "$WORK/client.out")"
[ "$ops" -gt 1000 ] || die "the client did too little: $(cat "$WORK/client.out")"
[ "$(ctl dirty status d --json | jq '.[0].dirty_bytes > 0')" = true ] || die "the dirty map did not survive the reloads"
# Flushed, then kill -9: the last file holds every byte.
kill9_strata
cmp "$WORK/ref.img" "$WORK/flat6.img" || die "after kill -9 the device's file differs from the reference"
echo PASS
