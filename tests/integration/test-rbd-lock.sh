#!/bin/bash
# rbd target exclusive lock: a second strata on the same image is refused while the first serves, and its error names the holder (client id, address, host and pid); a read-only strata (`ro`) on the same image still serves; after kill -9 of the holder a restarted strata takes the lock within 10 s (the dead holder is blocklisted and its lock broken) and serves the data, and the dead holder is on the OSD blocklist.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
requires qemu-io jq timeout

now_ms() { echo $(($(date +%s%N) / 1000000)); }
ceph_start
SIZE=$((16 << 20))
rbd_create lk 16M
rbd_table "$WORK/t.conf" rbd/lk $SIZE
start_strata --table "$WORK/t.conf" --export d
qio "$(uri d)" "write -P 0x61 0 1M" flush
st=$(ctl status d --json | jq '.[0].segments[0].info')
[ "$(jq -r .lock <<<"$st")" = held ] || die "the first strata does not hold the lock: $st"
owner=$(jq -r .lock_owner <<<"$st")
client=${owner%% *}
FIRST=$STRATA_PID

# A second server: refused, naming the holder.
rc=0
out=$(timeout 60 "$STRATA" serve --table "$WORK/t.conf" --unix "$WORK/2.sock" --control "$WORK/2.ctl" 2>&1) || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "the second strata did not fail at once (status $rc): $out"
grep -qF "is locked by $client" <<<"$out" || die "the error does not name the holder $client: $out"
grep -qF "pid $FIRST" <<<"$out" || die "the error does not name the holder's pid $FIRST: $out"
grep -qF "host $(hostname)" <<<"$out" || die "the error does not name the holder's host: $out"
[ ! -e "$WORK/2.sock" ] || die "the second strata created its socket"
echo "second server refused: $out"
# The first still writes (the refusal did not take its lock).
qio "$(uri d)" "write -P 0x62 1M 1M" flush
[ "$(ctl status d --json | jq -r '.[0].segments[0].info.lock')" = held ] || die "the first strata lost its lock"

# Read-only beside it: allowed.
rbd_table "$WORK/ro.conf" rbd/lk $SIZE ro
"$STRATA" serve --table "$WORK/ro.conf" --unix "$WORK/ro.sock" --control "$WORK/ro.ctl" >"$WORK/ro.log" 2>&1 &
RO_PID=$!
for i in $(seq 1 200); do [ -S "$WORK/ro.ctl" ] && break; sleep 0.05; done
qio -r "nbd+unix:///?socket=$WORK/ro.sock" "read -P 0x61 0 1M" "read -P 0x62 1M 1M"
kill -TERM $RO_PID
wait $RO_PID || die "the read-only strata did not exit cleanly: $(cat "$WORK/ro.log")"

# kill -9 the holder; a new strata takes the lock within 10 s.
kill9_strata
t0=$(now_ms)
start_strata --table "$WORK/t.conf" --export d
t=$(($(now_ms) - t0))
echo "restarted strata took the lock in $t ms"
[ $t -le 10000 ] || die "taking the lock of the killed holder took $t ms (> 10 s)"
grep -q "does not answer: blocklisting it and breaking its lock" "$STRATA_LOG" || die "no lock break logged"
timeout 60 ceph osd blocklist ls 2>/dev/null | grep -qF "${owner#* }" ||
  die "the dead holder ${owner#* } is not blocklisted: $(timeout 30 ceph osd blocklist ls 2>&1)"
st=$(ctl status d --json | jq '.[0].segments[0].info')
[ "$(jq -r .lock <<<"$st")" = held ] || die "the new strata does not hold the lock: $st"
[ "$(jq -r .lock_owner <<<"$st")" != "$owner" ] || die "the lock owner did not change: $st"
qio "$(uri d)" "read -P 0x61 0 1M" "read -P 0x62 1M 1M" "write -P 0x63 2M 1M" flush
stop_strata
rbd_export_file rbd/lk "$WORK/lk.img"
expect_bytes "$WORK/lk.img" $((2 << 20)) $((1 << 20)) 0x63
echo PASS
