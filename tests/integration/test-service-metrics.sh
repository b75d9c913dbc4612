#!/usr/bin/env bash
# test-service-metrics.sh: `serve --metrics 127.0.0.1:PORT` serves Prometheus text at /metrics (404 elsewhere,
# 405 for POST) that python's prometheus_client parses, with a family per series and label values escaped; the
# per-device counters move by exactly the I/O done (ops, bytes, histogram counts), the connection gauges follow a
# client, cow copy-ups and layers, dirty bytes per map and job progress are there.
source "$(dirname "$0")/functions.sh"
requires curl qemu-io
PORT=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
M=http://127.0.0.1:$PORT/metrics
SIZE=$((4 * 1024 * 1024))
fill "$WORK/base.img" 0 $SIZE 0x11
"$STRATA" layer create "$WORK/top.layer" --size $SIZE --chunk-size 65536 >/dev/null
cow_table "$WORK/t.conf" $SIZE "$WORK/base.img" "$WORK/top.layer"
start_strata --table "$WORK/t.conf" --metrics "127.0.0.1:$PORT"
grep -q "strata: metrics at $M" "$STRATA_LOG" || die "no metrics URL printed: $(cat "$STRATA_LOG")"

[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")" = 404 ] || die "/ is not 404"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/metrics/x")" = 404 ] || die "/metrics/x is not 404"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$M")" = 405 ] || die "POST is not 405"
curl -sfI "$M" | grep -qi '^content-type: text/plain; version=0.0.4' || die "content type: $(curl -sI "$M")"

# scrape OUT: the page, checked by prometheus_client's parser; OUT.json: {"name{labels}": value}.
scrape() {
  curl -sf "$M" >"$1" || die "GET /metrics failed"
  $PYTHON - "$1" <<'PY' || die "the page does not parse: $(head -50 "$1")"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
out, families = {}, set()
for fam in text_string_to_metric_families(text):
    assert fam.name not in families, "family twice: " + fam.name
    families.add(fam.name)
    assert fam.name.startswith("strata_"), fam.name
    for s in fam.samples:
        key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
        assert key not in out, "sample twice: " + key
        out[key] = s.value
# Histograms: cumulative buckets, +Inf equal to _count.
for k, v in out.items():
    if k.startswith("strata_device_read_latency_seconds_count"):
        dev = k[k.index("{"):]
        inf = out["strata_device_read_latency_seconds_bucket" + dev[:-1] + ",le=+Inf}"]
        assert inf == v, (k, inf, v)
json.dump(out, open(sys.argv[1] + ".json", "w"))
PY
}
# val FILE KEY: a sample's value (labels sorted by name, as scrape writes them).
val() { $PYTHON -c 'import json, sys; print(int(json.load(open(sys.argv[1] + ".json"))[sys.argv[2]]))' "$1" "$2"; }

scrape "$WORK/m1"
[ "$(val "$WORK/m1" 'strata_devices{}')" = 2 ] || die "strata_devices"
[ "$(val "$WORK/m1" 'strata_cow_layers{device=d,segment=0}')" = 1 ] || die "cow layers"
w1=$(val "$WORK/m1" 'strata_device_write_ops_total{device=d}')
b1=$(val "$WORK/m1" 'strata_device_write_bytes_total{device=d}')
h1=$(val "$WORK/m1" 'strata_device_write_latency_seconds_count{device=d}')
r1=$(val "$WORK/m1" 'strata_device_read_ops_total{device=d}')
f1=$(val "$WORK/m1" 'strata_device_flush_ops_total{device=d}')
c1=$(val "$WORK/m1" 'strata_cow_copy_ups_total{device=d,segment=0}')

# A dirty map whose name needs escaping in a label: a double quote and a backslash.
ctl dirty start d 'm"1\x' >/dev/null
# Three writes of 4 KiB into three chunks (three copy-ups: partial chunks), two reads, a flush.
qio "$(uri d)" "write -P 0x22 0 4k" "write -P 0x22 1M 4k" "write -P 0x22 2M 4k" "read 0 8k" "read 1M 4k" "flush"
scrape "$WORK/m2"
[ $(($(val "$WORK/m2" 'strata_device_write_ops_total{device=d}') - w1)) = 3 ] || die "write ops did not move by 3"
[ $(($(val "$WORK/m2" 'strata_device_write_bytes_total{device=d}') - b1)) = 12288 ] || die "write bytes"
[ $(($(val "$WORK/m2" 'strata_device_write_latency_seconds_count{device=d}') - h1)) = 3 ] || die "write histogram"
[ $(($(val "$WORK/m2" 'strata_device_read_ops_total{device=d}') - r1)) -ge 2 ] || die "read ops"
[ $(($(val "$WORK/m2" 'strata_device_flush_ops_total{device=d}') - f1)) -ge 1 ] || die "flush ops"
[ $(($(val "$WORK/m2" 'strata_cow_copy_ups_total{device=d,segment=0}') - c1)) = 3 ] || die "copy-ups did not move by 3"
[ "$(val "$WORK/m2" 'strata_device_write_ops_total{device=base}')" = 0 ] || die "the base device counted writes"
[ "$(val "$WORK/m2" 'strata_dirty_bytes{device=d,map=m"1\\x}')" = 12288 ] ||
  die "dirty bytes of the map: $(grep strata_dirty_bytes "$WORK/m2")"
grep -qF 'strata_dirty_bytes{device="d",map="m\"1\\\\x"} 12288' "$WORK/m2" || die "label escaping: $(grep dirty_bytes "$WORK/m2")"
[ "$(val "$WORK/m2" 'strata_device_errors_total{device=d,op=write}')" = 0 ] || die "write errors"

# Connection gauges while a client is connected.
$PYTHON -c 'import nbd, os, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); open(sys.argv[2], "w").close()
while os.path.exists(sys.argv[2]): time.sleep(0.02)' "$(uri d)" "$WORK/hold" &
HOLD=$!
for _ in $(seq 1 100); do [ -e "$WORK/hold" ] && break; sleep 0.05; done
scrape "$WORK/m3"
rm -f "$WORK/hold"
wait $HOLD
[ "$(val "$WORK/m3" 'strata_device_nbd_clients{device=d}')" = 1 ] || die "per-device connections"
[ "$(val "$WORK/m3" 'strata_nbd_clients{}')" = 1 ] || die "connections"

# A job's progress: a flatten, done.
ctl flatten d --to "$WORK/flat.img" >/dev/null 2>&1 || die "flatten"
scrape "$WORK/m4"
grep -qE '^strata_job_done\{job="[0-9]+",kind="flatten",device="d",unit="bytes"\} 4194304$' "$WORK/m4" ||
  die "job progress: $(grep strata_job "$WORK/m4")"
grep -qE '^strata_job_running\{job="[0-9]+",kind="flatten",device="d",unit="bytes"\} 0$' "$WORK/m4" || die "job state"
stop_strata
