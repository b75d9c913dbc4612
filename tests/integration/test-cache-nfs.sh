#!/bin/bash
# A golden image on an NFS server (ganesha), read by two VMs' cow stacks through one local cache device: the first
# pass reads the image from the server, the second (the other VM) reads nothing from it (the nfs segment's read
# calls do not move); both VMs read the image + their own writes; after kill -9 and a restart the cache is still
# warm (a third pass reads < 5% of the image from the server) and right; the NFS file is never written.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
requires jq nbdcopy cmp sha256sum qemu-io

M=1048576
SIZE=$((32 * M))
EXPORT=$WORK/export
mkdir -p "$EXPORT"
nfs_start_ganesha "$EXPORT"
B=$EXPORT/golden.img
head -c $SIZE /dev/urandom >"$B"
SUM=$(sha256sum <"$B")
"$STRATA" layer create "$WORK/vm1.layer" --size $SIZE >/dev/null
"$STRATA" layer create "$WORK/vm2.layer" --size $SIZE >/dev/null
cat >"$WORK/t.conf" <<CONF
[golden ro]
0 $((SIZE / 512)) nfs $(nfs_url "$B") 0 ro timeout=10
[gc]
0 $((SIZE / 512)) cache golden $WORK/golden.cache chunk=128K
[vm1]
0 $((SIZE / 512)) cow $WORK/vm1.layer base=gc
[vm2]
0 $((SIZE / 512)) cow $WORK/vm2.layer base=gc
CONF
start_strata --table "$WORK/t.conf"
nfs_reads() { ctl status golden --json | jq '.[0].segments[0].info.read_calls'; }
cinfo() { ctl status gc --json | jq ".[0].segments[0].info.$1"; }

cp "$B" "$WORK/expect1.img"; cp "$B" "$WORK/expect2.img"
qio "$(uri vm1)" "write -P 0x11 $((2 * M + 512)) 4096"
fill "$WORK/expect1.img" $((2 * M + 512)) 4096 0x11
r0=$(nfs_reads)
nbdcopy "$(uri vm1)" "$WORK/vm1.img"
cmp "$WORK/expect1.img" "$WORK/vm1.img" || die "vm1 reads wrongly through the cache"
r1=$(nfs_reads)
for i in $(seq 1 50); do [ "$(cinfo cache_used_slots)" = $((SIZE / 131072)) ] && break; sleep 0.1; done
# The second VM: its whole image from the cache, nothing from the server.
qio "$(uri vm2)" "write -P 0x22 $((7 * M)) 65536"
fill "$WORK/expect2.img" $((7 * M)) 65536 0x22
nbdcopy "$(uri vm2)" "$WORK/vm2.img"
cmp "$WORK/expect2.img" "$WORK/vm2.img" || die "vm2 reads wrongly through the cache"
r2=$(nfs_reads)
echo "NFS READ calls: first VM $((r1 - r0)), second VM $((r2 - r1)); cache hit bytes $(cinfo hit_bytes), miss bytes $(cinfo miss_bytes)"
[ $((r1 - r0)) -gt 0 ] || die "the first pass read nothing from the server"
[ $((r2 - r1)) = 0 ] || die "the second VM read $((r2 - r1)) times from the server"

# kill -9, restart: still warm, still right.
kill9_strata
start_strata --table "$WORK/t.conf"
r3=$(nfs_reads)
nbdcopy "$(uri vm2)" "$WORK/vm2b.img"
cmp "$WORK/expect2.img" "$WORK/vm2b.img" || die "after kill -9 vm2 reads wrongly"
miss=$(cinfo miss_bytes)
echo "after kill -9: $(cinfo cache_used_slots) chunks cached, $miss bytes read from the server"
[ "$miss" -le $((SIZE / 20)) ] || die "after kill -9 the cache read $miss bytes of $SIZE from the server"
stop_strata
[ "$(sha256sum <"$B")" = "$SUM" ] || die "the golden image on the NFS server was written"
echo PASS
