#!/bin/bash
# FUSE export data integrity under load: fio io_uring direct randrw 4k QD32 with crc32c verify, and a 1M sequential write+verify, on a loop device over the FUSE file; the image then equals the loop device byte for byte.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup fio cmp

IMG=$WORK/disk.img
SIZE=$((512 << 20))
truncate -s $SIZE "$IMG"
start_strata --file "$IMG" --export disk --fuse "$MNT"
attach_loop "$MNT/disk"

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

w0=$(seg_counter disk writes)
run_fio randrw --rw=randrw --bs=4k --iodepth=32 --size=256M
w1=$(seg_counter disk writes)
# The writes went through strata (not some cache in between).
[ $((w1 - w0)) -ge 10000 ] || die "only $((w1 - w0)) writes reached the device during the randrw job"
run_fio seqwrite --rw=write --bs=1M --iodepth=8 --offset=256M --size=256M
[ "$(seg_counter disk errors)" = 0 ] || die "the file segment counted errors"

# What the loop device shows is what the image holds.
cmp <(dd if="$LOOP" bs=1M iflag=direct status=none) "$IMG" || die "the loop device and the image differ"
losetup -d "$LOOP"
stop_strata
echo PASS
