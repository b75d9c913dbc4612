#!/usr/bin/env bash
# bench/move.sh: how long writes are held when a live disk moves to another host.
#
#   bench/move.sh [--runs 5] [--size 1G]
#
# Host A (a strata) serves a file device `vm` (in the page cache); host B (another strata, NBD over TCP on
# loopback) serves an empty file of the same size. fio (--ioengine=nbd, 4k randwrite QD32, one job) writes to A
# without pause. `strata dirty start vm move --full`, one `strata sync` (up to 8 passes: the first copies the whole
# disk) while fio writes, then `strata sync --move`: the last pass with writes held, after which A fails every request
# with ESHUTDOWN (fio counts errors from then on). Per run: the writes-held time of the last pass (held_us), its
# rounds and bytes, and the whole move's time. RUNS moves, each on fresh servers.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
RUNS=5
SIZE=1G
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for t in fio jq; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
W=$(mktemp -d /tmp/strata-bench-move.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
bytes=$(numfmt --from=iec "$SIZE")
PORT=$(shuf -i 20000-45000 -n 1)
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) vCPU; strata $("$STRATA" --version 2>/dev/null | head -1)"
echo "# bench/move.sh --runs $RUNS --size $SIZE"
echo "| run | writes held ms | of it: replica flush ms | MiB copied while held | --move sync MiB | --move sync passes | move total s | fio IOPS before the move |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
held_all=()
for run in $(seq 1 "$RUNS"); do
  rm -rf "$W/r"; mkdir -p "$W/r"; R=$W/r
  head -c "$bytes" /dev/urandom >"$R/a.img"; truncate -s "$bytes" "$R/b.img"
  printf '[vm]\n0 %d file %s 0\n' $((bytes / 512)) "$R/a.img" >"$R/a.conf"
  printf '[vm]\n0 %d file %s 0\n' $((bytes / 512)) "$R/b.img" >"$R/b.conf"
  "$STRATA" serve --table "$R/a.conf" --state-dir "$R/a-state" --unix "$R/a.sock" --control "$R/a.ctl" >"$R/a.log" 2>&1 &
  PIDS+=($!); A=$!
  "$STRATA" serve --table "$R/b.conf" --state-dir "$R/b-state" --tcp 127.0.0.1:$PORT --control "$R/b.ctl" >"$R/b.log" 2>&1 &
  PIDS+=($!); B=$!
  for _ in $(seq 200); do [ -S "$R/a.ctl" ] && [ -S "$R/b.ctl" ] && break; sleep 0.05; done
  "$STRATA" dirty start vm move --full --control "$R/a.ctl" >/dev/null
  fio --name=w --ioengine=nbd --uri="nbd+unix:///vm?socket=$R/a.sock" --rw=randwrite --bs=4k --iodepth=32 \
    --time_based --runtime=600 --continue_on_error=all --output-format=json --output="$R/fio.json" \
    --write_iops_log="$R/iops" --log_avg_msec=1000 2>"$R/fio.err" &
  FIO=$!
  sleep 3
  t0=$(date +%s.%N)
  "$STRATA" sync vm --map move --to "nbd://127.0.0.1:$PORT/vm" --max-rounds 8 --control "$R/a.ctl" >/dev/null || true
  out=$("$STRATA" sync vm --map move --to "nbd://127.0.0.1:$PORT/vm" --move --json --control "$R/a.ctl")
  t1=$(date +%s.%N)
  sleep 1
  kill -INT $FIO 2>/dev/null || true
  wait $FIO 2>/dev/null || true
  iops=$(awk -F, 'NR>1 && NR<=4 {s+=$2; n++} END {if (n) printf "%d", s/n}' "$R"/iops_iops.*.log 2>/dev/null || echo "?")
  held=$(jq .held_us <<<"$out")
  held_all+=("$held")
  printf '| %d | %.1f | %.1f | %.2f | %.1f | %d | %.2f | %s |\n' "$run" "$(echo "$held / 1000" | bc -l)" \
    "$(echo "$(jq .held_flush_us <<<"$out") / 1000" | bc -l)" "$(echo "$(jq .held_copied_bytes <<<"$out") / 1048576" | bc -l)" \
    "$(echo "$(jq .copied_bytes <<<"$out") / 1048576" | bc -l)" "$(jq .rounds <<<"$out")" \
    "$(echo "$t1 - $t0" | bc -l)" "$iops"
  kill -9 $A $B 2>/dev/null || true; wait $A $B 2>/dev/null || true
  PIDS=()
done
printf '%s\n' "${held_all[@]}" | sort -n | awk '{v[NR]=$1} END {printf "writes held: median %.1f ms, max %.1f ms over %d moves\n", v[int((NR+1)/2)]/1000, v[NR]/1000, NR}'
