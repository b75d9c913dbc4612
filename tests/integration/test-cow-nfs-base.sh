#!/bin/bash
# cow over an NFS base: the base device is an nfs target (ganesha) exported read-only inside strata, a local writable top layer holds the changes; reads come from the top or the NFS base chunk by chunk, the NFS file is never written (checksum unchanged), a snapshot adds a layer while serving, and flatten gives a raw file equal to base + writes; after the NFS server restarts the stack keeps reading from the base.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
requires qemu-io qemu-img cmp sha256sum

M=1048576
SIZE=$((16 * M))
EXPORT=$WORK/export
mkdir -p "$EXPORT"
nfs_start_ganesha "$EXPORT"
B=$EXPORT/golden.img
head -c $SIZE /dev/urandom >"$B"
BASE_SUM=$(sha256sum <"$B")
cp "$B" "$WORK/expect.img"

"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
cat >"$WORK/t.conf" <<CONF
[base ro]
0 $((SIZE / 512)) nfs $(nfs_url "$B") 0 ro timeout=10
[vm]
0 $((SIZE / 512)) cow $WORK/top.layer base=base
CONF
start_strata --table "$WORK/t.conf"

put() { # OFF LEN BYTE
  qio "$(uri vm)" "write -P $3 $1 $2"
  fill "$WORK/expect.img" "$1" "$2" "$3"
}
put $((1 * M)) $((2 * M)) 0x21
put $((5 * M + 512)) 4096 0x22          # partial chunk: copy-up from the NFS base
put $((15 * M)) $M 0x23
qio "$(uri vm)" "flush"
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri vm)" || die "the stack differs from base + writes"
[ "$(sha256sum <"$B")" = "$BASE_SUM" ] || die "the NFS base file was written"
# The read-only base export refuses writes.
qio_fails "$(uri base)" "write -P 0x99 0 4096" >/dev/null

# Snapshot while serving, then more writes into the new top.
ctl snapshot vm >/dev/null || die "snapshot failed"
put $((8 * M)) $((3 * M)) 0x24
put $((1 * M)) 8192 0x25
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri vm)" || die "after snapshot: the stack differs"

# The NFS server restarts: the stack keeps reading the base through it.
nfs_stop_ganesha
nfs_start_ganesha "$EXPORT"
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri vm)" || die "after an NFS server restart: the stack differs"

ctl flatten vm --to "$WORK/flat.raw" >/dev/null || die "flatten failed"
cmp "$WORK/flat.raw" "$WORK/expect.img" || die "flattened stack differs from base + writes"
[ "$(sha256sum <"$B")" = "$BASE_SUM" ] || die "the NFS base file was written"
stop_strata
echo "PASS: cow stack over an NFS base"
