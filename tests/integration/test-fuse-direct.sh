#!/bin/bash
# FUSE export of an O_DIRECT device (serve --file --direct): aligned writes through the FUSE file (4 KiB and 1 MiB, buffered and O_DIRECT by the writer) and a fio verify run on a loop device over it succeed and land in the image, with no errors counted.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup fio jq cmp

IMG=$WORK/disk.img
truncate -s $((64 << 20)) "$IMG"
start_strata --file "$IMG" --direct --export disk --fuse "$MNT"
ctl table disk | grep -q "direct=on" || die "the device is not direct=on: $(ctl table disk)"
head -c $((2 << 20)) /dev/urandom >"$WORK/src"

dd if="$WORK/src" of="$MNT/disk" bs=4k count=256 conv=notrunc status=none 2>"$WORK/dd.err" ||
  die "4 KiB writes to the FUSE file of a --direct device failed: $(cat "$WORK/dd.err")"
dd if="$WORK/src" of="$MNT/disk" bs=1M seek=4 conv=notrunc oflag=direct status=none 2>"$WORK/dd.err" ||
  die "1 MiB O_DIRECT writes to the FUSE file of a --direct device failed: $(cat "$WORK/dd.err")"
cmp <(file_range "$IMG" 0 $((1 << 20))) <(head -c $((1 << 20)) "$WORK/src") || die "the 4 KiB writes are not in the image"
cmp <(file_range "$IMG" $((4 << 20)) $((2 << 20))) "$WORK/src" || die "the 1 MiB writes are not in the image"
cmp <(dd if="$MNT/disk" bs=1M skip=4 count=2 iflag=direct status=none) "$WORK/src" || die "reading the data back differs"

attach_loop "$MNT/disk"
timeout 120 fio --name=direct --filename="$LOOP" --ioengine=io_uring --direct=1 --rw=randrw --bs=4k --iodepth=32 \
  --offset=8M --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 >"$WORK/fio.out" 2>&1 ||
  die "fio on a loop device over a --direct device failed: $(tail -20 "$WORK/fio.out")"
grep -q "err= 0" "$WORK/fio.out" || die "fio: no 'err= 0': $(cat "$WORK/fio.out")"
timeout 120 fio --name=seq --filename="$LOOP" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 \
  --offset=40M --size=24M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 >"$WORK/fio2.out" 2>&1 ||
  die "fio 1M on a loop device over a --direct device failed: $(tail -20 "$WORK/fio2.out")"
grep -q "err= 0" "$WORK/fio2.out" || die "fio 1M: no 'err= 0': $(cat "$WORK/fio2.out")"
losetup -d "$LOOP"
LOOP=
[ "$(seg_counter disk errors)" = 0 ] || die "the file segment counted errors"
! grep -q "FUSE write" "$STRATA_LOG" || die "the server logged failed writes: $(grep "FUSE write" "$STRATA_LOG" | head -5)"
stop_strata
echo PASS
