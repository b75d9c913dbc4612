#!/bin/bash
# A map left in use by another boot (a machine crash) is reported INCONSISTENT (status, list, offline list) and never trusted: sync copies the whole device; a sync of it that fails midway leaves it inconsistent (the next sync again copies everything); a successful sync makes it consistent and empty.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdkit jq

SIZE=$((32 << 20))
IMG=$WORK/d.img
ST=$WORK/state
MAP=$ST/d/m.dmap
head -c $SIZE /dev/urandom >"$IMG"
start_strata --file "$IMG" --export d --state-dir "$ST"
ctl dirty start d m >/dev/null
qio "$(uri d)" "write -P 1 0 4096" "write -P 2 1048576 4096"
[ "$(ctl dirty list d m)" = "0 4096
1048576 4096" ] || die "setup"
# A machine crash: the map file stays "in use" (kill -9), and the next start
# is in another boot (simulated: another boot id in the header, checksum
# recomputed).
kill9_strata
"$PYTHON" - "$MAP" <<'PY'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
assert struct.unpack_from("<I", b, 12)[0] & 1, "the map is not marked in use after kill -9"
b[48:112] = b"00000000-1111-2222-3333-444444444444".ljust(64, b"\0")
h = 2166136261
for x in b[:4092]:
    h = ((h ^ x) * 16777619) & 0xffffffff
struct.pack_into("<I", b, 4092, h)
open(p, "wb").write(b)
PY
j=$(ctl dirty list --offline --state-dir "$ST" d m --json)
[ "$(jq .consistent <<<"$j")" = false ] || die "offline list: not reported inconsistent: $j"
jq -r .note <<<"$j" | grep -q "machine restarted" || die "offline list: no reason given: $j"

start_strata --file "$IMG" --export d --state-dir "$ST"
grep -q "dirty map d/m: the machine restarted while the map was in use" "$STRATA_LOG" || die "no log line about the inconsistent map"
[ "$(ctl dirty status d --json | jq '.[0].consistent')" = false ] || die "status: $(ctl dirty status d --json)"
ctl dirty status d | grep -q 'INCONSISTENT$' || die "status text: $(ctl dirty status d)"
[ "$(ctl dirty list d m --json | jq .consistent)" = false ] || die "list --json: not inconsistent"
ctl dirty list d m 2>"$WORK/warn" >/dev/null
grep -q "warning: the map is INCONSISTENT" "$WORK/warn" || die "dirty list gave no warning: $(cat "$WORK/warn")"

# A sync to a replica that dies midway (each 4 MiB chunk takes 0.3 s).
REP=$WORK/replica.img
truncate -s $SIZE "$REP"
nbdkit --exit-with-parent --foreground --unix "$WORK/slow.sock" --filter=delay file "$REP" delay-write=300ms \
  >"$WORK/nbdkit.log" 2>&1 &
KPID=$!
disown $KPID
trap 'rc=$?; set +e; kill -9 $KPID 2>/dev/null; (exit $rc); cleanup' EXIT
for _ in $(seq 100); do [ -S "$WORK/slow.sock" ] && break; sleep 0.05; done
(ctl sync d --map m --to "nbd+unix:///?socket=$WORK/slow.sock" --json >"$WORK/slow.out" 2>"$WORK/slow.err") &
SPID=$!
for _ in $(seq 200); do grep -q "round 1" "$WORK/slow.err" && break; sleep 0.05; done
sleep 0.2
kill -9 $KPID
rc=0
wait $SPID || rc=$?
[ $rc -ne 0 ] || die "sync succeeded although its replica was killed"
grep -q "round 1 .*/32.0 MiB" "$WORK/slow.err" || die "the failed sync was not copying the whole device: $(cat "$WORK/slow.err")"
# Still inconsistent: the replica got only part of the device.
[ "$(ctl dirty status d --json | jq '.[0].consistent')" = false ] ||
  die "a failed sync of an inconsistent map left it consistent: $(ctl dirty list d m --json | jq -c 'del(.extents)')"

# A sync that works copies the whole device, and then the map is consistent.
GOOD=$WORK/good.img
truncate -s $SIZE "$GOOD"
ctl sync d --map m --to "$GOOD" --json >"$WORK/good.json" 2>/dev/null || die "sync to a good replica failed"
[ "$(jq -c '[.copied_bytes, .converged, .dirty_bytes_left]' "$WORK/good.json")" = "[$SIZE,true,0]" ] ||
  die "sync of an inconsistent map: $(cat "$WORK/good.json")"
cmp "$IMG" "$GOOD" || die "replica differs from the source"
[ "$(ctl dirty status d --json | jq -c '.[0] | [.consistent, .dirty_blocks]')" = '[true,0]' ] ||
  die "after a good sync: $(ctl dirty status d --json)"
# And stays so across a restart.
stop_strata
start_strata --file "$IMG" --export d --state-dir "$ST"
[ "$(ctl dirty status d --json | jq -c '.[0] | [.consistent, .dirty_blocks]')" = '[true,0]' ] ||
  die "after restart: $(ctl dirty status d --json)"
stop_strata
echo PASS
