#!/bin/bash
# cow: `strata merge DEV --layer L` folds a read-only middle layer into the layer below it while the device is served (and written): the stack is one layer shorter, L's file is gone, the child of L now names the layer below as parent (layer check clean), the device reads exactly base + all writes before and after a restart, lower-layer zeros and partial chunks survive; the bottom layer (over the base) and a path outside the stack are refused with clear messages.
. "$(dirname "$0")/functions.sh"
requires qemu-io qemu-img jq

M=1048576
SIZE=$((8 * M))
B=$WORK/base.img
truncate -s $SIZE "$B"
fill "$B" 0 $((6 * M)) 0x11
cp "$B" "$WORK/expect.img"
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"
put() { # OFF LEN BYTE
  if [ "$3" = 0x00 ]; then qio "$(uri d)" "write -z $1 $2"; else qio "$(uri d)" "write -P $3 $1 $2"; fi
  fill "$WORK/expect.img" "$1" "$2" "$3"
}
layers() { ctl status d --json | jq -c '.[0].segments[0].info.layers'; }

# Build base <- l1 <- l2 <- l3 <- top with snapshots: each snapshot turns the
# top into top.layer.snapN.
"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
start_strata --table "$WORK/t.conf"
put $((1 * M)) $((3 * M)) 0x22
put $((13 * M / 2)) $((M / 2)) 0x22
ctl snapshot d >/dev/null
put $((2 * M)) $((2 * M)) 0x33
put $((5 * M)) $((M / 2)) 0x00             # zeros over base data
put $((2 * M - 100)) 300 0x36              # partial chunks over the layer below
ctl snapshot d >/dev/null
put $((3 * M)) $((M / 2)) 0x44
put $((7 * M / 2 + 1000)) 5000 0x55
ctl snapshot d >/dev/null
put $((6 * M)) 8192 0x66
[ "$(layers)" = 4 ] || die "expected 4 layers, got $(layers)"
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri d)" || die "the stack differs before the merge"
ls "$WORK"/top.layer.snap* >/dev/null
SNAP1=$WORK/top.layer.snap1 SNAP2=$WORK/top.layer.snap2 SNAP3=$WORK/top.layer.snap3
for f in "$SNAP1" "$SNAP2" "$SNAP3"; do [ -f "$f" ] || die "missing $f: $(ls "$WORK")"; done

# Refusals.
out=$("$STRATA" merge d --layer "$SNAP1" --control "$CTL" 2>&1) && die "merging the bottom layer into the base succeeded"
grep -q "bottom layer" <<<"$out" || die "bottom-layer refusal unclear: $out"
out=$("$STRATA" merge d --layer "$WORK/nope.layer" --control "$CTL" 2>&1) && die "merging a stranger succeeded"
grep -q "is not a layer of this stack" <<<"$out" || die "stranger refusal unclear: $out"
[ "$(layers)" = 4 ] || die "a refused merge changed the stack"

# Fold snap2 (the middle) into snap1, with a writer running.
( for i in $(seq 20); do qemu-io -f raw "$(uri d)" -c "write -P 0x77 $((7 * M)) 65536" >/dev/null 2>&1 || exit 1; done ) &
W=$!
"$STRATA" merge d --layer "$SNAP2" --control "$CTL" >/dev/null || die "merge --layer failed"
wait $W || die "writes during the merge failed"
fill "$WORK/expect.img" $((7 * M)) 65536 0x77
[ "$(layers)" = 3 ] || die "expected 3 layers after the merge, got $(layers)"
[ ! -e "$SNAP2" ] || die "the merged layer's file is still there"
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri d)" || die "the stack differs after the merge"
put $((1 * M)) 4096 0x88
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri d)" || die "the stack differs after a write post-merge"
stop_strata

for f in "$SNAP1" "$SNAP3" "$WORK/top.layer"; do
  "$STRATA" layer check "$f" >/dev/null || die "layer check $f: $("$STRATA" layer check "$f" 2>&1)"
done
"$STRATA" layer info "$SNAP3" --json | jq -r .parent_path | grep -q 'top.layer.snap1$' || die "snap3 does not name snap1 as parent: $("$STRATA" layer info "$SNAP3")"
start_strata --table "$WORK/t.conf"
[ "$(layers)" = 3 ] || die "after restart: expected 3 layers, got $(layers)"
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri d)" || die "after restart: the stack differs"
stop_strata
echo PASS
