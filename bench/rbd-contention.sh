#!/bin/bash
# bench/rbd-contention.sh: what an NBD hop beside it costs fio's own rbd engine on this machine.
# bench/rbd.sh compares strata (fio's nbd client -> strata -> librbd -> the OSD) with fio's rbd engine
# (fio + librbd -> the OSD). On a small machine the OSD shares the CPUs with both. This script runs
# fio's rbd engine alone, then with an NBD hop's worth of traffic beside it: a second fio, nbd
# engine, through strata's `zero` target (only the protocol and the socket copy) at a fixed rate
# (RATES_WRITE / RATES_READ, by default about the IOPS strata reaches over rbd). If fio's rbd engine
# itself drops to strata's ratio with that traffic beside it, the gap is the machine's, not the rbd
# target's. One line per run: fio rbd IOPS, its CPU per I/O, the OSD's, strata's (zero target).
#   STRATA=build-r/strata bash bench/rbd-contention.sh      ROUNDS=2 RUNTIME=8 by default
STRATA_SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$STRATA_SRC/tests/integration/functions.sh"
. "$STRATA_SRC/tests/integration/ceph-lib.sh"
requires fio jq
fio --enghelp 2>/dev/null | grep -qw rbd || die "this fio has no rbd engine"
RUNTIME=${RUNTIME:-8}
ROUNDS=${ROUNDS:-2}
RATES_WRITE=${RATES_WRITE:-"0 4000 5000"}
RATES_READ=${RATES_READ:-"0 9000 12000"}
[ "${BENCH_SMOKE:-0}" = 1 ] && { RUNTIME=2; ROUNDS=1; RATES_WRITE="0 4000"; RATES_READ="0 9000"; }
SIZE=$((1 << 30))
ceph_start
rbd_create bench 1G
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench --rw=write --bs=1M --iodepth=8 \
  --size=$SIZE >/dev/null || die "fill failed"
echo "0 $((SIZE / 512)) zero" >"$WORK/z.conf"
start_strata --table "$WORK/z.conf" --export z --queues 1
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
one() { # RW RATE (0: fio rbd alone)
  local rw=$1 rate=$2 o0 o1 c0 c1 hp= kind=read
  [[ $rw == *write ]] && kind=write
  o0=$(cpu_ticks "$CEPH_OSD_PID"); c0=$(cpu_ticks "$STRATA_PID")
  if [ "$rate" != 0 ]; then
    fio --name=hop --ioengine=nbd --uri="$(uri z)" --rw="$rw" --bs=4k --iodepth=32 --size=$SIZE --time_based \
      --runtime=$((RUNTIME + 2)) --rate_iops="$rate" --output-format=json --output="$WORK/h.json" >/dev/null 2>&1 &
    hp=$!
  fi
  TIMEFORMAT='%U %S'
  { time fio --name=b --rw="$rw" --bs=4k --iodepth=32 --size=$SIZE --time_based --runtime="$RUNTIME" --ramp_time=1 \
      --output-format=json --output="$WORK/f.json" --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
      >/dev/null 2>&1; } 2>"$WORK/f.time" || die "fio rbd $rw failed"
  o1=$(cpu_ticks "$CEPH_OSD_PID"); c1=$(cpu_ticks "$STRATA_PID")
  [ -n "$hp" ] && { wait "$hp" || die "the hop's fio failed"; }
  local f iops ios hop=0
  f=$(sed -n '/^{/,$p' "$WORK/f.json")
  iops=$(jq ".jobs[0].$kind.iops | floor" <<<"$f"); ios=$(jq ".jobs[0].$kind.total_ios" <<<"$f")
  [ -n "$hp" ] && hop=$(sed -n '/^{/,$p' "$WORK/h.json" | jq ".jobs[0].$kind.iops | floor")
  awk -v rw="$rw" -v rate="$rate" -v hop="$hop" -v iops="$iops" -v n="$ios" -v hz="$HZ" -v o=$((o1 - o0)) \
    -v s=$((c1 - c0)) -v u="$(cat "$WORK/f.time")" 'BEGIN { split(u, t, " ");
      printf "fio-rbd 4k %-9s QD32  hop %5d IOPS (asked %5d)  fio rbd %6d IOPS  CPU us/IO: fio rbd %4.0f  OSD %4.0f  strata(zero) %4.1f\n",
        rw, hop, rate, iops, (t[1] + t[2]) * 1e6 / n, o / hz * 1e6 / n, s / hz * 1e6 / n }'
}
for r in $(seq 1 "$ROUNDS"); do
  echo "-- round $r"
  for rate in $RATES_WRITE; do one randwrite "$rate"; done
  for rate in $RATES_READ; do one randread "$rate"; done
done
stop_strata
