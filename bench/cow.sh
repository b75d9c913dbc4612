#!/usr/bin/env bash
# bench/cow.sh: what a cow stack costs, against a plain file and against the
# copy-on-write of qemu-nbd (qcow2 chain) and nbdkit (cow filter).
#
#   bench/cow.sh [--runtime S] [--size 1G] [--fresh 256M] [--memory warm|cold]
#
# The shape: a base of random data, two read-only layers each holding a
# random ~30% of the 4 KiB chunks (random data, written through each server
# while that layer was the top), and an empty writable top:
#   strata-file   strata serve --file on a copy of the base (no layers)
#   strata-cow    strata: cow top.layer base=base, layers l1 and l2 below
#   qemu-nbd      qemu-nbd on top.qcow2 -> l2.qcow2 -> l1.qcow2 -> base.raw
#                 (qcow2 with cluster_size=4096, the chunk size; backing raw)
#   nbdkit-cow    nbdkit --filter=cow file base.raw, cow-block-size=4096; its
#                 overlay is temporary, so l1's then l2's chunks are written
#                 into that one overlay: the same data, one level instead of 3
# Jobs (fio --ioengine=nbd, one job each, the server's files in the page
# cache): 4k randread QD32, QD1, QD16 (--runtime s each), then 4k randwrite
# QD32 to fresh chunks (--fresh bytes, default 256 MiB, each block once: the
# top holds none of them; at 80k IOPS 256 MiB is 0.8 s of writing, so a larger
# --fresh measures a steadier rate).
# Server CPU is utime+stime from /proc over the job, per million I/Os.
# Memory (--memory, default warm): a write to a fresh chunk puts a new page in
# the page cache (the file export's writes land on pages it already holds). In
# a VM, a guest page the host has not backed yet (never touched, or handed
# back by free page reporting after it was free a while) costs several us on
# its first touch: on this machine 7-8 us per 4 KiB page against ~1 us for a
# page freed a moment ago (RESULTS.md 5). `warm` writes and deletes
# fresh-size + 512 MiB in /dev/shm right before every randwrite job (3 GiB
# before the merge and its load), so each server's new pages are ones the
# host already backs; `cold` does nothing, and the result depends on what ran
# before. The line "memory:" gives each warm-up's own cost per page (cold
# memory: 5-9 us).
# Then, on strata-cow: `strata snapshot` twice under a randwrite QD32 load
# (how long writes were held, and the whole operation), `strata merge` of the
# top into its parent under the same load (MiB/s of chunks copied down), and
# `strata flatten` of the whole device (MiB/s).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
PYTHON=/usr/bin/python3   # Debian's python3 has the libnbd bindings
RUNTIME=8
SIZE=1G
FRESH=256M
MEMORY=warm
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --fresh) FRESH=$2; shift ;;
    --memory) MEMORY=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for t in fio jq numfmt qemu-img qemu-nbd nbdkit; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
