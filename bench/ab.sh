#!/usr/bin/env bash
# bench/ab.sh OLD_STRATA NEW_STRATA [--pairs N] [--mode memory|cow|file]
# Two builds of strata side by side: 4k randwrite QD32 for 10 s through fio's
# nbd engine against one device, N pairs run alternately (the order swapped
# every pair, so neither build always runs second), one server per run.
# Prints IOPS, p99 and the server's CPU microseconds per I/O for each run,
# then the medians. For "no slower than before" checks of refactors.
#   memory: a memory device (the dirty-map gate, metrics, no disk)
#   cow:    a cow stack, an empty top layer over a sparse 1 GiB base (fresh chunks)
#   file:   a 1 GiB file
set -euo pipefail
OLD=$1 NEW=$2
shift 2
PAIRS=4 MODE=memory
while [ $# -gt 0 ]; do
  case $1 in
    --pairs) PAIRS=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    *) echo "usage: $0 OLD NEW [--pairs N] [--mode memory|cow|file]" >&2; exit 2 ;;
  esac
done
for t in fio jq; do command -v $t >/dev/null || { echo "ab.sh: $t missing" >&2; exit 1; }; done

one() {  # one STRATA: prints "iops p99us cpu_us_per_io"
  local S=$1 D SRV BYTES=$((1 << 30))
  D=$(mktemp -d /tmp/strata-ab.XXXXXX)
  local SOCK=$D/sock URI="nbd+unix:///d?socket=$D/sock"
  case $MODE in
    memory) printf '[d]\n0 %d memory\n' $((BYTES / 512)) >"$D/t.conf" ;;
    file) dd if=/dev/zero of="$D/disk.raw" bs=1M count=1024 conv=fsync status=none
          printf '[d]\n0 %d file %s 0\n' $((BYTES / 512)) "$D/disk.raw" >"$D/t.conf" ;;
    cow) truncate -s $BYTES "$D/base.raw"
         "$S" layer create "$D/top.layer" --size $BYTES >/dev/null
         printf '[base]\n0 %d file %s 0 ro\n[d]\n0 %d cow %s base=base\n' $((BYTES / 512)) "$D/base.raw" \
           $((BYTES / 512)) "$D/top.layer" >"$D/t.conf" ;;
  esac
  "$S" serve --state-dir "$D/state" --unix "$SOCK" --control "$D/ctl" --table "$D/t.conf" >>"$D/log" 2>&1 &
  SRV=$!
  for _ in $(seq 200); do "$S" list --control "$D/ctl" >/dev/null 2>&1 && break; sleep 0.05; done
  sync
  local clk c0 c1
  clk=$(getconf CLK_TCK); c0=$(awk '{print $14 + $15}' /proc/$SRV/stat)
  fio --name=w --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 \
    --size=1G --time_based=1 --runtime=10 --ramp_time=1 --norandommap=1 --randrepeat=1 \
    --output-format=json --output="$D/fio.json" >/dev/null 2>"$D/fio.err" || { cat "$D/fio.err" "$D/log" >&2; exit 1; }
  c1=$(awk '{print $14 + $15}' /proc/$SRV/stat)
  kill "$SRV"; wait "$SRV" 2>/dev/null || true
  jq -r --argjson c "$((c1 - c0))" --argjson clk "$clk" '.jobs[0].write |
    "\(.iops | floor) \(.clat_ns.percentile["99.000000"] / 1000 | floor) \($c / $clk / .total_ios * 1e6 * 100 | floor / 100)"' "$D/fio.json"
  rm -rf "$D"
}

echo "# $MODE, 4k randwrite QD32, $PAIRS pairs; load $(cut -d' ' -f1-3 /proc/loadavg); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs"
declare -a old new
for i in $(seq "$PAIRS"); do
  order=(old new); [ $((i % 2)) = 0 ] && order=(new old)
  for w in "${order[@]}"; do
    if [ $w = old ]; then r=$(one "$OLD"); old+=("$r"); else r=$(one "$NEW"); new+=("$r"); fi
    echo "$w iops=$(echo $r | cut -d' ' -f1) p99us=$(echo $r | cut -d' ' -f2) cpu_us_per_io=$(echo $r | cut -d' ' -f3)"
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for w in old new; do
  declare -n rs=$w
  printf '%s median: iops=%s p99us=%s cpu_us_per_io=%s\n' $w \
    "$(printf '%s\n' "${rs[@]}" | cut -d' ' -f1 | median)" "$(printf '%s\n' "${rs[@]}" | cut -d' ' -f2 | median)" \
    "$(printf '%s\n' "${rs[@]}" | cut -d' ' -f3 | median)"
done
