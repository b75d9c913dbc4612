#!/bin/bash
# rbd target data path on a real one-node Ceph cluster: qemu-io write/read patterns (unaligned too, FUA, write-zeroes, discard), block status from fast-diff (holes where nothing was written, data where it was), an nbdcopy round trip byte-identical with `rbd export` of the image, fio crc32c verify at iodepth 32 over NBD, and status counters (ops, bytes, latency, lock owner) that count what was done.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
requires qemu-io qemu-img nbdcopy nbdinfo fio jq cmp

ceph_start
SIZE=$((64 << 20))
rbd_create data 64M
rbd_table "$WORK/t.conf" rbd/data $SIZE
start_strata --table "$WORK/t.conf" --export d
U=$(uri d)

# Patterns, unaligned ranges, FUA, zeroes, discard.
qio "$U" "write -P 0x11 0 1M" "write -P 0x22 -f $((1 << 20)) 512K" "write -P 0x33 $((3 << 20)) 4097" \
  "write -P 0x44 $((5 << 20 | 511)) 70001" "flush"
qio -r "$U" "read -P 0x11 0 1M" "read -P 0x22 $((1 << 20)) 512K" "read -P 0x33 $((3 << 20)) 4097" \
  "read -P 0 $((3 << 20 | 4097)) 100" "read -P 0x44 $((5 << 20 | 511)) 70001" "read -P 0 $((5 << 20)) 511"
qio "$U" "write -z 4096 8192" "write -z -u $((2 << 20)) 64K"
qio -r "$U" "read -P 0x11 0 4096" "read -P 0 4096 8192" "read -P 0x11 12288 4096"
# Data lands in the image (read back by rbd, not through strata).
rbd_export_file rbd/data "$WORK/export.img"
expect_bytes "$WORK/export.img" 0 4096 0x11
expect_bytes "$WORK/export.img" 4096 8192 0x00
expect_bytes "$WORK/export.img" $((1 << 20)) $((512 << 10)) 0x22
expect_bytes "$WORK/export.img" $((5 << 20 | 511)) 70001 0x44

# Block status: the image has fast-diff; objects (4 MiB) never written are holes.
map=$(nbdinfo --map "$U")
echo "$map"
grep -qE '^ +0 +8388608 +0 +data' <<<"$map" || die "the first two objects are not reported as data: $map"
grep -qE '^ +8388608 +58720256 +3 +hole,zero' <<<"$map" || die "the untouched rest is not a hole: $map"
# A discard of a whole object makes it a hole again.
qio "$U" "discard $((4 << 20)) $((4 << 20))" "flush"
map=$(nbdinfo --map "$U")
grep -qE '^ +4194304 +62914560 +3 +hole,zero' <<<"$map" || die "a discarded object is still data: $map"
qio -r "$U" "read -P 0 $((4 << 20)) $((4 << 20))"

# nbdcopy round trip: random data with a zero run, in and out, and what rbd exports.
head -c $((24 << 20)) /dev/urandom >"$WORK/src.img"
fill "$WORK/src.img" $((7 << 20)) $((3 << 20)) 0x00
truncate -s $SIZE "$WORK/src.img"
nbdcopy --flush "$WORK/src.img" "$U" || die "nbdcopy into the rbd export failed"
nbdcopy "$U" "$WORK/out.img" || die "nbdcopy out of the rbd export failed"
cmp "$WORK/out.img" "$WORK/src.img" || die "copied out differs from copied in"
rbd_export_file rbd/data "$WORK/export.img"
cmp "$WORK/export.img" "$WORK/src.img" || die "rbd export of the image differs from what was copied in"

# fio verify at iodepth 32 (many requests in flight in librbd at once).
cd "$WORK"
rc=0
fio --name=v --ioengine=nbd --uri="$U" --rw=randrw --bs=4k --iodepth=32 --size=32M --verify=crc32c \
  --do_verify=1 --verify_fatal=1 --verify_state_save=0 >"$WORK/fio.out" 2>&1 || rc=$?
cat "$WORK/fio.out"
[ $rc -eq 0 ] || die "fio exited with status $rc"
grep -q "err= 0" "$WORK/fio.out" || die "fio did not report err= 0"

st=$(ctl status d --json | jq '.[0].segments[0].info')
echo "$st"
[ "$(jq -r .lock <<<"$st")" = held ] || die "status: the lock is not held: $st"
jq -r .lock_owner <<<"$st" | grep -qE '^client\.[0-9]+ ' || die "status: no lock owner: $st"
[ "$(jq .writes <<<"$st")" -gt 4000 ] || die "status: few writes counted: $st"
[ "$(jq .read_bytes <<<"$st")" -gt $((32 << 20)) ] || die "status: few bytes read counted: $st"
[ "$(jq .fua_flushes <<<"$st")" -ge 1 ] || die "status: the FUA write was not flushed: $st"
[ "$(jq .zeros <<<"$st")" -ge 2 ] && [ "$(jq .trims <<<"$st")" -ge 1 ] || die "status: zeroes/discards not counted: $st"
[ "$(jq .write_latency_us <<<"$st")" -gt 0 ] || die "status: no write latency: $st"
[ "$(jq .errors <<<"$st")" = 0 ] || die "status: errors counted: $st"
[ "$(jq .in_flight <<<"$st")" = 0 ] || die "status: requests still in flight: $st"
stop_strata
echo PASS
