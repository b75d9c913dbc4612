#!/bin/bash
# FUSE export data integrity under load, through both transports (FUSE over io_uring, the default here, and /dev/fuse with --fuse-io-uring off): fio io_uring direct randrw 4k QD32 with crc32c verify, and a 1M sequential write+verify, on a loop device over the FUSE file; the image then equals the loop device byte for byte, and the requests went through the transport asked for.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup fio cmp jq

SIZE=$((512 << 20))

run_fio() {  # run_fio NAME FIO-ARGS...
  local name=$1 rc=0
  shift
  timeout 120 fio --name="$name" --filename="$LOOP" --ioengine=io_uring --direct=1 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --verify_state_save=0 --randrepeat=0 "$@" >"$WORK/$name.out" 2>&1 || rc=$?
  [ $rc -eq 0 ] || die "fio $name exited $rc: $(tail -30 "$WORK/$name.out")"
  grep -q "err= 0" "$WORK/$name.out" || die "fio $name: no 'err= 0': $(cat "$WORK/$name.out")"
  ! grep -Eqi "verify.*(fail|bad)|crc32c.*(bad|wanted)" "$WORK/$name.out" || die "fio $name reported a verify failure: $(cat "$WORK/$name.out")"
  # Something was really written and then read back for verification.
  grep -Eq "^ +write: IOPS=" "$WORK/$name.out" || die "fio $name wrote nothing: $(cat "$WORK/$name.out")"
  grep -Eq "^ +read: IOPS=" "$WORK/$name.out" || die "fio $name read nothing back: $(cat "$WORK/$name.out")"
}

for mode in on off; do
  IMG=$WORK/disk-$mode.img
  truncate -s $SIZE "$IMG"
  start_strata --file "$IMG" --export disk --fuse "$MNT" --fuse-io-uring "$mode"
  attach_loop "$MNT/disk"

  w0=$(seg_counter disk writes)
  run_fio randrw-$mode --rw=randrw --bs=4k --iodepth=32 --size=256M
  w1=$(seg_counter disk writes)
  # The writes went through strata (not some cache in between).
  [ $((w1 - w0)) -ge 10000 ] || die "$mode: only $((w1 - w0)) writes reached the device during the randrw job"
  run_fio seqwrite-$mode --rw=write --bs=1M --iodepth=8 --offset=256M --size=256M
  [ "$(seg_counter disk errors)" = 0 ] || die "$mode: the file segment counted errors"

  # What the loop device shows is what the image holds.
  cmp <(dd if="$LOOP" bs=1M iflag=direct status=none) "$IMG" || die "$mode: the loop device and the image differ"
  # The requests went through the transport asked for.
  info=$(ctl fuse list --json)
  uring=$(jq '.[0].uring_requests' <<<"$info") dev=$(jq '.[0].dev_requests' <<<"$info")
  if [ "$mode" = on ]; then
    [ "$(jq -r '.[0].transport' <<<"$info")" = io_uring ] || die "on: transport: $info"
    [ "$uring" -ge $((w1 - w0)) ] || die "on: only $uring requests through io_uring: $info"
    [ "$dev" -lt 100 ] || die "on: $dev requests still through /dev/fuse: $info"
  else
    [ "$(jq -r '.[0].transport' <<<"$info")" = /dev/fuse ] || die "off: transport: $info"
    [ "$uring" = 0 ] || die "off: $uring requests through io_uring: $info"
    [ "$dev" -ge $((w1 - w0)) ] || die "off: only $dev requests through /dev/fuse: $info"
  fi
  losetup -d "$LOOP"
  stop_strata
done
echo PASS
