#!/bin/bash
# rbd target under an OSD restart: fio writes 4k blocks at iodepth 32 with crc32c verification while the only OSD is stopped and started again; requests wait for it (none fails), fio's verify pass finds every block, strata counts no error, and requests really were held across the outage.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
requires fio jq

ceph_start
SIZE=$((16 << 20))
rbd_create osd 16M
rbd_table "$WORK/t.conf" rbd/osd $SIZE timeout=20
start_strata --table "$WORK/t.conf" --export d

cd "$WORK"
fio --name=v --ioengine=nbd --uri="$(uri d)" --rw=randwrite --bs=4k --iodepth=32 --size=$SIZE \
  --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --rate_iops=1500 \
  >"$WORK/fio.out" 2>&1 &
FIO=$!
# Restart the OSD once fio is well into its writes.
end=$((SECONDS + 30))
until [ "$(ctl status d --json | jq '.[0].segments[0].info.writes')" -ge 600 ]; do
  running $FIO || { cat "$WORK/fio.out"; die "fio ended before the restart"; }
  [ $SECONDS -lt $end ] || die "fio wrote fewer than 600 blocks in 30 s"
  sleep 0.1
done
w0=$(ctl status d --json | jq '.[0].segments[0].info.writes')
# Stop the OSD (SIGTERM: memstore keeps its data), hold it down 2 s, start it.
kill -TERM "$CEPH_OSD_PID"
while running "$CEPH_OSD_PID"; do sleep 0.05; done
wait "$CEPH_OSD_PID" 2>/dev/null || true
CEPH_OSD_PID=
sleep 0.5
down=$(ctl status d --json | jq -c '.[0].segments[0].info | [.writes, .in_flight, .errors]')
sleep 1.5
down2=$(ctl status d --json | jq -c '.[0].segments[0].info | [.writes, .in_flight, .errors]')
echo "OSD stopped at $w0 writes; while down: [writes, in_flight, errors] $down then $down2"
[ "$(jq '.[0]' <<<"$down")" = "$(jq '.[0]' <<<"$down2")" ] || die "writes completed while the only OSD was down: $down $down2"
[ "$(jq '.[1]' <<<"$down2")" -ge 1 ] || die "no request was held while the OSD was down: $down2"
[ "$(jq '.[2]' <<<"$down2")" = 0 ] || die "requests failed while the OSD was down: $down2"
ceph_start_osd
rc=0
wait $FIO || rc=$?
cat "$WORK/fio.out"
[ $rc -eq 0 ] || die "fio failed across the OSD restart (status $rc)"
grep -q "err= 0" "$WORK/fio.out" || die "fio did not report err= 0"
st=$(ctl status d --json | jq '.[0].segments[0].info')
[ "$(jq .errors <<<"$st")" = 0 ] || die "strata counted errors: $st"
[ "$(jq .writes <<<"$st")" -gt "$w0" ] || die "no write completed after the restart: $st"
stop_strata
echo PASS
