#!/bin/bash
# rbd devices under the other layers: a cow stack whose base is an rbd snapshot (a golden image on Ceph, the layer local) reads base + writes and never writes the image; a dirty map on a writable rbd device and `strata sync` to a file make the file equal to the image (checked with `rbd export`), copying only the blocks written.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
requires qemu-io qemu-img nbdcopy jq cmp sha256sum

ceph_start
M=$((1 << 20)) SIZE=$((16 << 20))
rbd_create w 16M
head -c $SIZE /dev/urandom >"$WORK/golden.raw"
timeout 60 rbd import --no-progress "$WORK/golden.raw" rbd/golden-src >/dev/null 2>&1 || die "rbd import failed"
echo "0 $((SIZE / 512)) rbd rbd/golden-src conf=$CEPH_CONF" >"$WORK/g.conf"
start_strata --table "$WORK/g.conf" --export g
nbdcopy "$(uri g)" "$WORK/check.raw" && cmp "$WORK/check.raw" "$WORK/golden.raw" || die "the imported golden image reads back wrong"
stop_strata
timeout 60 rbd snap create rbd/golden-src@v1 >/dev/null 2>&1 || die "rbd snap create failed"

"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
cp "$WORK/golden.raw" "$WORK/expect.raw"
cat >"$WORK/t.conf" <<CONF
[base ro]
0 $((SIZE / 512)) rbd rbd/golden-src@v1 conf=$CEPH_CONF ro
[vm]
0 $((SIZE / 512)) cow $WORK/top.layer base=base
[w]
0 $((SIZE / 512)) rbd rbd/w conf=$CEPH_CONF
CONF
start_strata --table "$WORK/t.conf" --state-dir "$WORK/state"
put() { # OFF LEN BYTE
  qio "$(uri vm)" "write -P $3 $1 $2"
  fill "$WORK/expect.raw" "$1" "$2" "$3"
}
put $M $((2 * M)) 0x21
put $((5 * M + 512)) 4096 0x22
put $((15 * M)) $M 0x23
qio "$(uri vm)" flush
qemu-img compare -q -f raw -F raw "$WORK/expect.raw" "$(uri vm)" || die "the cow stack differs from base + writes"
rbd_export_file rbd/golden-src@v1 "$WORK/snap.raw"
cmp "$WORK/snap.raw" "$WORK/golden.raw" || die "the rbd snapshot changed"
rbd_export_file rbd/golden-src "$WORK/head.raw"
cmp "$WORK/head.raw" "$WORK/golden.raw" || die "the rbd base image was written"

# Dirty map on a writable rbd device, synced to a file replica.
nbdcopy "$WORK/golden.raw" "$(uri w)" || die "nbdcopy into rbd/w failed"
cp "$WORK/golden.raw" "$WORK/replica.raw"
ctl dirty start w m >/dev/null
qio "$(uri w)" "write -P 0x31 1000 5000" "write -P 0x32 $((3 * M)) 128K" "write -z $((9 * M)) 4096" flush
ctl sync w --map m --to "$WORK/replica.raw" --json >"$WORK/sync.json" || die "strata sync failed"
cat "$WORK/sync.json"
[ "$(jq .copied_bytes "$WORK/sync.json")" = $((8192 + 131072 + 4096)) ] || die "sync copied other than the dirty blocks: $(cat "$WORK/sync.json")"
rbd_export_file rbd/w "$WORK/w.raw"
cmp "$WORK/replica.raw" "$WORK/w.raw" || die "the replica differs from the rbd image after sync"
stop_strata
echo PASS
