#!/usr/bin/env bash
# bench/suspend.sh: how long a suspend/resume (and a reload/suspend/resume)
# holds the writes of a busy device.
#
#   bench/suspend.sh [--cycles 50] [--size 1G]
#
# strata serves a file device `d` (the file in the page cache); fio
# (--ioengine=nbd, 4k randwrite QD32, one job) writes to it without pause.
# Meanwhile a control client on one persistent connection runs CYCLES times,
# 100 ms apart: device_suspend (the default: flush while requests flow, then
# hold and drain) then device_resume; then as many cycles of device_reload
# (the same table, loaded inactive first as dmsetup does), device_suspend,
# device_resume (a swap: the old table is flushed in the background after it); then of device_suspend sync (flush,
# hold, drain, flush again with requests held); then of device_suspend
# noflush (hold and drain only).
# "held" is, per cycle, the resume's held_us: from the gate closing to every
# queue released (no request waited longer); of it, "drain" (until no request
# is in flight) and "flush" (the flush under the gate, --sync only) from the
# suspend's reply; "pre" is the flush before the gate closed, while requests
# flowed (not held). The rest is the control round trips. fio's completion latency
# over the whole run (p99, p99.9, max) shows what a client saw.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STRATA=${STRATA:-$ROOT/build/strata}
PYTHON=/usr/bin/python3
CYCLES=50
SIZE=1G
while [ $# -gt 0 ]; do
  case $1 in
    --cycles) CYCLES=$2; shift ;;
    --size) SIZE=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for t in fio jq; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
W=$(mktemp -d /tmp/strata-bench-suspend.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
bytes=$(numfmt --from=iec "$SIZE")
head -c "$bytes" /dev/urandom >"$W/d.img"
printf '[d]\n0 %d file %s 0\n' $((bytes / 512)) "$W/d.img" >"$W/t.conf"
"$STRATA" serve --table "$W/t.conf" --state-dir "$W/state" --unix "$W/nbd.sock" --control "$W/ctl.sock" >"$W/strata.log" 2>&1 &
PID=$!
for _ in $(seq 200); do [ -S "$W/ctl.sock" ] && break; sleep 0.05; done
[ -S "$W/ctl.sock" ] || { cat "$W/strata.log" >&2; echo "strata did not start" >&2; exit 1; }

echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) vCPU; strata $("$STRATA" --version 2>/dev/null | head -1)"
echo "# bench/suspend.sh --cycles $CYCLES --size $SIZE"
runtime=$((CYCLES * 4 * 30 / 100 + 6))
fio --name=w --ioengine=nbd --uri="nbd+unix:///d?socket=$W/nbd.sock" --rw=randwrite --bs=4k --iodepth=32 \
  --time_based --runtime="$runtime" --output-format=json --output="$W/fio.json" 2>"$W/fio.err" &
FIO=$!
sleep 2
echo "| cycle | n | held median ms | held p99 ms | held max ms | drain median ms | drain p99 ms | flush median ms | flush p99 ms | pre median ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
$PYTHON - "$W/ctl.sock" "$CYCLES" "0 $((bytes / 512)) file $W/d.img 0" <<'PY'
import json, socket, statistics, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("r")
def ask(method, **params):
    s.sendall((json.dumps({"method": method, "params": params}) + "\n").encode())
    r = json.loads(f.readline())
    if not r.get("ok"): sys.exit("%s: %s" % (method, r))
    return r["result"]
cycles, table = int(sys.argv[2]), sys.argv[3]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
for kind in ("suspend/resume", "reload/suspend/resume", "suspend --sync/resume", "suspend --noflush/resume"):
    pauses, susp, drain, flush, pre = [], [], [], [], []
    for _ in range(cycles):
        if kind.startswith("reload"):
            ask("device_reload", name="d", table=table)  # dmsetup's order: load, then suspend
        r = ask("device_suspend", name="d", noflush=kind.startswith("suspend --noflush"),
                sync=kind.startswith("suspend --sync"))
        rr = ask("device_resume", name="d")
        pauses.append(rr["held_us"] / 1e3)
        susp.append(r["suspend_us"] / 1e3)
        drain.append(r["drain_us"] / 1e3)
        flush.append(r["flush_us"] / 1e3)
        pre.append(r["preflush_us"] / 1e3)
        time.sleep(0.1)
    print("| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f |" % (kind, cycles,
          statistics.median(pauses), pct(pauses, 99), max(pauses), statistics.median(drain), pct(drain, 99),
          statistics.median(flush), pct(flush, 99), statistics.median(pre)))
PY
wait $FIO
jq -r '.jobs[0].write | "fio 4k randwrite QD32 over the run: \(.iops | floor) IOPS, completion latency p99 \(.clat_ns.percentile["99.000000"] / 1000 | floor) us, p99.9 \(.clat_ns.percentile["99.900000"] / 1000 | floor) us, max \(.clat_ns.max / 1000 | floor) us"' "$W/fio.json"
