#!/bin/bash
# strata sync to a file replica copies exactly the dirty blocks (clean blocks of the replica keep their own different content), fdatasyncs the replica, leaves the map empty, and a second sync after more writes copies only the new blocks.
. "$(dirname "$0")/functions.sh"
requires qemu-io jq strace cmp

IMG=$WORK/d.img
REP=$WORK/replica.img
SIZE=$((32 << 20))
# Source all 0xaa, replica all 0x55: any block copied that should not have
# been shows up as 0xaa in the replica.
bytes $SIZE 0xaa >"$IMG"
bytes $SIZE 0x55 >"$REP"
start_strata --file "$IMG" --export d --state-dir "$WORK/state"
ctl dirty start d m >/dev/null

qio "$(uri d)" "write -P 0x11 1000 5000" "write -P 0x22 1048576 131072" "write -z 8388608 4096" \
  "write -P 0x33 $((SIZE - 4096)) 4096"
[ "$(ctl dirty list d m)" = "0 8192
1048576 131072
8388608 4096
33550336 4096" ] || die "dirty list before sync: $(ctl dirty list d m)"

# The replica is fdatasync'ed: watch the server's system calls during the sync.
strace -f -qq -y -e trace=fdatasync,fsync -p "$STRATA_PID" -o "$WORK/strace.out" &
STRACE=$!
sleep 0.5   # strace attaches
ctl sync d --map m --to "$REP" --json >"$WORK/sync1.json" 2>"$WORK/sync1.err" || die "sync 1 failed: $(cat "$WORK/sync1.err")"
sleep 0.2
kill $STRACE; wait $STRACE 2>/dev/null || true
j=$(cat "$WORK/sync1.json")
[ "$(jq -c '[.rounds, .copied_bytes, .converged, .final, .dirty_bytes_left]' <<<"$j")" = '[1,147456,true,false,0]' ] ||
  die "sync 1 result: $j"
[ "$(jq '.milliseconds | type' <<<"$j")" = '"number"' ] || die "sync 1: no milliseconds: $j"
grep -q 'round 1' "$WORK/sync1.err" || die "sync 1 printed no progress on stderr: $(cat "$WORK/sync1.err")"
# -y names the file behind each descriptor.
grep -Eq "f(data)?sync\([0-9]+<$REP>\) += 0" "$WORK/strace.out" || die "the replica was not fdatasync'ed: $(cat "$WORK/strace.out")"

# The map is empty afterwards.
[ -z "$(ctl dirty list d m)" ] || die "map not empty after sync: $(ctl dirty list d m)"
[ "$(ctl dirty status d --json | jq '.[0].dirty_bytes')" = 0 ] || die "status after sync"

# Dirty blocks copied (whole blocks: 0..8191 is source data), clean ones not.
cmp <(file_range "$IMG" 0 8192) <(file_range "$REP" 0 8192) || die "block 0-1 not copied"
cmp <(file_range "$IMG" 1048576 131072) <(file_range "$REP" 1048576 131072) || die "1 MiB range not copied"
expect_bytes "$REP" 8388608 4096 0x00
expect_bytes "$REP" $((SIZE - 4096)) 4096 0x33
expect_bytes "$REP" 8192 $((1048576 - 8192)) 0x55
expect_bytes "$REP" $((1048576 + 131072)) $((8388608 - 1048576 - 131072)) 0x55
expect_bytes "$REP" $((8388608 + 4096)) $((SIZE - 4096 - 8388608 - 4096)) 0x55
[ "$(stat -c %s "$REP")" = $SIZE ] || die "replica size changed"

# ---- second sync: only the new writes. Tamper with an already synced block
# in the replica: it is clean now, so it must stay tampered.
fill "$REP" 1048576 4096 0x77
qio "$(uri d)" "write -P 0x44 20971520 65536" "write -P 0x45 3000 100"
ctl sync d --map m --to "$REP" --json >"$WORK/sync2.json" 2>/dev/null || die "sync 2 failed"
[ "$(jq -c '[.rounds, .copied_bytes, .converged, .dirty_bytes_left]' "$WORK/sync2.json")" = '[1,69632,true,0]' ] ||
  die "sync 2 result: $(cat "$WORK/sync2.json")"
cmp <(file_range "$IMG" 0 4096) <(file_range "$REP" 0 4096) || die "block 0 not copied in sync 2"
cmp <(file_range "$IMG" 20971520 65536) <(file_range "$REP" 20971520 65536) || die "20 MiB range not copied in sync 2"
expect_bytes "$REP" 1048576 4096 0x77
cmp <(file_range "$IMG" 1052672 126976) <(file_range "$REP" 1052672 126976) || die "sync 2 disturbed an earlier range"
expect_bytes "$REP" 8192 $((1048576 - 8192)) 0x55
expect_bytes "$REP" $((20971520 + 65536)) $((SIZE - 4096 - 20971520 - 65536)) 0x55
[ -z "$(ctl dirty list d m)" ] || die "map not empty after sync 2"

# A sync of a clean map copies nothing (text output).
out=$(ctl sync d --map m --to "$REP" 2>/dev/null) || die "sync 3 failed"
[ "$out" = "synced 0 B in 1 round(s), ${out#*round(s), }" ] && grep -q 'converged; 0 B still dirty$' <<<"$out" ||
  die "sync 3 printed: $out"
expect_bytes "$REP" 1048576 4096 0x77

stop_strata
echo PASS
