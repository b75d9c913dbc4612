#!/bin/bash
# Read views follow the filesystem: on XFS (whose hole punching drops and may zero cached pages over a range rounded out past the bytes asked for) a writable file segment never answers reads from its mapping, so a reply sent by reference cannot pick up zeros from a neighbouring TRIM; the same file served read-only does; on ext4 a writable segment does. Data is right in every case, including unaligned TRIMs next to reads.
. "$(dirname "$0")/functions.sh"
requires mkfs.xfs losetup mount umount jq qemu-io nbdcopy cmp

XFS_LOOP= XFS_DIR=$WORK/xfs
xfs_cleanup() {
  local rc=$?
  if [ -n "$STRATA_PID" ] && kill -0 "$STRATA_PID" 2>/dev/null; then
    kill -9 "$STRATA_PID" 2>/dev/null || true
    wait "$STRATA_PID" 2>/dev/null || true
  fi
  STRATA_PID=
  mountpoint -q "$XFS_DIR" && umount "$XFS_DIR"
  [ -z "$XFS_LOOP" ] || losetup -d "$XFS_LOOP" 2>/dev/null || true
  (exit $rc)
  cleanup
}
trap xfs_cleanup EXIT

truncate -s 512M "$WORK/xfs.img"
mkfs.xfs -q "$WORK/xfs.img" || die "mkfs.xfs failed"
XFS_LOOP=$(losetup -f --show "$WORK/xfs.img") || die "losetup failed"
mkdir -p "$XFS_DIR"
mount -t xfs "$XFS_LOOP" "$XFS_DIR" || die "mount failed"

SIZE=$((8 * 1048576))
head -c $SIZE /dev/urandom >"$XFS_DIR/d.img"
cp "$XFS_DIR/d.img" "$WORK/want.img"
head -c $SIZE /dev/urandom >"$WORK/e.img"   # on ext4 (the test's own directory)
mapped() { ctl status "$1" --json | jq '.[0].segments[0].info.mapped_reads'; }
cat >"$WORK/t.conf" <<CONF
[x]
0 $((SIZE / 512)) file $XFS_DIR/d.img 0
[xro]
0 $((SIZE / 512)) file $XFS_DIR/d.img 0 ro
[e]
0 $((SIZE / 512)) file $WORK/e.img 0
CONF
cat "$XFS_DIR/d.img" "$WORK/e.img" >/dev/null   # cached: views possible where allowed
start_strata --table "$WORK/t.conf" --allow-path "$XFS_DIR"

nbdcopy "$(uri x)" "$WORK/x.out"
cmp "$WORK/x.out" "$WORK/want.img" || die "writable XFS segment: wrong bytes"
[ "$(mapped x)" = 0 ] || die "a writable segment on XFS answered $(mapped x) reads from its mapping"

nbdcopy "$(uri xro)" "$WORK/xro.out"
cmp "$WORK/xro.out" "$WORK/want.img" || die "read-only XFS segment: wrong bytes"
[ "$(mapped xro)" -gt 0 ] || die "a read-only segment on XFS made no mapped reads"

nbdcopy "$(uri e)" "$WORK/e.out"
cmp "$WORK/e.out" "$WORK/e.img" || die "ext4 segment: wrong bytes"
[ "$(mapped e)" -gt 0 ] || die "a writable segment on ext4 made no mapped reads"

# Unaligned TRIMs between reads of the bytes around them, on both writable
# segments: the bytes around each TRIM keep their data.
for dev in x e; do
  if [ $dev = x ]; then ref=$WORK/want.img; else ref=$WORK/e.img; fi
  for off in 5000 70000 1049000; do
    qio "$(uri $dev)" "discard $off 1000"
    fill "$ref" $off 1000 0x00
  done
  nbdcopy "$(uri $dev)" "$WORK/$dev.after"
  cmp "$WORK/$dev.after" "$ref" || die "$dev: bytes around unaligned TRIMs changed"
done

stop_strata
echo PASS
