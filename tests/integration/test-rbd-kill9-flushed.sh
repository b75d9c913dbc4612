#!/bin/bash
# rbd target durability: a libnbd client writes distinct 4 KiB blocks with 16 in flight and a FLUSH every 32 acknowledgements; strata is killed with SIGKILL mid-stream; `rbd export` of the image then holds every write acknowledged before a completed FLUSH, and every other block holds its own data or zeros (nothing torn, nothing foreign).
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
CLIENT=$STRATA_SRC/tests/integration/rbd_kill9_client.py
[ -f "$CLIENT" ] || die "missing $CLIENT"
$PYTHON -c 'import nbd' || die "/usr/bin/python3 cannot import nbd (python3-libnbd)"

ceph_start
# 256 MiB, 65,536 blocks: the client must still be writing at the kill (with 64 MiB it
# once wrote every block before it, and the check below had nothing to catch).
SIZE=$((256 << 20))
rbd_create k9 256M
rbd_table "$WORK/t.conf" rbd/k9 $SIZE
start_strata --table "$WORK/t.conf" --export d

$PYTHON "$CLIENT" run "$(uri d)" $SIZE "$WORK/writes.log" >"$WORK/client.out" 2>&1 &
CPID=$!
# Kill once enough is durable (at least 300 flushed writes) and writes are in flight.
end=$((SECONDS + 60))
flushes() { local n; n=$(grep -c '^F' "$WORK/writes.log" 2>/dev/null) || true; echo "${n:-0}"; }
until [ "$(flushes)" -ge 10 ]; do
  running "$CPID" || { cat "$WORK/client.out"; die "the client exited early"; }
  [ $SECONDS -lt $end ] || die "the client made fewer than 10 flushes in 60 s"
  sleep 0.05
done
sleep 0.3
inflight=$(ctl status d --json | jq '.[0].segments[0].info.in_flight')
kill9_strata
wait "$CPID" || true
cat "$WORK/client.out"
echo "requests in flight in strata just before the kill: $inflight"
rbd_export_file rbd/k9 "$WORK/k9.img"
$PYTHON "$CLIENT" check "$WORK/k9.img" "$WORK/writes.log" || die "the image lost flushed writes or holds torn data"
# Not vacuous: writes were acknowledged after the last completed FLUSH.
last_f=$(grep '^F' "$WORK/writes.log" | tail -1 | cut -d' ' -f2)
acks=$(grep -c '^A' "$WORK/writes.log")
[ "$acks" -gt "$last_f" ] || die "no write was acknowledged after the last FLUSH ($acks acks, last FLUSH covers $last_f)"
echo PASS
