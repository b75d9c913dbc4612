#!/bin/bash
# `fuse stop` on a mount a loop device still holds: the mount is detached at once, the loop device keeps working (writes and reads reach the image), the server stays healthy (NBD I/O, control socket), and it exits cleanly on SIGTERM once the loop device is gone.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup qemu-io

IMG=$WORK/disk.img
truncate -s $((8 << 20)) "$IMG"
start_strata --file "$IMG"
ctl fuse start "$MNT" >/dev/null || die "fuse start failed"
attach_loop "$MNT/default"
ctl fuse stop "$MNT" || die "fuse stop of a busy mount failed"
[ "$(fuse_mounts "$MNT")" = 0 ] || die "$MNT is still mounted after fuse stop"
[ -z "$(ctl fuse list)" ] || die "fuse list after stop: $(ctl fuse list)"
grep -q "still in use" "$STRATA_LOG" || die "the log does not say the mount was still in use"
# The loop device still works through the detached mount.
head -c 65536 /dev/urandom >"$WORK/p"
dd if="$WORK/p" of="$LOOP" bs=64k seek=16 oflag=direct conv=fsync status=none || die "write through the loop device failed"
cmp <(dd if="$LOOP" bs=64k skip=16 count=1 iflag=direct status=none) "$WORK/p" || die "read through the loop device differs"
cmp <(dd if="$IMG" bs=64k skip=16 count=1 status=none) "$WORK/p" || die "the write did not reach the image"
# The server is fine: NBD I/O and the control socket.
qemu-io -f raw "$(uri)" -c "write -P 0x5a 0 4096" -c "read -P 0x5a 0 4096" >/dev/null || die "NBD I/O after fuse stop failed"
ctl list >/dev/null || die "control socket after fuse stop"
losetup -d "$LOOP" || die "losetup -d failed"
LOOP=
stop_strata
echo PASS
