#!/bin/bash
# An online merge that stops part-way (the parent's filesystem fills up): the stack keeps serving with writes going to the parent; writes flushed then (into a chunk the merged top held over the parent's own data, and into chunks only the top held) survive kill -9 and read back after a restart, as does everything else; a merge that failed again is resumed with `merge` once there is room, and ends with the same bytes and a layer that checks clean.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdcopy jq

# The parent layer lives on a small tmpfs, so the merge's copy runs out of
# room while a ballast file takes most of it.
mkdir -p "$WORK/small"
mount -t tmpfs -o size=160M strata-test "$WORK/small" || die "cannot mount a tmpfs"
trap 'x=$?; umount -l "$WORK/small" 2>/dev/null; (exit $x); cleanup' EXIT
# ballast N: N MiB of it, or as much as fits.
ballast() { dd if=/dev/zero of="$WORK/small/ballast" bs=1M count="$1" status=none 2>/dev/null || true; }

SIZE=$((128 << 20))
truncate -s $SIZE "$WORK/base.img"
"$STRATA" layer create "$WORK/small/l1.layer" --size $SIZE >/dev/null
cow_table "$WORK/t.conf" $SIZE "$WORK/base.img" "$WORK/small/l1.layer"
start_strata --table "$WORK/t.conf"
qemu-io -f raw "$(uri d)" -c "write -P 0x22 0 8M" >/dev/null   # the parent's own data at [0, 8M)
stop_strata

"$STRATA" layer create "$WORK/top.layer" --parent "$WORK/small/l1.layer" >/dev/null
sed -i "s|cow [^ ]*l1.layer|cow $WORK/top.layer|" "$WORK/t.conf"
start_strata --table "$WORK/t.conf"
U=$(uri d)
qemu-io -f raw "$U" -c "write -P 0x11 0 96M" >/dev/null        # the top: 0x11 over [0, 96M)
layers() { ctl status d --json | jq '.[0].segments[0].info.layers'; }
[ "$(layers)" = 2 ] || die "expected 2 layers, got $(layers)"

ballast 100
out=$(ctl merge d --json 2>&1) && die "the merge should have run out of room: $out"
grep -q "run the merge again" <<<"$out" || die "the failed merge does not say how to go on: $out"
[ "$(layers)" = 2 ] || die "after the failed merge: expected 2 layers, got $(layers)"
rm -f "$WORK/small/ballast"
# Writes now go to the parent. 0x77 into a chunk the top holds over the
# parent's 0x22, 0x66 into chunks only the top holds; then FLUSH.
qemu-io -f raw "$U" -c "write -P 0x77 4M 4k" -c "write -P 0x66 12M 64k" -c flush >/dev/null ||
  die "writes after the failed merge failed"
kill9_strata

check_data() {
  qemu-io -r -f raw "$U" -c "read -P 0x77 4M 4k" -c "read -P 0x66 12M 64k" -c "read -P 0x11 0 4M" \
    -c "read -P 0x11 $(((4 << 20) + 4096)) $(((4 << 20) - 4096))" -c "read -P 0x11 8M 4M" \
    -c "read -P 0x11 $(((12 << 20) + 65536)) $(((84 << 20) - 65536))" -c "read -P 0 96M 32M" >"$WORK/r.log" 2>&1 ||
    { head -5 "$WORK/r.log"; die "$1: cannot read or wrong data"; }
  if grep -q "Pattern verification failed" "$WORK/r.log"; then
    grep -B1 "Pattern verification failed" "$WORK/r.log" | head -6
    die "$1: wrong data"
  fi
}
start_strata --table "$WORK/t.conf"
[ "$(layers)" = 2 ] || die "after the restart: expected 2 layers, got $(layers)"
check_data "flushed writes after kill -9 during a merge"
nbdcopy "$U" "$WORK/before.img"

# Fail once more (the write layer is the parent after this), then resume.
ballast 120
out=$(ctl merge d --json 2>&1) && die "the second merge should have run out of room: $out"
rm -f "$WORK/small/ballast"
ctl merge d --json >"$WORK/merge.out" 2>&1 || { cat "$WORK/merge.out"; die "the resumed merge failed"; }
grep -q "merge: resuming the merge of" "$STRATA_LOG" || die "the last merge did not resume the stopped one"
[ "$(layers)" = 1 ] || die "expected 1 layer after the merge, got $(layers)"
check_data "after the resumed merge"
nbdcopy "$U" "$WORK/after.img"
cmp "$WORK/before.img" "$WORK/after.img" || die "the merge changed the device's bytes"
stop_strata
# The parent lives in another directory: it stays where it is, the top is gone.
[ ! -e "$WORK/top.layer" ] || die "the merged top is still there"
"$STRATA" layer check "$WORK/small/l1.layer" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; die "layer check after the merge"; }
echo PASS