[ -x "$STRATA" ] || { echo "build strata first (make build)" >&2; exit 1; }
BYTES=$(numfmt --from=iec "$SIZE")
case $MEMORY in warm|cold) ;; *) echo "--memory warm or cold" >&2; exit 2 ;; esac
MEMLOG=
# warm_memory NAME MIB: with --memory warm, write then delete MIB MiB in
# /dev/shm (tmpfs), so the pages the next job allocates are backed by the host;
# note the warm-up's system time per 4 KiB page (how cold memory was).
warm_memory() {
  [ "$MEMORY" = warm ] || return 0
  local n=$2 f t TIMEFORMAT=%S
  f=$(mktemp -p /dev/shm strata-cowbench-warm.XXXXXX)
  t=$( { time dd if=/dev/zero of="$f" bs=1M count="$n" status=none; } 2>&1)
  rm -f "$f"
  MEMLOG+=" $1 $(awk -v t="$t" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / (n * 256)}')"
}
D=$(mktemp -d /tmp/strata-cowbench.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
SOCK=$D/sock
URI="nbd+unix:///d?socket=$SOCK"

wait_sock() {
  for _ in $(seq 400); do
    [ -S "$SOCK" ] && $PYTHON -c "import nbd; h = nbd.NBD(); h.connect_uri('$URI')" 2>/dev/null && return 0
    kill -0 "$SRV" 2>/dev/null || { echo "server died: $(tail -5 "$D/server.log")" >&2; exit 1; }
    sleep 0.05
  done
  echo "server did not start: $(tail -5 "$D/server.log")" >&2
  exit 1
}
start() { # NAME: start the server NAME on $SOCK
  rm -f "$SOCK"
  case $1 in   # exec: $! is the server itself
    strata-file) exec "$STRATA" serve --state-dir "$D/state" --unix "$SOCK" --control "$D/ctl" --file "$D/file.raw" --export d ;;
    strata-cow|strata-l1|strata-l2) exec "$STRATA" serve --state-dir "$D/state" --unix "$SOCK" --control "$D/ctl" --allow-path "$D" --table "$D/$1.conf" ;;
    qemu-nbd) exec qemu-nbd -k "$SOCK" -x d --persistent --shared=8 -f qcow2 --cache=writeback "$D/top.qcow2" ;;
    qemu-l1) exec qemu-nbd -k "$SOCK" -x d --persistent -f qcow2 "$D/l1.qcow2" ;;
    qemu-l2) exec qemu-nbd -k "$SOCK" -x d --persistent -f qcow2 "$D/l2.qcow2" ;;
    nbdkit-cow) exec nbdkit -f -U "$SOCK" --filter=cow file "$D/base.raw" cow-block-size=4096 ;;
  esac >>"$D/server.log" 2>&1 &
  SRV=$!
  wait_sock
}
stop() { kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=; }

# populate SEED: random data into a random ~30% of the 4 KiB chunks (the same
# chunks and bytes for every server), through $URI, 64 writes in flight.
populate() { $PYTHON "$HERE/populate.py" "$URI" "$BYTES" "$1" 0.3; }

echo "strata cow benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r), $(free -g | awk '/Mem/ {print $2}') GiB RAM"
echo "uptime before: $(uptime)"
echo

# ---- build the stacks
head -c "$BYTES" /dev/urandom >"$D/base.raw"
cp "$D/base.raw" "$D/file.raw"
for n in l1 l2 cow; do
  top=$([ $n = cow ] && echo top || echo $n)
  cat >"$D/strata-$n.conf" <<CONF
[base]
0 $((BYTES / 512)) file $D/base.raw 0 ro
[d]
0 $((BYTES / 512)) cow $D/$top.layer base=base
CONF
done
"$STRATA" layer create "$D/l1.layer" --size "$BYTES" >/dev/null
start strata-l1; populate 1; stop
"$STRATA" layer create "$D/l2.layer" --parent "$D/l1.layer" >/dev/null
start strata-l2; populate 2; stop
"$STRATA" layer create "$D/top.layer" --parent "$D/l2.layer" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$D/base.raw" -F raw "$D/l1.qcow2"
start qemu-l1; populate 1; stop
qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$D/l1.qcow2" -F qcow2 "$D/l2.qcow2"
start qemu-l2; populate 2; stop
qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$D/l2.qcow2" -F qcow2 "$D/top.qcow2"
for l in l1 l2; do
  echo "layer $l: $("$STRATA" layer info "$D/$l.layer" --json | jq .present_chunks) of $((BYTES / 4096)) chunks"
done
echo

