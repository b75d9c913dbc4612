#!/bin/bash
# FUSE export discard/zero: fallocate --punch-hole on the FUSE file and blkdiscard on a loop device over it punch holes in the backing image (its allocated blocks drop, the range reads zero), fallocate -z and blkdiscard -z zero a range; every byte outside the ranges is untouched.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup blkdiscard fallocate jq cmp

M=$((1 << 20))
IMG=$WORK/disk.img
head -c $((16 * M)) /dev/urandom >"$IMG"
sync "$IMG"
cp "$IMG" "$WORK/orig.img"
start_strata --file "$IMG" --export disk --fuse "$MNT"
F=$MNT/disk

blocks() { stat -c %b "$IMG"; }
# Requests that reached the device as TRIM or as WRITE_ZEROES (punch-hole is
# a zero that may trim: reads after it must give zeros).
trims_zeros() { ctl status disk --json | jq '.[0].segments[0].info | .trims + .zeros'; }
# expect_zero OFF LEN: the range is zero in the image and through the FUSE file.
expect_zero() {
  expect_bytes "$IMG" "$1" "$2" 0x00
  cmp <(dd if="$F" bs=64K iflag=direct,skip_bytes,count_bytes skip="$1" count="$2" status=none) <(bytes "$2" 0x00) ||
    die "$F: bytes $1..$(($1 + $2)) do not read as zeros"
}
# expect_orig OFF LEN: the range still holds the original data.
expect_orig() {
  cmp <(file_range "$IMG" "$1" "$2") <(file_range "$WORK/orig.img" "$1" "$2") ||
    die "image bytes $1..$(($1 + $2)) changed"
}

# 1. fallocate --punch-hole on the FUSE file: 1 MiB..3 MiB.
b0=$(blocks)
t0=$(trims_zeros)
fallocate --punch-hole --offset $M --length $((2 * M)) "$F" || die "fallocate --punch-hole on $F"
b1=$(blocks)
[ $((b0 - b1)) -ge $((2 * M / 512)) ] || die "punch-hole freed $((b0 - b1)) sectors of the image, want >= $((2 * M / 512))"
[ "$(trims_zeros)" -gt "$t0" ] || die "punch-hole reached the device as neither trim nor zero"
expect_zero $M $((2 * M))
expect_orig 0 $M
expect_orig $((3 * M)) $((13 * M))
[ "$(stat -c %s "$F")" = $((16 * M)) ] || die "punch-hole changed the size of $F"
[ "$(stat -c %s "$IMG")" = $((16 * M)) ] || die "punch-hole changed the size of the image"

# 2. blkdiscard on a loop device over the FUSE file: 5 MiB..6 MiB.
attach_loop "$F"
[ "$(cat "/sys/block/${LOOP#/dev/}/queue/discard_max_bytes")" -gt 0 ] || die "$LOOP does not offer discard"
t0=$(trims_zeros)
blkdiscard --offset $((5 * M)) --length $M "$LOOP" || die "blkdiscard $LOOP"
b2=$(blocks)
[ $((b1 - b2)) -ge $((M / 512)) ] || die "blkdiscard freed $((b1 - b2)) sectors of the image, want >= $((M / 512))"
[ "$(trims_zeros)" -gt "$t0" ] || die "blkdiscard reached the device as neither trim nor zero"
expect_zero $((5 * M)) $M
cmp <(dd if="$LOOP" bs=64K iflag=direct,skip_bytes,count_bytes skip=$((5 * M)) count=$M status=none) <(bytes $M 0x00) ||
  die "$LOOP does not read zeros where it was discarded"
expect_orig $((3 * M)) $((2 * M))
expect_orig $((6 * M)) $((10 * M))

# 3. fallocate -z (zero range) on the FUSE file: 8 MiB + 4 KiB, 1 MiB long.
z0=$(seg_counter disk zeros)
w0=$(seg_counter disk writes)
fallocate -z --offset $((8 * M + 4096)) --length $M "$F" || die "fallocate -z on $F"
[ "$(seg_counter disk zeros)" -gt "$z0" ] || die "fallocate -z was not a write-zeroes"
expect_zero $((8 * M + 4096)) $M
expect_orig $((6 * M)) $((2 * M + 4096))
expect_orig $((9 * M + 4096)) $((7 * M - 4096))

# 4. blkdiscard -z (BLKZEROOUT) on the loop device: 11 MiB..12 MiB.
blkdiscard -z --offset $((11 * M)) --length $M "$LOOP" || die "blkdiscard -z $LOOP"
expect_zero $((11 * M)) $M
expect_orig $((9 * M + 4096)) $((2 * M - 4096))
expect_orig $((12 * M)) $((4 * M))
[ "$(seg_counter disk zeros)" -gt "$((z0 + 1))" ] || die "blkdiscard -z was not a write-zeroes: $(ctl status disk --json)"
[ "$(seg_counter disk writes)" = "$w0" ] || die "zeroing wrote data instead: $(ctl status disk --json)"
[ "$(seg_counter disk errors)" = 0 ] || die "the file segment counted errors"

losetup -d "$LOOP"
LOOP=
stop_strata
# The whole image, once more: zeros exactly where asked, the rest original.
expect_orig 0 $M
expect_zero_img() { expect_bytes "$IMG" "$1" "$2" 0x00; }
expect_zero_img $M $((2 * M))
expect_zero_img $((5 * M)) $M
expect_zero_img $((8 * M + 4096)) $M
expect_zero_img $((11 * M)) $M
echo PASS
