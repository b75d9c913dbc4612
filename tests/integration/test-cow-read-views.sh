#!/bin/bash
# cow reads without a copy: a range held by the base is sent from the base file's mapping (the base device's mapped_reads counts it), a cached range held by one layer from that layer file's mapping (the cow's mapped_reads), a range of zero chunks from the zero page; ranges that mix holders are read as before. Every read returns the stack's bytes: base, two layers, a trimmed range, writes while reading, before and after an online merge.
. "$(dirname "$0")/functions.sh"
requires jq nbdcopy cmp

SIZE=$((8 * 1048576))
B=$WORK/base.img
head -c $SIZE /dev/urandom >"$B"
cp "$B" "$WORK/want.img"
"$STRATA" layer create "$WORK/l1.layer" --size $SIZE --chunk-size 65536 >/dev/null
"$STRATA" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" --chunk-size 65536 >/dev/null
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"
cat "$B" >/dev/null   # the base in the page cache: its ranges can be mapped reads
start_strata --table "$WORK/t.conf"

mapped() { ctl status base --json | jq '.[0].segments[0].info.mapped_reads'; }
layer_mapped() { ctl status d --json | jq '.[0].segments[0].info.mapped_reads'; }
# put OFF LEN BYTE: write through NBD and into want.img.
put() {
  qio "$(uri d)" "write -P $3 $1 $2"
  fill "$WORK/want.img" "$1" "$2" "$3"
}
check() {
  nbdcopy "$(uri d)" "$WORK/out.img"
  cmp "$WORK/out.img" "$WORK/want.img" || die "$1: the device differs from the expected bytes"
}

# Only the base so far: every read is a mapped read of the base.
m0=$(mapped)
check "base only"
[ "$(mapped)" -gt "$m0" ] || die "reads of the base were not mapped (mapped_reads $m0 -> $(mapped))"

# Layer data and a trimmed (zero) range; a read across base, layer and zero
# chunks, and reads inside each.
put $((1048576)) $((256 * 1024)) 0x11
put $((1048576 + 4096)) 100 0x22             # a partial chunk: copy-up in the top
qio "$(uri d)" "discard $((4 * 1048576)) $((512 * 1024))"
fill "$WORK/want.img" $((4 * 1048576)) $((512 * 1024)) 0x00
check "layer + trim"
qio "$(uri d)" "read -P 0 $((4 * 1048576)) $((512 * 1024))" "read -P 0x11 $((1048576 + 8192)) 4096"
m1=$(mapped) l1=$(layer_mapped)
qio "$(uri d)" "read -P 0x22 $((1048576 + 4096)) 100" "read -P 0x11 $((1048576 + 65536)) 65536"
[ "$(mapped)" = "$m1" ] || die "a range held by a layer was counted as a mapped read of the base"
[ "$(layer_mapped)" -gt "$l1" ] || die "cached ranges held by the top layer were not read from its mapping"

# A read-only layer below the top: its chunks are mapped reads too (l1 holds
# nothing yet here; after the snapshot below, the old top is read-only).
# Writes into base-held chunks while a reader runs: afterwards the written
# chunks come from the top, the rest still from the base.
pids=()
for i in 1 2 3; do
  put $((6 * 1048576 + i * 65536 + 17)) 5000 0x3$i &
  pids+=($!)
done
nbdcopy "$(uri d)" /dev/null
for p in "${pids[@]}"; do wait "$p" || die "a concurrent write failed"; done
check "after concurrent writes"

# Snapshot (top read-only, new top), then merge the new top back online.
ctl snapshot d >/dev/null
put $((2 * 1048576)) 65536 0x44
check "after snapshot"
l2=$(layer_mapped)
check "after snapshot (read-only layer under a new top)"
[ "$(layer_mapped)" -gt "$l2" ] || die "no mapped reads of the read-only layer after the snapshot"
ctl merge d >/dev/null
check "after merge"
m2=$(mapped)
qio "$(uri d)" "read -P 0x44 $((2 * 1048576)) 65536"
nbdcopy "$(uri d)" /dev/null
[ "$(mapped)" -gt "$m2" ] || die "no mapped reads of the base after the merge"

stop_strata
echo PASS
