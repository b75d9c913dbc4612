#!/bin/bash
# A snapshot while fio keeps 4 x 32 random reads in flight (and a writer at depth 1): reads never wait for a snapshot, so a steady read load cannot hold it off; it completes within seconds, writes resume, and neither client sees an error.
. "$(dirname "$0")/functions.sh"
requires fio jq

SIZE=$((64 << 20))
head -c $SIZE /dev/urandom >"$WORK/base.img"
"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
cow_table "$WORK/t.conf" $SIZE "$WORK/base.img" "$WORK/top.layer"
start_strata --table "$WORK/t.conf" --queues 1
U=$(uri d)
fio --name=r --ioengine=nbd --uri="$U" --rw=randread --bs=4k --iodepth=32 --numjobs=4 --group_reporting --time_based --runtime=8 \
  >"$WORK/r.log" 2>&1 &
R=$!
fio --name=w --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --iodepth=1 --time_based --runtime=8 \
  >"$WORK/w.log" 2>&1 &
W=$!
sleep 2
for i in 1 2 3; do
  out=$(timeout 10 "$STRATA" snapshot d --json --control "$CTL") || die "snapshot $i did not complete within 10 s under reads: $out"
  jq -e '.[0].pause_us < 5000000' <<<"$out" >/dev/null || die "snapshot $i held writes too long: $out"
  sleep 0.5
done
wait $R || { cat "$WORK/r.log"; die "the reader failed"; }
wait $W || { cat "$WORK/w.log"; die "the writer failed"; }
grep -q "err= 0" "$WORK/r.log" || { cat "$WORK/r.log"; die "reader errors"; }
grep -q "err= 0" "$WORK/w.log" || { cat "$WORK/w.log"; die "writer errors"; }
[ "$(ctl status d --json | jq '.[0].segments[0].info.layers')" = 4 ] || die "expected 4 layers after three snapshots"
stop_strata
echo PASS
