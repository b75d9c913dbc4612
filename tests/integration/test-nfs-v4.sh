#!/bin/bash
# nfs target over NFSv4.0 (version=4, ganesha's pseudo path): qemu-io patterns (4 KiB, 1 MiB in one COMPOUND WRITE, unaligned 512 bytes) read back and land in the server-side file; nbdcopy round trip; an acknowledged but unflushed write survives a power-cut crash of the server on XFS because the next FLUSH sees the new write verifier and writes it again (verifier_changes, rewritten_bytes); the table line keeps version=4.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
requires qemu-io nbdcopy mkfs.xfs xfs_io losetup jq cmp

nfs_xfs_setup
nfs_start_ganesha "$NFS_EXPORT"
DEV=$((8 << 20))
F=$NFS_EXPORT/disk.img
bytes $DEV 0x5e >"$F"
sync
# NFSv4 sees the export under its pseudo path (nfs-lib.sh: /export).
echo "0 $((DEV / 512)) nfs nfs://127.0.0.1/export/disk.img 0 version=4 timeout=10" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d
grep -q 'NFSv4' "$STRATA_LOG" || die "the target did not load as NFSv4: $(cat "$STRATA_LOG")"
ctl table d | grep -q 'version=4' || die "table line lost version=4: $(ctl table d)"

calls() { ctl status d --json | jq ".[0].segments[0].info.$1"; }
w0=$(calls write_calls)
qio "$(uri d)" "write -P 0x22 65536 1048576"
w1=$(calls write_calls)
# A 1 MiB write is one COMPOUND WRITE (ganesha takes 1 MiB), not 293 of 3.5 KiB.
[ $((w1 - w0)) -eq 1 ] || die "a 1 MiB write took $((w1 - w0)) NFSv4 WRITE calls"
qio "$(uri d)" "write -P 0x11 0 4096" "write -P 0x33 $((2 * 1048576 + 512)) 512" "flush"
qio -r "$(uri d)" "read -P 0x11 0 4096" "read -P 0x22 65536 1048576" "read -P 0x33 $((2 * 1048576 + 512)) 512" \
  "read -P 0x5e 4096 61440"
expect_bytes "$F" 0 4096 0x11
expect_bytes "$F" 65536 1048576 0x22
expect_bytes "$F" $((2 * 1048576 + 512)) 512 0x33
expect_bytes "$F" $((2 * 1048576)) 512 0x5e
expect_bytes "$F" $((2 * 1048576 + 1024)) 512 0x5e

# nbdcopy round trip over the whole device.
head -c $DEV /dev/urandom >"$WORK/src.img"
nbdcopy --flush "$WORK/src.img" "$(uri d)" || die "nbdcopy into the export failed"
cmp "$F" "$WORK/src.img" || die "the server-side file differs from what nbdcopy wrote"
nbdcopy "$(uri d)" "$WORK/out.img" || die "nbdcopy out of the export failed"
cmp "$WORK/out.img" "$WORK/src.img" || die "nbdcopy read back different data"

# An acknowledged write, not yet flushed; the server crashes like a power
# cut (its unstable data is gone); the FLUSH afterwards must bring it back.
nbdsh_py "
h = nbd.NBD()
h.connect_uri('$(uri d)')
h.pwrite(b'\x44' * 65536, 4 * 1048576)
open('$WORK/acked', 'w').write('1')
" || die "unflushed write failed"
[ -f "$WORK/acked" ] || die "the write was not acknowledged"
nfs_crash
qio "$(uri d)" "flush"
nfs_crash   # only what is on stable storage counts
expect_bytes "$F" $((4 * 1048576)) 65536 0x44
info=$(ctl status d --json | jq -c '.[0].segments[0].info')
vc=$(jq -r '.verifier_changes' <<<"$info")
rb=$(jq -r '.rewritten_bytes' <<<"$info")
[ "$vc" -ge 1 ] || die "no write verifier change seen after a server crash: $info"
[ "$rb" -ge 65536 ] || die "the FLUSH after the crash did not write the lost data again: $info"
stop_strata
echo "PASS: NFSv4 data path, nbdcopy, crash recovery (verifier_changes=$vc rewritten_bytes=$rb)"
