#!/bin/bash
# A power cut during an online merge of the top (layers on XFS over a loop device; the cut is
# `xfs_io -x -c shutdown`, which loses every write not on stable storage). The merge begins
# without a flush, so the top still holds unflushed writes (in place over flushed chunks, and in
# fresh chunks) when writes start going to the parent; a FLUSH answered after that must cover
# them. A failpoint holds the merge between the switch
# and the copy; strata is killed and the power cut then. After a restart every write a FLUSH
# covered reads back, the merge run again ends with the same bytes, and the layer checks clean.
# Then the same again with online_ops.py's random I/O: FLUSH, a burst of writes (some FUA), a
# merge started in the burst, kill -9 and a power cut, the crash rules.
. "$(dirname "$0")/functions.sh"
requires mkfs.xfs xfs_io losetup findmnt mountpoint qemu-io nbdcopy jq

LOOP=
XFS=$WORK/xfs
trap 'x=$?; [ -z "$STRATA_PID" ] || { kill -9 "$STRATA_PID"; wait "$STRATA_PID"; STRATA_PID=; } 2>/dev/null
      umount -l "$XFS" 2>/dev/null; [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null; (exit $x); cleanup' EXIT
truncate -s 1G "$WORK/xfs.img"
mkfs.xfs -q "$WORK/xfs.img" || die "mkfs.xfs failed"
LOOP=$(losetup -f --show "$WORK/xfs.img") || die "losetup failed"
mkdir -p "$XFS"
mount -t xfs "$LOOP" "$XFS" || die "mount $LOOP failed"
power_cut() {
  xfs_io -x -c shutdown "$XFS" || die "xfs_io shutdown failed"
  # (The killed server's io_uring lets go of its files a moment after it is gone.)
  local i
  for i in $(seq 200); do umount "$XFS" 2>/dev/null && break; sleep 0.1; done
  ! mountpoint -q "$XFS" || die "umount after the shutdown failed: $(umount "$XFS" 2>&1)"
  mount -t xfs "$LOOP" "$XFS" || die "mount after the shutdown failed"
}

SIZE=$((32 << 20))
truncate -s $SIZE "$XFS/base.img"
"$STRATA" layer create "$XFS/l1.layer" --size $SIZE >/dev/null
cow_table "$WORK/t.conf" $SIZE "$XFS/base.img" "$XFS/l1.layer"
start_strata --table "$WORK/t.conf"
qio "$(uri d)" "write -P 0x22 0 8M" "flush"   # the parent's own data at [0, 8M)
stop_strata
"$STRATA" layer create "$XFS/top.layer" --parent "$XFS/l1.layer" >/dev/null
sed -i "s|cow [^ ]*l1.layer|cow $XFS/top.layer|" "$WORK/t.conf"
sync -f "$XFS"

STRATA_FAILPOINT_MERGE_COPY_DELAY_MS=60000 start_strata --table "$WORK/t.conf"
U=$(uri d)
# In the top: 0x11 over [0, 4M) (over the parent's 0x22) and [16M, 20M), flushed. Then, not
# flushed: 0x33 over [1M, 2M) and [17M, 18M) (in place over flushed chunks) and [24M, 25M)
# (fresh chunks). Then the merge (held after the switch); then 0x44 at [30M, 30M+64k), which
# goes to the parent, and a FLUSH: it covers the 0x33 writes the top took before the merge.
$PYTHON - "$U" "$STRATA" "$CTL" "$STRATA_LOG" "$STRATA_PID" <<'PY' || die "the writer failed"
import nbd, os, signal, subprocess, sys, time
uri, strata, ctl, log, pid = sys.argv[1:6]
M = 1 << 20
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"\x11" * (4 * M), 0)
h.pwrite(b"\x11" * (4 * M), 16 * M)
h.flush()
for off in (1 * M, 17 * M, 24 * M):
    h.pwrite(b"\x33" * M, off)
merge = subprocess.Popen([strata, "merge", "d", "--control", ctl], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
deadline = time.time() + 20
while b"merge: writes now go to" not in open(log, "rb").read():
    if time.time() > deadline or merge.poll() is not None:
        sys.exit("the merge did not switch the write layer (status %s)" % merge.poll())
    time.sleep(0.02)
h.pwrite(b"\x44" * (64 << 10), 30 * M)
h.flush()
st = subprocess.run([strata, "status", "d", "--control", ctl, "--json"], capture_output=True, text=True)
info = __import__("json").loads(st.stdout)[0]["segments"][0]["info"]
if info["merging"] != 1 or info["merge_copied_chunks"] != 0:
    sys.exit("expected the merge held before its copy: %s" % info)
os.kill(int(pid), signal.SIGKILL)
merge.wait()
PY
wait "$STRATA_PID" 2>/dev/null || true
STRATA_PID=
power_cut

start_strata --table "$WORK/t.conf"
layers() { ctl status d --json | jq '.[0].segments[0].info.layers'; }
[ "$(layers)" = 2 ] || die "after the power cut: expected 2 layers (the merge unfinished), got $(layers)"
check() {
  qio -r "$U" "read -P 0x11 0 1M" "read -P 0x33 1M 1M" "read -P 0x11 2M 2M" "read -P 0x22 4M 4M" \
    "read -P 0 8M 8M" "read -P 0x11 16M 1M" "read -P 0x33 17M 1M" "read -P 0x11 18M 2M" \
    "read -P 0 20M 4M" "read -P 0x33 24M 1M" "read -P 0 25M 5M" "read -P 0x44 30M 64k" \
    "read -P 0 $(((30 << 20) + 65536)) $(((2 << 20) - 65536))" >"$WORK/r.log" 2>&1 ||
    { head -5 "$WORK/r.log"; die "$1: cannot read the device"; }
  if grep -q "Pattern verification failed" "$WORK/r.log"; then
    grep -B1 "Pattern verification failed" "$WORK/r.log" | head -8
    die "$1: a write a FLUSH covered was lost"
  fi
}
check "after kill -9 and a power cut during the merge"
nbdcopy "$U" "$WORK/before.img"
ctl merge d --json >"$WORK/merge.out" 2>&1 || { cat "$WORK/merge.out"; die "the merge after the restart failed"; }
[ "$(layers)" = 1 ] || die "expected 1 layer after the merge, got $(layers)"
check "after the merge run again"
nbdcopy "$U" "$WORK/after.img"
cmp "$WORK/before.img" "$WORK/after.img" || die "the merge changed the device's bytes"
stop_strata
"$STRATA" layer check "$XFS/top.layer" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; die "layer check"; }

# Random I/O, a merge started in the crash burst, kill -9 and a power cut. Without the dirty
# map operations: a dirty map learns of a power loss from the boot id in its header (a map in
# use from another boot is reported inconsistent, docs/dirty-maps.md), and this power cut of one
# filesystem keeps the boot, so the map's bits that were not written back are lost unnoticed.
mkdir -p "$XFS/ops"
for seed in 2101 2102 2103; do
  "$PYTHON" "$STRATA_SRC/tests/stress/online_ops.py" --seed "$seed" --size 32 --seconds 3 --crash-op merge \
    --powercut --skip dirty_start,checkpoint,sync,sync_final --tmpdir "$XFS/ops" --strata "$STRATA" ||
    die "online_ops.py --powercut failed for seed $seed (the command to rerun it is above)"
done
echo PASS
