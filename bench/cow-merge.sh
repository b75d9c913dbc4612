#!/bin/bash
# Merge throughput of a cow stack: the top (4 KiB chunks written at random by
# fio, each once: 256 MiB of 1 GiB) merged into its parent (random data in ~30%
# of its chunks), with no load and under 4k randwrite QD32 (fio's nbd engine);
# MiB/s of chunk data copied down (chunks_copied * 4 KiB / the merge's time).
# The load runs 10 s, the merge starting 1 s in (its figures are the 10 s).
# After the merge with no load, a flatten of the device into a raw file
# (MiB/s of the 1 GiB device, to the end of its fdatasync).
#
#   STRATA=build/strata bash bench/cow-merge.sh [--runs N]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STRATA=${STRATA:-$HERE/../build/strata}
PYTHON=/usr/bin/python3   # Debian's python3 has the libnbd bindings
RUNS=1
while [ $# -gt 0 ]; do
  case $1 in --runs) RUNS=$2; shift 2 ;; *) echo "usage: $0 [--runs N]" >&2; exit 2 ;; esac
done
BYTES=$((1 << 30))
D=$(mktemp -d /var/tmp/strata-merge.XXXXXX)
SOCK=$D/nbd.sock URI="nbd+unix:///d?socket=$D/nbd.sock"
SRV=
cleanup() { [ -z "$SRV" ] || kill "$SRV" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP_LOG:-}" ] && cp "$D/server.log" "$KEEP_LOG"; rm -rf "$D"; }
trap cleanup EXIT
start() {
  rm -f "$SOCK"
  "$STRATA" serve --state-dir "$D/state" --allow-path "$D" --unix "$SOCK" --control "$D/ctl" --table "$D/t.conf" >>"$D/server.log" 2>&1 &
  SRV=$!
  for _ in $(seq 200); do [ -S "$SOCK" ] && [ -S "$D/ctl" ] && return; sleep 0.05; done
  echo "server did not start: $(cat "$D/server.log")" >&2; exit 1
}
stop() { kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=; }
fio_write() { # ARGS...: 4k random writes through the export
  fio --name=w --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --size="$BYTES" \
    --randrepeat=0 "$@" --output-format=json
}

echo "strata merge benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r)"
echo "uptime before: $(uptime)"
head -c "$BYTES" /dev/urandom >"$D/base.raw"
cat >"$D/t.conf" <<CONF
[base]
0 $((BYTES / 512)) file $D/base.raw 0 ro
[d]
0 $((BYTES / 512)) cow $D/top.layer base=base
CONF
echo "| run | load | chunks copied | merge ms | begin / copy / end ms | MiB/s | the load (10 s, the merge in it) |"
echo "|---|---|---:|---:|---|---:|---|"
for run in $(seq "$RUNS"); do
  for load in none randwrite; do
    rm -f "$D"/*.layer
    "$STRATA" layer create "$D/l1.layer" --size "$BYTES" >/dev/null
    # The parent: random data in ~30% of its chunks.
    mv "$D/t.conf" "$D/t.top" && sed "s|top.layer|l1.layer|" "$D/t.top" >"$D/t.conf"
    start; $PYTHON "$HERE/populate.py" "$URI" "$BYTES" "$run" 0.3; stop
    mv "$D/t.top" "$D/t.conf"
    "$STRATA" layer create "$D/top.layer" --parent "$D/l1.layer" >/dev/null
    start
    fio_write --io_size=256M >/dev/null
    sync
    FIO=
    if [ $load = randwrite ]; then
      fio --name=w --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --size="$BYTES" \
        --randrepeat=0 --time_based=1 --runtime=10 --norandommap=1 --output-format=json --output="$D/load.json" \
        >/dev/null 2>"$D/load.err" &
      FIO=$!
      sleep 1
    fi
    m=$("$STRATA" merge d --control "$D/ctl" --json 2>"$D/merge.err") || { echo "merge failed: $(cat "$D/merge.err")" >&2; exit 1; }
    loadsum=-
    if [ -n "$FIO" ]; then
      wait "$FIO" || { echo "fio failed during the merge: $(cat "$D/load.err")" >&2; exit 1; }
      loadsum=$(jq -r '.jobs[0] as $x | "\($x.write.iops | floor) IOPS, p99 \($x.write.clat_ns.percentile["99.000000"] / 1000 | floor) µs, errors \($x.error)"' "$D/load.json")
    fi
    # The server logs the merge's phases (begin, copy, flush and drop).
    phases=$(grep -o 'copied down; [0-9]* ms to begin, [0-9]* ms to copy, [0-9]* ms' "$D/server.log" | tail -1 |
             sed -E 's/.* ([0-9]+) ms to begin, ([0-9]+) ms to copy, ([0-9]+) ms/\1 \/ \2 \/ \3/')
    jq -r --arg run "$run" --arg load "$load" --arg ls "$loadsum" --arg ph "$phases" \
      '"| \($run) | \($load) | \(.chunks_copied) | \(.milliseconds) | \($ph) | \((.chunks_copied * 4096 / 1048576) / (.milliseconds / 1000) | floor) | \($ls) |"' <<<"$m"
    if [ $load = none ]; then
      # And a flatten of the merged stack (1 GiB), what it reads in the page cache (the merge dropped
      # the parent's, made the write layer): durable at the end.
      cat "$D"/*.layer "$D/base.raw" >/dev/null
      t0=$(date +%s%N)
      "$STRATA" flatten d --to "$D/flat.raw" --control "$D/ctl" >/dev/null 2>"$D/flat.err" ||
        { echo "flatten failed: $(cat "$D/flat.err")" >&2; exit 1; }
      t1=$(date +%s%N)
      rm -f "$D/flat.raw"
      awk -v run="$run" -v ns=$((t1 - t0)) -v n="$BYTES" \
        'BEGIN { printf "| %s | flatten, no load | - | %.0f | - | %.0f | - |\n", run, ns / 1e6, n / 1048576 / (ns / 1e9) }'
    fi
    stop
  done
done
echo "uptime after: $(uptime)"