# ---- the jobs
JOBS="randread:32 randread:1 randread:16 randwrite:32"
: >"$D/rows"
for server in strata-file strata-cow qemu-nbd nbdkit-cow; do
  # Every image file into the page cache first, then the server starts. (Until
  # 2026-11-21 the files were read after the start: strata drops the cache of
  # its writable top at open, so a top read after that kept large folios over
  # its holes, which made its fresh-chunk writes 6-10x slower: see RESULTS.md.)
  cat "$D"/*.raw "$D"/*.layer "$D"/*.qcow2 >/dev/null
  start $server
  [ $server = nbdkit-cow ] && { populate 1; populate 2; }
  for j in $JOBS; do
    IFS=: read -r rw qd <<<"$j"
    if [ "$rw" = randread ]; then
      limit=(--time_based=1 --runtime="$RUNTIME" --ramp_time=1 --norandommap=1)
    else
      limit=(--io_size="$FRESH")   # random map: each block once, all fresh in the top
    fi
    sync
    [ "$rw" = randwrite ] && warm_memory "$server" $(( ($(numfmt --from=iec "$FRESH") >> 20) + 512 ))
    c0=$(cpu "$SRV")
    fio --name=job --ioengine=nbd --uri="$URI" --rw="$rw" --bs=4k --iodepth="$qd" --numjobs=1 --size="$BYTES" \
      --randrepeat=0 "${limit[@]}" --output-format=json --output="$D/fio.json" >/dev/null 2>"$D/fio.err" ||
      { echo "fio failed on $server: $(cat "$D/fio.err")" >&2; exit 1; }
    c1=$(cpu "$SRV")
    jq -r --arg s "$server" --arg j "4k $rw QD$qd" --argjson c "$((c1 - c0))" --argjson clk "$CLK" --arg rw "$rw" \
      '.jobs[0] as $x | (if $rw == "randread" then $x.read else $x.write end) as $o |
       [$s, $j, $o.iops, ($o.clat_ns.percentile["99.000000"] / 1000), ($c / $clk / $o.total_ios * 1e6),
        $x.error] | @tsv' "$D/fio.json" >>"$D/rows"
  done
  [ $server = strata-cow ] || { stop; continue; }

  # ---- snapshot pause under load, then flatten (strata-cow only)
  fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --size="$BYTES" \
    --time_based=1 --runtime=6 --norandommap=1 --randrepeat=0 --output-format=json --output="$D/load.json" \
    >/dev/null 2>"$D/load.err" &
  FIO=$!
  pauses=()
  for s in 1 2; do
    sleep 2
    pauses+=("$("$STRATA" snapshot d --control "$D/ctl" --json | jq -r '.[0] | "\(.pause_us)/\(.total_us)"')")
  done
  wait $FIO || { echo "fio failed during the snapshots: $(cat "$D/load.err")" >&2; exit 1; }
  load=$(jq -r '.jobs[0] as $x | "\($x.write.iops | floor) IOPS, p99 \($x.write.clat_ns.percentile["99.000000"] / 1000 | floor) µs, max \($x.write.clat_ns.max / 1000 | floor) µs, errors \($x.error)"' "$D/load.json")
  # ---- merge of the top (what the load wrote after the second snapshot)
  # into its parent, while the same load goes on (6 s of it: up to ~3 GiB of
  # new pages, warmed first)
  warm_memory merge 3072
  fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --size="$BYTES" \
    --time_based=1 --runtime=6 --norandommap=1 --randrepeat=0 --output-format=json --output="$D/mload.json" \
    >/dev/null 2>"$D/mload.err" &
  FIO=$!
  sleep 1
  m=$("$STRATA" merge d --control "$D/ctl" --json 2>/dev/null) || { echo "merge failed: $m" >&2; exit 1; }
  wait $FIO || { echo "fio failed during the merge: $(cat "$D/mload.err")" >&2; exit 1; }
  merge=$(jq -r '(.chunks_copied * 4096 / 1048576) as $mib |
    "\(.chunks_copied) chunks (\($mib | floor) MiB) in \(.milliseconds) ms: \($mib / (.milliseconds / 1000) | floor) MiB/s"' <<<"$m")
  # The merge's phases from the server's log (begin, copy, flush and drop).
  merge+=" ($(grep -o 'copied down; [0-9]* ms to begin, [0-9]* ms to copy, [0-9]* ms' "$D/server.log" | tail -1 |
    sed -E 's/.* ([0-9]+) ms to begin, ([0-9]+) ms to copy, ([0-9]+) ms/begin \1, copy \2, flush and drop \3 ms/'))"
  merge+=", writes held $(grep -o 'writes now go to .* (I/O held [0-9]* us)' "$D/server.log" | tail -1 | grep -o '[0-9]* us')"
  merge+=" at the switch and $(grep -o 'drop the top (I/O held [0-9]* us)' "$D/server.log" | tail -1 | grep -o '[0-9]* us') at the drop"
  mload=$(jq -r '.jobs[0] as $x | "\($x.write.iops | floor) IOPS, max \($x.write.clat_ns.max / 1000 | floor) µs, errors \($x.error)"' "$D/mload.json")
  # ---- a client's FLUSH under the same load, on the merged stack (the write layer is now the merge's
  # parent): the floor of the merge's own end, which is one flush of that parent with the load running.
  sync   # what the merge's load left dirty is written first
  fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --size="$BYTES" \
    --time_based=1 --runtime=5 --norandommap=1 --randrepeat=0 --output-format=json --output="$D/fload.json" \
    >/dev/null 2>"$D/fload.err" &
  FIO=$!
  sleep 2.5
  fl=$($PYTHON -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); t = time.monotonic(); h.flush(); print(f"{(time.monotonic() - t) * 1000:.0f}")' "$URI") ||
    { echo "flush under load failed: $fl" >&2; exit 1; }
  wait $FIO || { echo "fio failed during the flush: $(cat "$D/fload.err")" >&2; exit 1; }
  flush="$fl ms ($(jq -r '.jobs[0].write.iops | floor' "$D/fload.json") IOPS of load)"
  t0=$(date +%s.%N)
  "$STRATA" flatten d --to "$D/flat.raw" --control "$D/ctl" >/dev/null 2>"$D/flatten.err" ||
    { echo "flatten failed: $(cat "$D/flatten.err")" >&2; exit 1; }
  t1=$(date +%s.%N)
  flat=$(awk -v a="$t0" -v b="$t1" -v n="$BYTES" 'BEGIN {printf "%.0f MiB/s (%.2f s for %.0f MiB)", n / 1048576 / (b - a), b - a, n / 1048576}')
  layers=$("$STRATA" status d --control "$D/ctl" --json | jq '.[0].segments[0].info.layers')
  stop
done

$PYTHON - "$D/rows" <<'PY'
import sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])]
by = {(r[0], r[1]): r for r in rows}
print('| server | job | IOPS | p99 µs | srv CPU s/M IO | IOPS vs strata-file | IOPS vs qemu-nbd |')
print('|---|---|---:|---:|---:|---:|---:|')
for s, j, iops, p99, cpu, err in rows:
    iops, p99, cpu = float(iops), float(p99), float(cpu)
    ratio = lambda ref: f"{iops / float(by[(ref, j)][2]):.2f}" if (ref, j) in by else '-'
    print(f'| {s} | {j}{" (errors " + err + ")" if err != "0" else ""} | {iops:,.0f} | {p99:,.0f} | {cpu:.1f} | {ratio("strata-file")} | {ratio("qemu-nbd")} |')
PY
echo
echo "strata snapshot under 4k randwrite QD32 (fio, 6 s): writes held / whole operation, µs: ${pauses[*]}; the load: $load"
echo "strata merge of the top into its parent under the same load: $merge; the load: $mload; layers after: $layers"
echo "strata FLUSH from a client under the same load, 2.5 s into it, after the merge: $flush"
echo "strata flatten of the stack: $flat"
echo "memory: --memory $MEMORY${MEMLOG:+; system time per 4 KiB page of each warm-up, us:$MEMLOG}"
echo "uptime after: $(uptime)"
