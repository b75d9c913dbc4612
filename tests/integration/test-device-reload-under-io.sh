#!/bin/bash
# suspend / reload / resume under a verifying NBD client: across 100 cycles in which device "d" moves between a file
# and a `linear` over another device holding the same bytes (copied while d is suspended), the client that writes and
# reads back without pause stays connected and sees 0 errors and 0 mismatches; its requests wait while d is
# suspended. A reload that changes the size is refused while the client is connected; a bad table changes nothing;
# the dirty map of d survives every reload.
source "$(dirname "$0")/functions.sh"
requires jq cmp
S="$STRATA"
SIZE=$((16 * 1048576))
head -c $SIZE /dev/urandom >"$WORK/x.img"
cp "$WORK/x.img" "$WORK/y.img"
cat >"$WORK/t.conf" <<EOT
[other]
0 $((SIZE / 512)) file $WORK/y.img 0
[d]
0 $((SIZE / 512)) file $WORK/x.img 0
EOT
start_strata --table "$WORK/t.conf"
ctl dirty start d m >/dev/null
echo "0 $((SIZE / 512)) file $WORK/x.img 0" >"$WORK/file.tab"
echo "0 $((SIZE / 512)) linear other 0" >"$WORK/linear.tab"

$PYTHON - "$(uri d)" "$WORK/x.img" "$WORK/stop" "$WORK/client.out" <<'PY' &
import nbd, os, random, sys, time
uri, init, stop, out = sys.argv[1:5]
ref = bytearray(open(init, "rb").read())
h = nbd.NBD(); h.connect_uri(uri)
rng = random.Random(7)
ops = errors = mismatches = 0
slowest = 0.0
while not os.path.exists(stop):
    off = rng.randrange(0, len(ref) // 4096) * 4096
    n = min(rng.choice([4096, 16384, 65536]), len(ref) - off)
    t0 = time.time()
    try:
        if rng.random() < 0.5:
            buf = os.urandom(n)
            h.pwrite(buf, off)
            ref[off:off + n] = buf
        else:
            if h.pread(n, off) != ref[off:off + n]:
                mismatches += 1
    except nbd.Error as e:
        errors += 1
        print("error:", e, file=sys.stderr)
    slowest = max(slowest, time.time() - t0)
    ops += 1
h.flush()
# Everything once more at the end.
if h.pread(len(ref), 0) != ref:
    mismatches += 1
open(out, "w").write("ops %d errors %d mismatches %d slowest %.3f\n" % (ops, errors, mismatches, slowest))
PY
C=$!
sleep 0.3
cycles=100
ctl suspend d --noflush --sync >/dev/null 2>&1 && die "suspend --noflush --sync was accepted"
for i in $(seq 1 $cycles); do
  # The three kinds of suspend in turn: flush first (the default), --sync (flush again with requests held),
  # --noflush.
  flags=("" "--sync" "--noflush"); ctl suspend d ${flags[$((i % 3))]} >/dev/null
  # d is quiet: give the other backing its bytes (through the page cache), then switch to it.
  if [ $((i % 2)) = 1 ]; then
    cp "$WORK/x.img" "$WORK/y.img"; next=linear.tab
  else
    cp "$WORK/y.img" "$WORK/x.img"; next=file.tab
  fi
  if [ $i = 1 ]; then
    # While suspended, requests are held, not failed.
    sleep 0.2
    [ "$(ctl status d --json | jq '.[0].held_requests')" -ge 1 ] || die "no request was held while suspended"
  fi
  ctl reload d --table "$WORK/$next" >/dev/null
  ctl resume d >/dev/null
  sleep 0.05
done
[ "$(ctl table d)" = "0 $((SIZE / 512)) file $WORK/x.img 0" ] || die "after $cycles cycles the table is $(ctl table d)"
# Refused: a size change under a connected client, and a broken table.
echo "0 $((SIZE / 1024)) file $WORK/x.img 0" >"$WORK/half.tab"
out=$(ctl reload d --table "$WORK/half.tab" 2>&1) && die "a size-changing reload under a client was accepted"
grep -q "NBD client" <<<"$out" || die "unclear refusal: $out"
echo "0 $((SIZE / 512)) file $WORK/missing.img 0" >"$WORK/bad.tab"
ctl reload d --table "$WORK/bad.tab" 2>/dev/null && die "a table naming a missing file was accepted"
[ "$(ctl list --json | jq '.[] | select(.name == "d") | .inactive_table')" = false ] || die "a failed reload left a table"
touch "$WORK/stop"
wait $C || die "the client failed"
cat "$WORK/client.out"
read -r _ ops _ errs _ mism _ slow <"$WORK/client.out"
[ "$errs" = 0 ] && [ "$mism" = 0 ] || die "client: $(cat "$WORK/client.out")"
[ "$ops" -gt 500 ] || die "the client did too little: $(cat "$WORK/client.out")"
[ "$(ctl dirty status d --json | jq -r '.[0].name')" = m ] || die "the dirty map is gone"
[ "$(ctl dirty status d --json | jq '.[0].dirty_bytes > 0')" = true ] || die "the dirty map lost the writes"
stop_strata
echo PASS
