#!/usr/bin/env bash
# bench/cow-depth.sh: does a read cost more through a deep cow stack?
#
#   bench/cow-depth.sh [--runtime S] [--size 256M] [--depth 16]
#
# Two stacks over the same random base, holding the same data:
#   deep     base + DEPTH-1 read-only layers + an empty top; layer i holds a
#            random ~6% of the 4 KiB chunks (seed i), written while it was
#            the top; later layers win where chunks repeat
#   shallow  base + 1 read-only layer + an empty top; that one layer got the
#            same writes (seeds 1..DEPTH-1, in the same order)
# Both are served by strata (`cow top.layer base=base`); fio's nbd engine runs
# 4k randread at QD32 and QD1 on each. The issue's target: the deep stack
# reads at >= 0.9x the shallow one (lookup cost must not grow with depth).
# Server CPU per I/O (utime+stime from /proc) is reported too.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
PYTHON=/usr/bin/python3
RUNTIME=8
SIZE=256M
DEPTH=16
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --depth) DEPTH=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for t in fio jq numfmt; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
[ -x "$STRATA" ] || { echo "build strata first (make build)" >&2; exit 1; }
BYTES=$(numfmt --from=iec "$SIZE")
D=$(mktemp -d /tmp/strata-cowdepth.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
SOCK=$D/sock
URI="nbd+unix:///d?socket=$SOCK"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

serve() { # LAYER: serve `cow LAYER base=base` as device d
  cat >"$D/t.conf" <<CONF
[base]
0 $((BYTES / 512)) file $D/base.raw 0 ro
[d]
0 $((BYTES / 512)) cow $1 base=base
CONF
  rm -f "$SOCK"
  "$STRATA" serve --state-dir "$D/state" --unix "$SOCK" --control "$D/ctl" --table "$D/t.conf" >>"$D/server.log" 2>&1 &
  SRV=$!
  for _ in $(seq 400); do
    [ -S "$SOCK" ] && $PYTHON -c "import nbd; h = nbd.NBD(); h.connect_uri('$URI')" 2>/dev/null && return 0
    kill -0 "$SRV" 2>/dev/null || { echo "server died: $(tail -5 "$D/server.log")" >&2; exit 1; }
    sleep 0.05
  done
  echo "server did not start" >&2; exit 1
}
stop() { kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=; }

populate() { $PYTHON "$HERE/populate.py" "$URI" "$BYTES" "$1" 0.06; }

echo "strata cow depth benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r), size $SIZE, depth $DEPTH"
head -c "$BYTES" /dev/urandom >"$D/base.raw"

# deep: l1 .. l(DEPTH-1), then an empty top
"$STRATA" layer create "$D/l1.layer" --size "$BYTES" >/dev/null
prev=$D/l1.layer
for i in $(seq 1 $((DEPTH - 1))); do
  if [ "$i" -gt 1 ]; then "$STRATA" layer create "$D/l$i.layer" --parent "$prev" >/dev/null; prev=$D/l$i.layer; fi
  serve "$prev"; populate "$i"; stop
done
"$STRATA" layer create "$D/deep-top.layer" --parent "$prev" >/dev/null
# shallow: one layer with the same writes, then an empty top
"$STRATA" layer create "$D/s1.layer" --size "$BYTES" >/dev/null
serve "$D/s1.layer"
for i in $(seq 1 $((DEPTH - 1))); do populate "$i"; done
stop
"$STRATA" layer create "$D/shallow-top.layer" --parent "$D/s1.layer" >/dev/null

echo
echo "| stack | layers over the base | job | IOPS | clat p99 µs | srv CPU s/M I/O |"
echo "|---|---:|---|---:|---:|---:|"
declare -A IOPS CPUIO
for stack in shallow deep; do
  serve "$D/$stack-top.layer"
  n=$([ $stack = deep ] && echo "$DEPTH" || echo 2)
  for qd in 32 1; do
    c0=$(cpu "$SRV")
    fio --name=job --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=$qd --numjobs=1 --size="$BYTES" \
      --time_based=1 --runtime="$RUNTIME" --ramp_time=1 --norandommap=1 --randrepeat=1 \
      --output-format=json --output="$D/fio.json" >/dev/null 2>"$D/fio.err" || { cat "$D/fio.err" >&2; exit 1; }
    c1=$(cpu "$SRV")
    iops=$(jq '.jobs[0].read.iops' "$D/fio.json")
    p99=$(jq '.jobs[0].read.clat_ns.percentile["99.000000"] / 1000' "$D/fio.json")
    cpuio=$(awk -v c=$((c1 - c0)) -v t="$(getconf CLK_TCK)" -v i="$iops" -v r="$RUNTIME" 'BEGIN{printf "%.2f", c / t / (i * (r + 1)) * 1e6}')
    IOPS[$stack-$qd]=$iops; CPUIO[$stack-$qd]=$cpuio
    printf '| %s | %s | randread-4k-qd%s | %.0f | %.0f | %s |\n' $stack "$n" $qd "$iops" "$p99" "$cpuio"
  done
  stop
done
echo
for qd in 32 1; do
  awk -v a="${IOPS[deep-$qd]}" -v b="${IOPS[shallow-$qd]}" -v ca="${CPUIO[deep-$qd]}" -v cb="${CPUIO[shallow-$qd]}" -v q=$qd \
    'BEGIN{printf "QD%s: deep/shallow IOPS %.2fx, CPU per I/O %.2fx\n", q, a / b, ca / cb}'
done
