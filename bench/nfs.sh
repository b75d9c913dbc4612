#!/usr/bin/env bash
# bench/nfs.sh: strata's nfs target against qemu-nbd's nfs:// driver (libnfs),
# both on the same nfs-ganesha export and file, in one run of the shared NFS
# peer benchmark (../shared/bench/nfs-peers.sh: its own rpcbind + ganesha in a
# private network namespace), then ratios to qemu-nbd (bench/summarize.py).
#
#   bench/nfs.sh [--runtime S] [--out DIR]
#
# Jobs: the core benchmark's fio jobs (4k random read/write at QD32, 1M
# sequential read/write at QD8) and the exact flush job (one FLUSH per 32
# writes). strata keeps its stronger integrity throughout: unstable writes are
# retained until a COMMIT with a matching verifier, FLUSH is COMMIT.
# The table's aux column holds ganesha's CPU seconds over each job.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
NFS_PEERS_SH=${NFS_PEERS_SH:-$ROOT/../shared/bench/nfs-peers.sh}
STRATA=${STRATA:-$ROOT/build/strata}
RUNTIME=8
OUT=$ROOT/var/bench-nfs-$(date +%Y%m%d-%H%M%S)
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$NFS_PEERS_SH" ] || { echo "missing $NFS_PEERS_SH (../shared beside the repo)" >&2; exit 1; }
[ -x "$STRATA" ] || { echo "build strata first (make build)" >&2; exit 1; }
mkdir -p "$OUT"
JOBS=randread-4k-qd32,randwrite-4k-qd32,seqread-1m-qd8,seqwrite-1m-qd8,randwrite-4k-qd32-flush32-exact
export STRATA
bash "$NFS_PEERS_SH" --jobs "$JOBS" --runtime "$RUNTIME" --out "$OUT/raw" \
  --extra 'strata-nfs=echo "0 $((SIZE / 512)) nfs $NFS_URL 0" >"$SCRATCH/t.conf" && exec "$STRATA" serve --state-dir "$SCRATCH/state" --table "$SCRATCH/t.conf" --unix "$SOCK" --control "$SCRATCH/control.sock"' \
  >"$OUT/table.md" 2>"$OUT/peers.log"
python3 "$HERE/summarize.py" --runtime "$RUNTIME" --reference qemu-nbd-nfs "$OUT/table.md" >"$OUT/summary.md"
cat "$OUT/table.md"
echo
cat "$OUT/summary.md"
echo "raw rows: $OUT/table.md; log: $OUT/peers.log" >&2
