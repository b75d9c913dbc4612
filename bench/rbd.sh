#!/bin/bash
# bench/rbd.sh: the rbd target against qemu-nbd's rbd: driver and fio's own rbd engine (librbd
# without NBD: the ceiling), on one throwaway one-node memstore cluster (tests/integration/ceph-lib.sh).
# Jobs: 4k randread QD32, 4k randwrite QD32, 1M sequential write QD4 and read QD4, RUNTIME s each
# (default 10) on a 1 GiB image written in full first. Prints one line per (server, job): IOPS,
# MiB/s, server CPU per I/O (strata or qemu-nbd, librbd's threads included; for fio's rbd engine
# fio's own CPU) and the OSD's CPU per I/O.
# ROUNDS rounds (default 3), each running the three in a rotated order (round 1: strata, qemu-nbd,
# fio-rbd; round 2 starts with qemu-nbd; round 3 with fio-rbd): on this VM the OSD's memory costs
# more while it is cold (a page the host does not back yet: bench/RESULTS.md 5 and 10), so whoever
# runs first paid more; the summary gives each job's median and strata's ratio to fio-rbd's.
#   STRATA=build-rbd/strata bash bench/rbd.sh        BENCH_SMOKE=1: 2 s per job, one round
STRATA_SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$STRATA_SRC/tests/integration/functions.sh"
. "$STRATA_SRC/tests/integration/ceph-lib.sh"
requires fio qemu-nbd jq
fio --enghelp 2>/dev/null | grep -qw rbd || die "this fio has no rbd engine"
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
[ "${BENCH_SMOKE:-0}" = 1 ] && { RUNTIME=2; ROUNDS=1; }
SIZE=$((1 << 30))
ceph_start
rbd_create bench 1G
rbd_table "$WORK/t.conf" rbd/bench $SIZE
start_strata --table "$WORK/t.conf" --export d --queues 1
fio --name=fill --ioengine=nbd --uri="$(uri d)" --rw=write --bs=1M --iodepth=8 --size=$SIZE >/dev/null
stop_strata

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
JOBS=("randread 4k 32" "randwrite 4k 32" "write 1M 4" "read 1M 4")
[ -n "${RBD_JOBS:-}" ] && IFS=, read -r -a JOBS <<<"$RBD_JOBS" # e.g. RBD_JOBS="randwrite 4k 32,read 1M 4"
run() { # NAME PID-OR-EMPTY FIO-ARGS...
  local name=$1 pid=$2 j rw bs qd out c0 c1 o0 o1 iops bw cpu_us osd_us
  shift 2
  for j in "${JOBS[@]}"; do
    read -r rw bs qd <<<"$j"
    c0=0; [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
    o0=$(cpu_ticks "$CEPH_OSD_PID")
    out=$(TIMEFORMAT='%U %S'; { time fio --name=b --rw="$rw" --bs="$bs" --iodepth="$qd" --size=$SIZE --time_based --runtime="$RUNTIME" \
      --ramp_time=1 --output-format=json --output="$WORK/fio.json" "$@" >/dev/null 2>&1; } 2>"$WORK/fio.time") || die "fio $name $rw failed: $out"
    out=$(sed -n '/^{/,$p' "$WORK/fio.json")
    c1=0; [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
    o1=$(cpu_ticks "$CEPH_OSD_PID")
    local kind=read; [[ $rw == *write ]] && kind=write
    iops=$(jq ".jobs[0].$kind.iops | floor" <<<"$out")
    bw=$(jq ".jobs[0].$kind.bw_bytes / 1048576 | floor" <<<"$out")
    local ios=$(jq ".jobs[0].$kind.total_ios" <<<"$out")
    if [ -z "$pid" ]; then # the fio process's CPU (librbd's threads included), ramp and set-up too
      c1=$(awk -v hz="$HZ" '{ printf "%d", ($1 + $2) * hz }' "$WORK/fio.time")
    fi
    cpu_us=$(awk -v c=$((${c1%.*} - c0)) -v n="$ios" -v hz="$HZ" 'BEGIN { printf "%.0f", n ? c / hz * 1e6 / n : 0 }')
    osd_us=$(awk -v c=$((o1 - o0)) -v n="$ios" -v hz="$HZ" 'BEGIN { printf "%.0f", n ? c / hz * 1e6 / n : 0 }')
    printf '%-10s %-9s %-3s QD%-3s %8s IOPS %6s MiB/s  client CPU %4s us/IO  OSD CPU %4s us/IO\n' \
      "$name" "$rw" "$bs" "$qd" "$iops" "$bw" "$cpu_us" "$osd_us"
    printf '%s\t%s %s QD%s\t%s\t%s\t%s\n' "$name" "$rw" "$bs" "$qd" "$iops" "$cpu_us" "$osd_us" >>"$WORK/rows"
  done
}

run_strata() {
  start_strata --table "$WORK/t.conf" --export d --queues 1
  run strata "$STRATA_PID" --ioengine=nbd --uri="$(uri d)"
  stop_strata
}
run_qemu() {
  qemu-nbd --persistent --shared=4 -f raw -k "$WORK/qemu.sock" "rbd:rbd/bench:conf=$CEPH_CONF" >"$WORK/qemu.log" 2>&1 &
  QPID=$!
  for i in $(seq 1 100); do [ -S "$WORK/qemu.sock" ] && break; sleep 0.1; done
  run qemu-nbd "$QPID" --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/qemu.sock"
  kill $QPID; wait $QPID 2>/dev/null || true
}
run_fio() { run fio-rbd "" --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench; }
: >"$WORK/rows"
ORDER=(run_strata run_qemu run_fio)
for r in $(seq 1 "$ROUNDS"); do
  echo "-- round $r"
  for k in 0 1 2; do "${ORDER[$(( (k + r - 1) % 3 ))]}"; done
done
echo
echo "medians over $ROUNDS round(s): IOPS, client CPU us/IO, OSD CPU us/IO; strata / fio-rbd"
python3 - "$WORK/rows" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
jobs = list(dict.fromkeys(r[1] for r in rows))
med = lambda s, j, i: st.median(float(r[i]) for r in rows if r[0] == s and r[1] == j)
for j in jobs:
    line = [f"{j:16}"]
    for s in ("strata", "qemu-nbd", "fio-rbd"):
        line.append(f"{s} {med(s, j, 2):7.0f} {med(s, j, 3):5.0f} {med(s, j, 4):5.0f}")
    line.append(f"strata/fio-rbd IOPS {med('strata', j, 2) / med('fio-rbd', j, 2):.2f}, CPU {med('strata', j, 3) / med('fio-rbd', j, 3):.2f}")
    print(" | ".join(line))
PY
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) vCPU; ceph $(ceph --version | cut -d' ' -f3)"
echo PASS
