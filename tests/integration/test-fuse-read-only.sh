#!/bin/bash
# FUSE export of read-only devices (`[name ro]` table header, and serve --read-only): the file is 0400 (only the server's user), opening it for writing fails with EROFS even for root, reads work, a loop device over it comes up read-only, the image never changes; a writable device beside it is 0600 and writes reach its image, and another user cannot read it.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup blockdev md5sum cmp

R=$WORK/r.img W=$WORK/w.img
head -c $((4 << 20)) /dev/urandom >"$R"
bytes $((4 << 20)) 0x44 >"$W"
sum=$(md5sum <"$R")
cat >"$WORK/t.conf" <<CONF
[rodev ro]
0 8192 file $R 0
[rwdev]
0 8192 file $W 0
CONF
start_strata --table "$WORK/t.conf" --fuse "$MNT"
[ "$(ls "$MNT" | sort | tr '\n' ' ')" = "rodev rwdev " ] || die "the mount shows: $(ls "$MNT")"

check_ro_file() {  # check_ro_file FILE IMAGE
  local f=$1 img=$2 e
  [ "$(stat -c %a "$f")" = 400 ] || die "$f has mode $(stat -c %a "$f"), want 400"
  [ "$(stat -c %s "$f")" = $((4 << 20)) ] || die "$f is $(stat -c %s "$f") bytes"
  # Root ignores the mode bits: the server itself must refuse a writable open.
  for mode in O_WRONLY O_RDWR "O_WRONLY | os.O_TRUNC" "O_RDWR | os.O_APPEND"; do
    e=$(errno_of "os.open('$f', os.$mode)")
    [ "$e" = EROFS ] || [ "$e" = EACCES ] || die "open($f, $mode) gave '$e', want EROFS or EACCES"
  done
  ! dd if=/dev/zero of="$f" bs=4096 count=1 conv=notrunc status=none 2>/dev/null || die "dd wrote to $f"
  ! truncate -s 0 "$f" 2>/dev/null || die "truncate -s 0 $f succeeded"
  # Reads work, buffered and direct, and return the image's bytes.
  cmp "$f" "$img" || die "reading $f does not give $img"
  cmp <(dd if="$f" bs=64K iflag=direct status=none) "$img" || die "direct reads of $f do not give $img"
  # losetup falls back to a read-only loop device; writes to it fail.
  LOOP=$(losetup --direct-io=on -f --show "$f" 2>/dev/null) || die "losetup of $f failed"
  [ "$(blockdev --getro "$LOOP")" = 1 ] || die "$LOOP over $f is writable"
  ! dd if=/dev/zero of="$LOOP" bs=4096 count=1 oflag=direct status=none 2>/dev/null || die "dd wrote to $LOOP over $f"
  cmp <(dd if="$LOOP" bs=64K iflag=direct status=none) "$img" || die "$LOOP over $f does not read $img"
  losetup -d "$LOOP"
  LOOP=
}

check_ro_file "$MNT/rodev" "$R"
[ "$(md5sum <"$R")" = "$sum" ] || die "the read-only image changed"
[ "$(seg_counter rodev writes)" = 0 ] || die "writes reached the read-only device"

# The writable device beside it.
[ "$(stat -c %a "$MNT/rwdev")" = 600 ] || die "$MNT/rwdev has mode $(stat -c %a "$MNT/rwdev"), want 600"
[ "$(errno_of "os.close(os.open('$MNT/rwdev', os.O_RDWR))")" = ok ] || die "cannot open $MNT/rwdev read-write"
# Another user cannot read the raw device.
if setpriv --reuid=65534 --regid=65534 --clear-groups head -c 1 "$MNT/rwdev" >/dev/null 2>&1; then
  die "user 65534 can read $MNT/rwdev"
fi
fill "$MNT/rwdev" 1048576 65536 0x77
expect_bytes "$W" 1048576 65536 0x77
expect_bytes "$W" 0 1048576 0x44
expect_bytes "$MNT/rwdev" 1048576 65536 0x77
attach_loop "$MNT/rwdev"
[ "$(blockdev --getro "$LOOP")" = 0 ] || die "$LOOP over rwdev is read-only"
bytes 4096 0x55 | dd of="$LOOP" bs=4096 seek=2 oflag=direct status=none || die "dd to $LOOP over rwdev"
expect_bytes "$W" 8192 4096 0x55
losetup -d "$LOOP"
LOOP=
stop_strata

# serve --read-only: every device, here the shorthand's unnamed one.
start_strata --file "$W" --read-only --fuse "$MNT"
[ "$(ls "$MNT")" = default ] || die "the mount shows '$(ls "$MNT")', want 'default'"
wsum=$(md5sum <"$W")
cp "$W" "$WORK/w.copy"
check_ro_file "$MNT/default" "$WORK/w.copy"
[ "$(md5sum <"$W")" = "$wsum" ] || die "the image served with --read-only changed"
stop_strata
echo PASS
