#!/usr/bin/env bash
# bench/fuse.sh: a loop device over strata's FUSE file against a loop device
# over the raw file, in one run.
#
#   bench/fuse.sh [--runtime S] [--ramp S] [--size 1G] [--strata-args "ARGS"]
#                 [--jobs "randread:4k:32 ..."]
#
# --strata-args: more `strata serve` arguments for (b) and (c), e.g.
# "--fuse-io-uring off" to measure the /dev/fuse transport.
#
# One random-data file, copied twice (one copy for the kernel alone, one for
# strata). fio (io_uring, O_DIRECT, one job) runs on:
#   (a) loop:         `losetup --direct-io=on` over the raw copy: no strata
#   (b) fuse:         `losetup --direct-io=on` over MNT/disk of `strata serve
#                     --file COPY --fuse MNT` (strata's file I/O is buffered)
#   (c) fuse-direct:  the same with `strata serve --direct` (O_DIRECT to the
#                     file, as the loop device does in (a))
# Each file copy's page cache is dropped before each configuration. Server
# CPU is strata's utime+stime from /proc (all its threads, io_uring workers
# included) over the whole job, ramp included; (a) has no server.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
RUNTIME=8
RAMP=2
SIZE=1G
EXTRA=
JOBS="randread:4k:32 randwrite:4k:32 read:1M:8 write:1M:8"
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --ramp) RAMP=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --strata-args) EXTRA=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench/fuse.sh: needs root (losetup, FUSE mount)" >&2; exit 1; }
D=$(mktemp -d /tmp/strata-fusebench.XXXXXX)
mkdir "$D/mnt"
SRV='' LOOP=''
cleanup() {
  set +e
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  [ -n "$SRV" ] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null
  grep -q " $D/mnt " /proc/mounts && { umount "$D/mnt" 2>/dev/null || umount -l "$D/mnt"; }
  rm -rf "$D"
}
trap cleanup EXIT
head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom >"$D/master.raw"
cp "$D/master.raw" "$D/loop.raw"
cp "$D/master.raw" "$D/strata.raw"
rm "$D/master.raw"
sync
CLK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
drop_cache() { dd of="$1" oflag=nocache conv=notrunc,fdatasync count=0 status=none; }
attach() {
  LOOP=$(losetup --direct-io=on -f --show "$1")
  [ "$(losetup -n -O DIO "$LOOP" | tr -d ' ')" = 1 ] || { echo "$LOOP: no direct I/O" >&2; exit 1; }
}
detach() {
  losetup -d "$LOOP"; LOOP=
  for _ in $(seq 100); do [ -z "$(losetup -j "$1")" ] && return; sleep 0.05; done
}
start_strata() {
  # shellcheck disable=SC2086 # EXTRA is split on purpose
  "$STRATA" serve --state-dir "$D/state" --unix "$D/sock" --control "$D/ctl.sock" --file "$D/strata.raw" --export disk --fuse "$D/mnt" \
    $EXTRA "$@" >"$D/strata.log" 2>&1 &
  SRV=$!
  for _ in $(seq 200); do [ -e "$D/mnt/disk" ] && return; sleep 0.05; done
  cat "$D/strata.log" >&2; exit 1
}
stop_strata() { kill "$SRV"; wait "$SRV" || { echo "strata exited $?" >&2; cat "$D/strata.log" >&2; exit 1; }; SRV=; }

RES=$D/results.txt
: >"$RES"
run_jobs() {  # run_jobs CONFIG
  local j mode bs qd c0 c1
  for j in $JOBS; do
    IFS=: read -r mode bs qd <<<"$j"
    c0=0 c1=0
    [ -n "$SRV" ] && c0=$(cpu "$SRV")
    fio --name=bench --filename="$LOOP" --ioengine=io_uring --direct=1 --rw="$mode" --bs="$bs" --iodepth="$qd" \
      --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --randrepeat=0 --norandommap --output-format=json \
      >"$D/fio.json"
    [ -n "$SRV" ] && c1=$(cpu "$SRV")
    python3 - "$1" "$mode-$bs-qd$qd" "$c0" "$c1" "$CLK" "$([ -n "$SRV" ] && echo 1 || echo 0)" "$D/fio.json" \
      >>"$RES" <<'PY'
import json, sys
cfg, job, c0, c1, clk, has = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
j = json.load(open(sys.argv[7]))["jobs"][0]
d = j["write"] if "write" in job else j["read"]
if j["error"]:
    sys.exit("fio error %s in %s %s" % (j["error"], cfg, job))
p99 = d["clat_ns"]["percentile"]["99.000000"] / 1000
cpu = (c1 - c0) / clk if has else -1
print(json.dumps({"cfg": cfg, "job": job, "iops": d["iops"], "mibs": d["bw"] / 1024, "p99": p99, "cpu": cpu}))
PY
  done
}

# (a) the kernel loop device over the raw file.
drop_cache "$D/loop.raw"
attach "$D/loop.raw"
run_jobs loop
detach "$D/loop.raw"

# (b) strata --file (buffered) behind FUSE, (c) the same with --direct.
for cfg in fuse fuse-direct; do
  drop_cache "$D/strata.raw"
  if [ $cfg = fuse ]; then start_strata; else start_strata --direct; fi
  attach "$D/mnt/disk"
  run_jobs $cfg
  detach "$D/mnt/disk"
  stop_strata
done

python3 - "$RES" "$(nproc)" "$(uname -r)" "$RUNTIME" "$RAMP" "$SIZE" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"fio io_uring O_DIRECT on /dev/loopN, {sys.argv[6]} file, {sys.argv[4]} s after a {sys.argv[5]} s ramp; "
      f"{sys.argv[2]} CPUs, kernel {sys.argv[3]}")
print()
print("| job | config | IOPS | MiB/s | p99 µs | strata CPU s |")
print("|---|---|---:|---:|---:|---:|")
by = {}
for r in rows:
    by[(r["job"], r["cfg"])] = r
    cpu = "-" if r["cpu"] < 0 else f"{r['cpu']:.2f}"
    print(f"| {r['job']} | {r['cfg']} | {r['iops']:.0f} | {r['mibs']:.1f} | {r['p99']:.0f} | {cpu} |")
print()
print("| job | (b)/(a) IOPS | (c)/(a) IOPS | (b)/(a) p99 | (c)/(a) p99 |")
print("|---|---:|---:|---:|---:|")
for job in dict.fromkeys(r["job"] for r in rows):
    a, b, c = by[(job, "loop")], by[(job, "fuse")], by[(job, "fuse-direct")]
    print(f"| {job} | {b['iops'] / a['iops']:.2f} | {c['iops'] / a['iops']:.2f} | "
          f"{b['p99'] / a['p99']:.2f} | {c['p99'] / a['p99']:.2f} |")
PY
