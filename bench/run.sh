#!/usr/bin/env bash
# bench/run.sh: strata's file export against nbdkit's file plugin and qemu-nbd,
# in one run of the shared peer benchmark (../shared/bench/peers.sh), then a
# table of ratios to nbdkit (bench/summarize.py).
#
#   bench/run.sh [--runtime S] [--only PEERS] [--out DIR]
#
# Each peer serves its own fresh copy of one 1 GiB random-data file on a Unix
# socket; fio's nbd engine (and nbd-flushbench for the exact flush job) drive
# it one job at a time. Results: DIR/table.md (raw rows), DIR/summary.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS_SH=${PEERS_SH:-$ROOT/../shared/bench/peers.sh}
STRATA=${STRATA:-$ROOT/build/strata}
RUNTIME=8
ONLY=nbdkit-file,qemu-nbd-raw
OUT=$ROOT/var/bench-$(date +%Y%m%d-%H%M%S)
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$PEERS_SH" ] || [ -f "$PEERS_SH" ] || { echo "missing $PEERS_SH (../shared beside the repo)" >&2; exit 1; }
[ -x "$STRATA" ] || { echo "build strata first (make build)" >&2; exit 1; }
mkdir -p "$OUT"
JOBS=randread-4k-qd32,randwrite-4k-qd32,seqread-1m-qd8,seqwrite-1m-qd8,randwrite-4k-qd32-flush32-exact
# Exported for the --extra command, which peers.sh runs with bash -c.
export STRATA
bash "$PEERS_SH" --only "$ONLY" --jobs "$JOBS" --runtime "$RUNTIME" --noise-runs 1 --out "$OUT/raw" \
  --extra 'strata=exec "$STRATA" serve --state-dir "$SCRATCH/state" --file "$FILE" --unix "$SOCK" --control "$SCRATCH/control.sock"' \
  >"$OUT/table.md" 2>"$OUT/peers.log"
python3 "$HERE/summarize.py" --runtime "$RUNTIME" "$OUT/table.md" >"$OUT/summary.md"
cat "$OUT/summary.md"
echo "raw rows: $OUT/table.md; log: $OUT/peers.log" >&2
