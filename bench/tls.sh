#!/usr/bin/env bash
# bench/tls.sh: NBD over TLS-PSK, strata against nbdkit, in one run.
#
#   bench/tls.sh [--runtime S] [--size 1G]
#
# Both servers serve their own copy of one random-data file on a Unix socket
# with --tls=require and the same PSK file; bench/nbd-randio.c (libnbd, which
# unlike fio's nbd engine may read the tls-psk-file a URI names) drives the
# jobs one at a time. Server CPU is utime+stime from /proc over the job.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
RUNTIME=8
SIZE=1G
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --size) SIZE=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
D=$(mktemp -d /tmp/strata-tlsbench.XXXXXX)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
cc -O2 -o "$D/nbd-randio" "$HERE/nbd-randio.c" -lnbd
psktool -u bench -p "$D/keys.psk" >/dev/null 2>&1
head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom >"$D/master.raw"
CLK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

JOBS="randread:4096:32 randwrite:4096:32 read:1048576:8 write:1048576:8"
echo "| server | job | IOPS | MiB/s | lat mean µs | lat p99 µs | srv CPU s | srv CPU µs/IO |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for server in nbdkit strata; do
  cp "$D/master.raw" "$D/disk.raw"; sync
  rm -f "$D/sock"
  case $server in
    nbdkit) nbdkit --foreground --tls=require --tls-psk="$D/keys.psk" --unix "$D/sock" file file="$D/disk.raw" \
              2>"$D/nbdkit.log" & ;;
    strata) "$STRATA" serve --state-dir "$D/state" --tls=require --tls-psk "$D/keys.psk" --unix "$D/sock" --control "$D/ctl.sock" \
              --file "$D/disk.raw" >"$D/strata.log" 2>&1 & ;;
  esac
  SRV=$!
  for _ in $(seq 100); do [ -S "$D/sock" ] && break; sleep 0.05; done
  URI="nbds+unix://bench@/?socket=$D/sock&tls-psk-file=$D/keys.psk"
  for j in $JOBS; do
    IFS=: read -r mode bs qd <<<"$j"
    sync
    c0=$(cpu "$SRV")
    out=$("$D/nbd-randio" "$URI" "$mode" "$bs" "$qd" "$RUNTIME")
    c1=$(cpu "$SRV")
    python3 - "$server" "$mode-$bs-qd$qd" "$out" "$c0" "$c1" "$CLK" <<'PY'
import json, sys
server, job, out, c0, c1, clk = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu = (c1 - c0) / clk
print(f"| {server} | {job} | {out['iops']:.0f} | {out['mibs']:.1f} | {out['lat_mean_us']:.1f} | {out['lat_p99_us']:.0f} | {cpu:.2f} | {cpu / out['ios'] * 1e6:.2f} |")
PY
  done
  kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=
done
