#!/usr/bin/env bash
# bench/cow-chunk.sh: what the layer chunk size costs (the default, 4 KiB, is
# chosen from this).
#
#   bench/cow-chunk.sh [--sizes "4K 16K 64K"] [--size 1G] [--runtime S]
#
# For each chunk size: a cow stack of a random-data base (page-cached) and an
# empty top of that chunk size, served by strata; fio's nbd engine runs
#   randwrite-4k  4k random writes QD32 to fresh chunks (256 MiB, each block
#                 once): a chunk larger than 4 KiB is copied up first
#   randread-4k   4k random reads QD32 afterwards (the top holds ~25%)
#   seqwrite-1m   1M sequential writes QD8 to fresh chunks (512 MiB), on a
#                 new empty top
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
SIZES="4K 16K 64K"
SIZE=1G
RUNTIME=5
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) SIZES=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --runtime) RUNTIME=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for t in fio jq numfmt; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
BYTES=$(numfmt --from=iec "$SIZE")
D=$(mktemp -d /tmp/strata-cowchunk.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
SOCK=$D/sock
head -c "$BYTES" /dev/urandom >"$D/base.raw"
cat >"$D/t.conf" <<CONF
[base]
0 $((BYTES / 512)) file $D/base.raw 0 ro
[d]
0 $((BYTES / 512)) cow $D/top.layer base=base
CONF

start() {  # CHUNK: a new empty top, then the server
  rm -f "$D/top.layer" "$SOCK"
  "$STRATA" layer create "$D/top.layer" --size "$BYTES" --chunk-size "$1" >/dev/null
  sync
  cat "$D/base.raw" >/dev/null
  "$STRATA" serve --state-dir "$D/state" --unix "$SOCK" --table "$D/t.conf" >"$D/server.log" 2>&1 &
  SRV=$!
  for _ in $(seq 200); do [ -S "$SOCK" ] && return; sleep 0.05; done
  echo "server did not start: $(cat "$D/server.log")" >&2
  exit 1
}
stop() { kill "$SRV"; wait "$SRV" || true; SRV=; }
job() {  # CHUNK NAME RW FIO-ARGS...
  local ch=$1 name=$2 rw=$3
  shift 3
  fio --name=job --ioengine=nbd --uri="nbd+unix:///d?socket=$SOCK" --size="$BYTES" --randrepeat=0 \
    --output-format=json --output="$D/fio.json" "$@" >/dev/null 2>"$D/fio.err" ||
    { echo "fio $name failed: $(cat "$D/fio.err")" >&2; exit 1; }
  jq -r --arg ch "$ch" --arg n "$name" --arg rw "$rw" '.jobs[0][$rw] as $o |
    "| \($ch) | \($n) | \($o.iops | floor) | \($o.bw / 1024 | floor) | \($o.clat_ns.percentile["99.000000"] / 1000 | floor) |"' \
    "$D/fio.json"
}

echo "strata layer chunk sizes: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r), $SIZE base"
echo
echo "| chunk | job | IOPS | MiB/s | p99 µs |"
echo "|---|---|---:|---:|---:|"
for ch in $SIZES; do
  start "$ch"
  job "$ch" randwrite-4k write --rw=randwrite --bs=4k --iodepth=32 --io_size=256M
  job "$ch" randread-4k read --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$RUNTIME" --norandommap
  stop
  start "$ch"
  job "$ch" seqwrite-1m write --rw=write --bs=1M --iodepth=8 --io_size=512M
  stop
done
