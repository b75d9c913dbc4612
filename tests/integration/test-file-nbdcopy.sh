#!/bin/bash
# file target with nbdcopy: copying an image in and back out is byte-identical, the backing file holds it at the table offset, and qemu-img compare finds the export equal to the source.
. "$(dirname "$0")/functions.sh"
requires nbdcopy qemu-img cmp

SIZE=$((24 * 1048576)) OFF=4096
SRC=$WORK/src.img
# Random data with a zero hole and a run of 0xff in the middle.
head -c $SIZE /dev/urandom >"$SRC"
fill "$SRC" $((5 * 1048576)) $((3 * 1048576)) 0x00
fill "$SRC" $((11 * 1048576 + 100)) 777777 0xff

F=$WORK/disk.img
bytes $((OFF + SIZE)) 0x5e >"$F"   # not zero: a skipped zero range would show
echo "0 $((SIZE / 512)) file $F $OFF" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export disk

nbdcopy --flush "$SRC" "$(uri disk)" || die "nbdcopy into the export failed"
cmp <(file_range "$F" $OFF $SIZE) "$SRC" || die "the backing file does not hold the copied image at offset $OFF"
expect_bytes "$F" 0 $OFF 0x5e

nbdcopy "$(uri disk)" "$WORK/out.img" || die "nbdcopy out of the export failed"
cmp "$WORK/out.img" "$SRC" || die "the image copied out differs from the one copied in"
[ "$(stat -c %s "$WORK/out.img")" -eq $SIZE ] || die "copied-out image has the wrong size"

qemu-img compare -q -f raw -F raw "$SRC" "$(uri disk)" || die "qemu-img compare: the export differs from the source"
# And the comparison can fail: change one byte of the export.
last=$(file_range "$SRC" $((SIZE - 1)) 1 | od -An -tu1)
qio "$(uri disk)" "write -P $(( (last + 1) % 256 )) $((SIZE - 1)) 1"
if qemu-img compare -q -f raw -F raw "$SRC" "$(uri disk)"; then die "qemu-img compare missed a changed byte"; fi

echo PASS
