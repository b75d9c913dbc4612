#!/bin/bash
# FUSE export under ext4: a 512 MiB sparse image served with --fuse, looped (direct I/O), mkfs.ext4'd, filled with a tree (src/ and a 64 MiB random file), fsck-clean, survives a SIGTERM (exit 0, mount gone) and restart with every sha256 intact.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup mkfs.ext4 fsck.ext4 sha256sum jq

IMG=$WORK/disk.img
SIZE=$((512 << 20))
truncate -s $SIZE "$IMG"
start_strata --file "$IMG" --export disk --fuse "$MNT"
[ "$(fuse_mounts "$MNT")" = 1 ] || die "no fuse.strata mount at $MNT: $(grep "$MNT" /proc/mounts)"
[ "$(ls "$MNT")" = disk ] || die "the mount shows '$(ls "$MNT")', want 'disk'"
[ -f "$MNT/disk" ] || die "$MNT/disk is not a regular file"
[ "$(stat -c %s "$MNT/disk")" = $SIZE ] || die "$MNT/disk is $(stat -c %s "$MNT/disk") bytes, want $SIZE"
[ "$(stat -c %a "$MNT/disk")" = 600 ] || die "$MNT/disk has mode $(stat -c %a "$MNT/disk"), want 600"

attach_loop "$MNT/disk"
[ "$(blockdev --getsize64 "$LOOP")" = $SIZE ] || die "$LOOP is $(blockdev --getsize64 "$LOOP") bytes"
mkfs.ext4 -q -F "$LOOP" >"$WORK/mkfs.log" 2>&1 || die "mkfs.ext4 $LOOP: $(cat "$WORK/mkfs.log")"
FS=$WORK/fs
mkdir -p "$FS"
mount -t ext4 "$LOOP" "$FS" || die "mount $LOOP"
cp -a "$STRATA_SRC/src" "$FS/src"
mkdir -p "$FS/data/deep/er"
head -c $((64 << 20)) /dev/urandom >"$FS/data/random.bin"
echo "small" >"$FS/data/deep/er/small.txt"
: >"$FS/data/empty"
(cd "$FS" && find . -type f -not -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums"
nfiles=$(wc -l <"$WORK/sums")
[ "$nfiles" -ge 20 ] || die "only $nfiles files in the tree"
grep -q ' ./data/random.bin$' "$WORK/sums" || die "random.bin has no checksum"
du_src=$(du -sb "$STRATA_SRC/src" | cut -f1)
du_fs=$(du -sb "$FS/src" | cut -f1)
[ "$du_src" = "$du_fs" ] || die "copy of src/ is $du_fs bytes, the original $du_src"
umount "$FS" || die "umount $FS"
fsck.ext4 -fn "$LOOP" >"$WORK/fsck.log" 2>&1 || die "fsck.ext4 -fn $LOOP: $(cat "$WORK/fsck.log")"
losetup -d "$LOOP" || die "losetup -d $LOOP"
LOOP=
# The loop device is really gone before the server stops.
for _ in $(seq 50); do [ -z "$(losetup -j "$MNT/disk")" ] && break; sleep 0.1; done
[ -z "$(losetup -j "$MNT/disk")" ] || die "loop device still attached: $(losetup -j "$MNT/disk")"

# SIGTERM: exit status 0 (checked by stop_strata) and the mount is gone.
stop_strata
[ "$(fuse_mounts "$MNT")" = 0 ] || die "the FUSE mount is still in /proc/mounts after SIGTERM"
! grep -q " $MNT " /proc/mounts || die "something is still mounted at $MNT: $(grep " $MNT " /proc/mounts)"
[ -z "$(ls -A "$MNT")" ] || die "$MNT is not empty after the unmount: $(ls -A "$MNT")"
# The image file itself holds the file system now.
fsck.ext4 -fn "$IMG" >"$WORK/fsck2.log" 2>&1 || die "fsck.ext4 -fn on the image: $(cat "$WORK/fsck2.log")"

# Restart on the same image; mount read-only and check every file.
start_strata --file "$IMG" --export disk --fuse "$MNT"
[ "$(stat -c %s "$MNT/disk")" = $SIZE ] || die "after restart $MNT/disk is $(stat -c %s "$MNT/disk") bytes"
attach_loop -r "$MNT/disk"
mount -t ext4 -o ro,noload "$LOOP" "$FS" || die "mount $LOOP read-only after restart"
(cd "$FS" && sha256sum --quiet -c "$WORK/sums") >"$WORK/check.log" 2>&1 ||
  die "checksums differ after restart: $(head -20 "$WORK/check.log")"
n2=$(cd "$FS" && find . -type f -not -path './lost+found/*' | wc -l)
[ "$n2" = "$nfiles" ] || die "$n2 files after restart, $nfiles before"
umount "$FS" || die "umount $FS after restart"
losetup -d "$LOOP" || die "losetup -d $LOOP after restart"
for _ in $(seq 50); do [ -z "$(losetup -j "$MNT/disk")" ] && break; sleep 0.1; done
stop_strata
[ "$(fuse_mounts "$MNT")" = 0 ] || die "the FUSE mount is still there after the second SIGTERM"
echo PASS
