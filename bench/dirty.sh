#!/usr/bin/env bash
# bench/dirty.sh: what dirty maps cost on the write path, and what strata sync
# costs against copying the same bytes by hand.
#
#   bench/dirty.sh [--runtime S] [--runs N] [--size-sync 4G]
#
# (a) fio --ioengine=nbd, 4k randwrite QD32, against `strata serve --file` on a
#     1 GiB preallocated file: with no map and with one map (4 KiB blocks,
#     started before the job), N runs each, alternating; IOPS and overhead.
# (b) a sparse device (default 4 GiB) with 0.5%, 1% and 2% of its 4 KiB blocks
#     dirtied at random (libnbd, QD32): `strata sync` to a fresh file replica
#     (wall time of the CLI, and the server's own "milliseconds"), against a
#     raw copy of exactly the same extents (python pread/pwrite from the source
#     file to a fresh sparse file, then fdatasync) and against `cp` of one
#     contiguous file of the same size (+ sync). Source blocks are in the page
#     cache for all three.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
PYTHON=/usr/bin/python3   # Debian's python3 has the libnbd bindings
RUNTIME=8
RUNS=2
SYNC_SIZE=4G
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --size-sync) SYNC_SIZE=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for t in fio jq numfmt; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
[ -x "$STRATA" ] || { echo "build strata first (make build)" >&2; exit 1; }
D=$(mktemp -d /tmp/strata-dirtybench.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Busy jiffies of the whole host (all CPUs), to show CPU used by other processes.
host_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
serve() { # FILE: strata on $D/sock, control $D/ctl, maps in $D/state
  rm -f "$D/sock"
  "$STRATA" serve --unix "$D/sock" --control "$D/ctl" --state-dir "$D/state" --file "$1" --export d \
    >>"$D/strata.log" 2>&1 &
  SRV=$!
  for _ in $(seq 200); do "$STRATA" list --control "$D/ctl" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "strata did not start: $(cat "$D/strata.log")" >&2
  exit 1
}
stop() { kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=; }
ctl() { "$STRATA" "$@" --control "$D/ctl"; }
URI="nbd+unix:///d?socket=$D/sock"

echo "strata dirty-map benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)," \
  "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# ---------------------------------------------------------------- (a) fio
dd if=/dev/zero of="$D/disk.raw" bs=1M count=1024 conv=fsync status=none
serve "$D/disk.raw"
echo "## (a) 4k randwrite QD32, fio --ioengine=nbd, ${RUNTIME} s runs, 1 GiB file"
echo
echo "| run | maps | IOPS | MiB/s | lat mean µs | lat p99 µs | srv CPU µs/IO | other procs CPU s | dirty after |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
declare -A SUM=([none]=0 [one]=0)
for r in $(seq 1 "$RUNS"); do
  for mode in none one; do
    if [ $mode = one ]; then ctl dirty start d bench >/dev/null; fi
    sync
    c0=$(cpu "$SRV")
    h0=$(host_busy)
    fio --name=randwrite --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 \
      --size=1G --time_based=1 --runtime="$RUNTIME" --ramp_time=1 --norandommap=1 --randrepeat=1 \
      --output-format=json --output="$D/fio.json" >/dev/null 2>"$D/fio.err" ||
      { echo "fio failed: $(cat "$D/fio.err")" >&2; exit 1; }
    c1=$(cpu "$SRV")
    h1=$(host_busy)
    dirty=-
    if [ $mode = one ]; then
      dirty=$(ctl dirty status d --json | jq -r '.[0].dirty_bytes' | numfmt --to=iec-i --suffix=B)
      ctl dirty stop d bench
    fi
    # fio's own CPU: usr+sys % of its job time (runtime + ramp).
    row=$(jq -r --argjson c "$((c1 - c0))" --argjson h "$((h1 - h0))" --argjson clk "$CLK" --argjson rt "$RUNTIME" \
      '.jobs[0] as $j | $j.write as $w |
      [($w.iops | floor), ($w.bw_bytes / 1048576 * 10 | floor / 10), ($w.clat_ns.mean / 1000 | floor),
       ($w.clat_ns.percentile["99.000000"] / 1000 | floor),
       ($c / $clk / ($w.total_ios + 0.0001) * 1e6 * 100 | floor / 100),
       (($h - $c) / $clk - ($j.usr_cpu + $j.sys_cpu) / 100 * ($rt + 1) | . * 10 | floor / 10)] | @tsv' "$D/fio.json")
    IFS=$'\t' read -r iops mibs lat p99 cpuio other <<<"$row"
    SUM[$mode]=$((SUM[$mode] + iops))
    echo "| $r | $mode | $iops | $mibs | $lat | $p99 | $cpuio | $other | $dirty |"
  done
done
stop
echo
awk -v a="${SUM[none]}" -v b="${SUM[one]}" -v n="$RUNS" 'BEGIN {
  printf "Mean IOPS: no map %.0f, one map %.0f: overhead %.1f%% (positive = slower with the map)\n\n",
    a / n, b / n, (a - b) / a * 100 }'

# ---------------------------------------------------------------- (b) sync
SYNC_BYTES=$(numfmt --from=iec "$SYNC_SIZE")
rm -f "$D/disk.raw"
truncate -s "$SYNC_BYTES" "$D/src.raw"
rm -rf "$D/state"
serve "$D/src.raw"
ctl dirty start d m >/dev/null

dirty_blocks() { # PCT SEED: write 4 KiB of random data to PCT% of the blocks, chosen at random
  "$PYTHON" - "$URI" "$SYNC_BYTES" "$1" "$2" "$D/blocks" <<'PY'
import os, random, sys, nbd
uri, size, pct, seed, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
G = 4096
n = round(size // G * pct / 100)
blocks = sorted(random.Random(seed).sample(range(size // G), n))
h = nbd.NBD()
h.connect_uri(uri)
buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(G)))
pending = []
for b in blocks:
    while h.aio_in_flight() >= 32:
        h.poll(-1)
    pending.append(h.aio_pwrite(buf, b * G))
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in pending:
    h.aio_command_completed(c)
h.shutdown()
with open(out, "w") as f:
    f.write("\n".join(map(str, blocks)) + "\n")
PY
}

raw_copy_ms() { # the same extents (merged), source file to a fresh sparse file, then fdatasync
  rm -f "$D/raw.img"; truncate -s "$SYNC_BYTES" "$D/raw.img"
  sync
  "$PYTHON" - "$D/src.raw" "$D/raw.img" "$D/blocks" <<'PY'
import os, sys, time
src, dst, lst = sys.argv[1], sys.argv[2], sys.argv[3]
G, CH = 4096, 4 << 20
ext = []
for b in (int(l) for l in open(lst)):
    if ext and ext[-1][0] + ext[-1][1] == b * G:
        ext[-1][1] += G
    else:
        ext.append([b * G, G])
t0 = time.monotonic()
fs, fd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
for off, ln in ext:
    pos = 0
    while pos < ln:
        n = min(CH, ln - pos)
        os.pwrite(fd, os.pread(fs, n, off + pos), off + pos)
        pos += n
os.fdatasync(fd)
print(round((time.monotonic() - t0) * 1000, 1))
PY
  rm -f "$D/raw.img"
}

cp_ms() { # cp of one contiguous file of BYTES bytes (in the page cache), then sync
  dd if=/dev/urandom of="$D/contig.src" bs=4096 count="$(($1 / 4096))" status=none
  rm -f "$D/contig.dst"; sync
  local t0
  t0=$(date +%s%N)
  cp "$D/contig.src" "$D/contig.dst" && sync "$D/contig.dst"
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
  rm -f "$D/contig.src" "$D/contig.dst"
}

sync_once() { # strata sync to a fresh sparse replica; sets SYNC_WALL, SYNC_SRV, SYNC_BYTES_COPIED
  local t0 dirty
  dirty=$(ctl dirty status d --json | jq '.[0].dirty_bytes')
  [ "$dirty" = $(($(wc -l <"$D/blocks") * 4096)) ] || { echo "map holds $dirty bytes, not the blocks written" >&2; exit 1; }
  rm -f "$D/rep.img"; truncate -s "$SYNC_BYTES" "$D/rep.img"
  sync
  h0=$(host_busy); c0=$(cpu "$SRV")
  t0=$(date +%s%N)
  ctl sync d --map m --to "$D/rep.img" --json >"$D/sync.json" 2>/dev/null
  SYNC_WALL=$(( ($(date +%s%N) - t0) / 1000000 ))
  h1=$(host_busy); c1=$(cpu "$SRV")
  SYNC_OTHER=$(awk -v h="$((h1 - h0))" -v c="$((c1 - c0))" -v t="$CLK" 'BEGIN{printf "%.2f", (h - c) / t}')
  SYNC_SRV=$(jq .milliseconds "$D/sync.json")
  SYNC_BYTES_COPIED=$(jq .copied_bytes "$D/sync.json")
  [ "$SYNC_BYTES_COPIED" = "$dirty" ] || { echo "sync copied $SYNC_BYTES_COPIED bytes, dirty was $dirty" >&2; exit 1; }
  [ "$(jq .dirty_bytes_left "$D/sync.json")" = 0 ] || { echo "sync left bytes dirty: $(cat "$D/sync.json")" >&2; exit 1; }
  # The replica holds every dirty block.
  "$PYTHON" - "$D/src.raw" "$D/rep.img" "$D/blocks" <<'PY' || { echo "replica differs" >&2; exit 1; }
import sys
s, r = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
for l in open(sys.argv[3]):
    o = int(l) * 4096
    s.seek(o); r.seek(o)
    assert s.read(4096) == r.read(4096), o
PY
  rm -f "$D/rep.img"
}

REPS=2
echo "## (b) strata sync vs raw copy of the same extents, $SYNC_SIZE sparse device, 4 KiB blocks (best of $REPS)"
echo
echo "| dirty | blocks | bytes | strata sync wall ms | sync server ms | raw extents copy ms | sync / raw | cp same size ms | sync MiB/s | sync µs/extent |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for pct in 0.5 1 2; do
  best_wall= best_srv= best_raw= best_cp=
  for rep in $(seq 1 $REPS); do
    dirty_blocks "$pct" "$rep"
    nblocks=$(wc -l <"$D/blocks")
    # Alternate which copy goes first.
    if [ $((rep % 2)) = 1 ]; then
      raw=$(raw_copy_ms)
      sync_once
    else
      sync_once
      raw=$(raw_copy_ms)
    fi
    c=$(cp_ms $((nblocks * 4096)))
    best_wall=$(awk -v a="${best_wall:-1e18}" -v b="$SYNC_WALL" 'BEGIN{print (b < a) ? b : a}')
    best_srv=$(awk -v a="${best_srv:-1e18}" -v b="$SYNC_SRV" 'BEGIN{print (b < a) ? b : a}')
    best_raw=$(awk -v a="${best_raw:-1e18}" -v b="$raw" 'BEGIN{print (b < a) ? b : a}')
    best_cp=$(awk -v a="${best_cp:-1e18}" -v b="$c" 'BEGIN{print (b < a) ? b : a}')
    echo "  $pct% rep $rep: sync wall $SYNC_WALL ms (server $SYNC_SRV ms; CPU of other processes meanwhile" \
      "$SYNC_OTHER s), raw $raw ms, cp $c ms" >&2
  done
  awk -v p="$pct" -v n="$nblocks" -v b="$SYNC_BYTES_COPIED" -v w="$best_wall" -v s="$best_srv" -v r="$best_raw" \
    -v c="$best_cp" 'BEGIN {
    printf "| %s%% | %d | %.1f MiB | %d | %d | %.0f | %.2f | %d | %.0f | %.1f |\n", p, n, b / 1048576, w, s, r, w / r, c,
      b / 1048576 / (w / 1000), s * 1000 / n }'
done
stop
echo
echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"
