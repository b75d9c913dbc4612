#!/bin/bash
# A golden image on Ceph with its versions as RBD layers (docs/cluster.md): v1 a protected snapshot, v2 a clone of
# it with changes, snapshotted; each host reads a version through a local `cache` under its VMs' local cow tops.
# Checked: every VM reads its version plus its own writes; a second VM on the same version reads all of it from the
# cache, nothing from the cluster; the images and snapshots are never written; a snapshot with clones cannot be
# unprotected or removed while hosts use it (Ceph's guard on shared layers); a v3 published while the VMs run is
# served beside them at once; and a snapshot made again under the same name with other bytes empties the cache at
# load (its identity carries the snapshot's id), never serving the old bytes.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
requires qemu-io qemu-img nbdcopy jq cmp rbd

ceph_start
M=$((1 << 20)) SIZE=$((16 << 20))
head -c $SIZE /dev/urandom >"$WORK/v1.raw"
timeout 60 rbd import --no-progress "$WORK/v1.raw" rbd/golden >/dev/null 2>&1 || die "rbd import failed"
timeout 60 rbd snap create rbd/golden@v1 >/dev/null 2>&1 || die "rbd snap create golden@v1 failed"
timeout 60 rbd snap protect rbd/golden@v1 || die "rbd snap protect golden@v1 failed"

# v2: a clone of v1 (Ceph's layering: only what changed is stored in it), changed through strata, snapshotted.
timeout 60 rbd clone rbd/golden@v1 rbd/golden-v2 || die "rbd clone failed"
cp "$WORK/v1.raw" "$WORK/v2.raw"
rbd_table "$WORK/w.conf" rbd/golden-v2 $SIZE
start_strata --table "$WORK/w.conf" --export d
qio "$(uri d)" "write -P 0x42 $((3 * M + 4096)) $M" "write -P 0x43 $((15 * M)) 512" flush
fill "$WORK/v2.raw" $((3 * M + 4096)) $M 0x42
fill "$WORK/v2.raw" $((15 * M)) 512 0x43
stop_strata
timeout 60 rbd snap create rbd/golden-v2@v2 >/dev/null 2>&1 || die "rbd snap create golden-v2@v2 failed"
timeout 60 rbd snap protect rbd/golden-v2@v2 || die "rbd snap protect golden-v2@v2 failed"

for v in 1 2; do "$STRATA" layer create "$WORK/vm$v-a.layer" --size $SIZE >/dev/null; done
"$STRATA" layer create "$WORK/vm2-b.layer" --size $SIZE >/dev/null
cat >"$WORK/t.conf" <<CONF
[g1 ro]
0 $((SIZE / 512)) rbd rbd/golden@v1 conf=$CEPH_CONF ro
[g1c]
0 $((SIZE / 512)) cache g1 $WORK/g1.cache
[vm1a]
0 $((SIZE / 512)) cow $WORK/vm1-a.layer base=g1c
[g2 ro]
0 $((SIZE / 512)) rbd rbd/golden-v2@v2 conf=$CEPH_CONF ro
[g2c]
0 $((SIZE / 512)) cache g2 $WORK/g2.cache
[vm2a]
0 $((SIZE / 512)) cow $WORK/vm2-a.layer base=g2c
[vm2b]
0 $((SIZE / 512)) cow $WORK/vm2-b.layer base=g2c
CONF
start_strata --table "$WORK/t.conf" --state-dir "$WORK/state"
seg() { ctl status "$1" --json | jq ".[0].segments[0].info.$2"; }

cp "$WORK/v1.raw" "$WORK/vm1a.raw"
cp "$WORK/v2.raw" "$WORK/vm2a.raw"
cp "$WORK/v2.raw" "$WORK/vm2b.raw"
qio "$(uri vm1a)" "write -P 0x11 $((2 * M + 512)) 70000" flush
fill "$WORK/vm1a.raw" $((2 * M + 512)) 70000 0x11
qio "$(uri vm2a)" "write -P 0x21 $((3 * M)) 8192" flush
fill "$WORK/vm2a.raw" $((3 * M)) 8192 0x21
for d in vm1a vm2a; do
  qemu-img compare -q -f raw -F raw "$WORK/$d.raw" "$(uri $d)" || die "$d differs from its version plus its writes"
done
g2_reads=$(seg g2 reads)
miss=$(seg g2c miss_bytes)
[ "$miss" -ge $((SIZE - 8192)) ] || die "the first VM on v2 read only $miss bytes from the cluster"
# The second VM on v2 boots from the local cache: nothing from the cluster.
qio "$(uri vm2b)" "write -P 0x22 $((9 * M)) 4096" flush
fill "$WORK/vm2b.raw" $((9 * M)) 4096 0x22
qemu-img compare -q -f raw -F raw "$WORK/vm2b.raw" "$(uri vm2b)" || die "vm2b differs from v2 plus its writes"
echo "v2 through the cache: $miss bytes from the cluster for the first VM, $(($(seg g2 reads) - g2_reads)) reads for the second ($(seg g2c hit_bytes) bytes from the cache)"
[ "$(seg g2 reads)" = "$g2_reads" ] || die "the second VM on v2 read $(($(seg g2 reads) - g2_reads)) times from the cluster"

