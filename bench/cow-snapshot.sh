#!/usr/bin/env bash
# bench/cow-snapshot.sh: how long `strata snapshot` holds writes under load (issue 23's target: <= 10 ms p99
# over 20 snapshots). A cow top over a 1 GiB base; fio 4k randwrite QD32 (nbd engine) for RT s (25); N (20)
# snapshots, 0.5 s apart, from 2 s in. Prints each snapshot's "held total seal rounds" (us) on one line, then the
# held times' min/p50/p90/max and the load's IOPS and p99.
#   STRATA=build/strata bash bench/cow-snapshot.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STRATA=${STRATA:-$HERE/../build/strata}
for t in fio jq; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
D=$(mktemp -d /tmp/sn.XXXX)
trap 'kill $SRV 2>/dev/null; wait 2>/dev/null; rm -rf $D' EXIT
head -c 1G /dev/urandom > $D/base.raw
$STRATA layer create $D/top.layer --size 1G >/dev/null
cat > $D/cow.conf <<C
[base]
0 2097152 file $D/base.raw 0 ro
[d]
0 2097152 cow $D/top.layer base=base
C
$STRATA serve --state-dir $D/st --unix $D/sock --control $D/ctl --allow-path $D --table $D/cow.conf >$D/log 2>&1 &
SRV=$!
for i in $(seq 100); do [ -S $D/sock ] && break; sleep 0.05; done; sleep 0.3
fio --name=load --ioengine=nbd --uri="nbd+unix:///d?socket=$D/sock" --rw=randwrite --bs=4k --iodepth=32 --size=1G --time_based=1 --runtime=${RT:-25} --norandommap=1 --randrepeat=0 --output-format=json --output=$D/load.json >/dev/null &
FIO=$!
sleep 2
for s in $(seq ${N:-20}); do
  $STRATA snapshot d --control $D/ctl --json | jq -r '.[0] | "\(.pause_us) \(.total_us) \(.seal_us) \(.flush_rounds)"' >> $D/p
  sleep 0.5
done
wait $FIO
cat $D/p | tr "\n" ";"; echo; sort -n $D/p | awk '{a[NR]=$1; t+=$2} END {printf "held us: min %d p50 %d p90 %d max %d (n=%d); whole op avg %d us\n", a[1], a[int(NR/2)+1], a[int(NR*0.9)], a[NR], NR, t/NR}'
jq -r '.jobs[0].write | "load \(.iops|floor) IOPS p99 \(.clat_ns.percentile["99.000000"]/1000|floor) us max \(.clat_ns.max/1000|floor) us"' $D/load.json
