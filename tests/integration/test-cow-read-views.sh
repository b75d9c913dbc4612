#!/bin/bash
# cow reads without a copy: a range held by the base is sent from the base file's mapping (the base device's mapped_reads counts it), a range of zero chunks from the zero page; ranges held by a layer, and ranges that mix holders, are read as before. Every read returns the stack's bytes: base, two layers, a trimmed range, writes while reading, before and after an online merge.
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
m1=$(mapped)
qio "$(uri d)" "read -P 0x22 $((1048576 + 4096)) 100"
[ "$(mapped)" = "$m1" ] || die "a range held by a layer was counted as a mapped read of the base"

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
ctl merge d >/dev/null
check "after merge"
m2=$(mapped)
qio "$(uri d)" "read -P 0x44 $((2 * 1048576)) 65536"
nbdcopy "$(uri d)" /dev/null
[ "$(mapped)" -gt "$m2" ] || die "no mapped reads of the base after the merge"

stop_strata
echo PASS