# Shared layers are guarded by Ceph: a snapshot with clones cannot be unprotected, a protected one not removed.
if timeout 60 rbd snap unprotect rbd/golden@v1 2>/dev/null; then die "golden@v1 was unprotected while v2 is cloned from it"; fi
if timeout 60 rbd snap rm rbd/golden-v2@v2 2>/dev/null; then die "golden-v2@v2 was removed while protected"; fi

# Publish v3 while the VMs run: a clone of v2 with its own change, served at once beside v1 and v2.
timeout 60 rbd clone rbd/golden-v2@v2 rbd/golden-v3 || die "rbd clone v3 failed"
cp "$WORK/v2.raw" "$WORK/v3.raw"
ctl create w3 --table - <<<"0 $((SIZE / 512)) rbd rbd/golden-v3 conf=$CEPH_CONF" || die "creating the writer of v3 failed"
qio "$(uri w3)" "write -P 0x53 $((11 * M)) 65536" flush
fill "$WORK/v3.raw" $((11 * M)) 65536 0x53
ctl remove w3 || die "removing the writer of v3 failed"
timeout 60 rbd snap create rbd/golden-v3@v3 >/dev/null 2>&1 || die "rbd snap create golden-v3@v3 failed"
"$STRATA" layer create "$WORK/vm3-a.layer" --size $SIZE >/dev/null
ctl create g3 --read-only --table - <<<"0 $((SIZE / 512)) rbd rbd/golden-v3@v3 conf=$CEPH_CONF ro" || die "create g3 failed"
ctl create g3c --table - <<<"0 $((SIZE / 512)) cache g3 $WORK/g3.cache" || die "create g3c failed"
ctl create vm3a --table - <<<"0 $((SIZE / 512)) cow $WORK/vm3-a.layer base=g3c" || die "create vm3a failed"
qemu-img compare -q -f raw -F raw "$WORK/v3.raw" "$(uri vm3a)" || die "vm3a differs from v3"
for d in vm1a vm2a vm2b; do
  qemu-img compare -q -f raw -F raw "$WORK/$d.raw" "$(uri $d)" || die "$d differs after v3 was published"
done
stop_strata

# The shared images were never written by the hosts.
rbd_export_file rbd/golden "$WORK/e.raw"
cmp "$WORK/e.raw" "$WORK/v1.raw" || die "rbd/golden changed"
rbd_export_file rbd/golden@v1 "$WORK/e.raw"
cmp "$WORK/e.raw" "$WORK/v1.raw" || die "golden@v1 changed"
rbd_export_file rbd/golden-v2@v2 "$WORK/e.raw"
cmp "$WORK/e.raw" "$WORK/v2.raw" || die "golden-v2@v2 is not v1 plus the v2 changes"
rbd_export_file rbd/golden-v2 "$WORK/e.raw"
cmp "$WORK/e.raw" "$WORK/v2.raw" || die "rbd/golden-v2 was written after its snapshot"

# A snapshot made again under the same name, with other bytes: the cache keyed on its id is emptied at load.
timeout 60 rbd snap rm rbd/golden-v3@v3 >/dev/null 2>&1 || die "rbd snap rm golden-v3@v3 failed"
cp "$WORK/v3.raw" "$WORK/v3b.raw"
rbd_table "$WORK/w3.conf" rbd/golden-v3 $SIZE
start_strata --table "$WORK/w3.conf" --export w3
qio "$(uri w3)" "write -P 0x54 $((11 * M)) 65536" flush
fill "$WORK/v3b.raw" $((11 * M)) 65536 0x54
stop_strata
timeout 60 rbd snap create rbd/golden-v3@v3 >/dev/null 2>&1 || die "rbd snap create golden-v3@v3 (again) failed"
cat >"$WORK/t3.conf" <<CONF
[g3 ro]
0 $((SIZE / 512)) rbd rbd/golden-v3@v3 conf=$CEPH_CONF ro
[g3c]
0 $((SIZE / 512)) cache g3 $WORK/g3.cache
CONF
said=$(grep -c "cache $WORK/g3.cache: emptied: the device's identity changed" "$STRATA_LOG" || true)
start_strata --table "$WORK/t3.conf"
[ "$(grep -c "cache $WORK/g3.cache: emptied: the device's identity changed" "$STRATA_LOG")" = $((said + 1)) ] ||
  die "the cache of a snapshot made again under the same name was not emptied at load"
[ "$(seg g3c cache_used_slots)" = 0 ] || die "the cache of the new v3 still holds $(seg g3c cache_used_slots) chunks"
nbdcopy "$(uri g3c)" "$WORK/g3c.raw"
cmp "$WORK/g3c.raw" "$WORK/v3b.raw" || die "the cache served the old v3's bytes"
stop_strata
echo PASS
