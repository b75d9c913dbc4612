#!/bin/bash
# Online merge of a cow stack's top into its parent while fio keeps writing: it converges, the stack is one layer shorter, the table still works, every byte reads as before (lower half, untouched by the writer) and the writer's data verifies, and the merged stack reopens cleanly.
source "$(dirname "$0")/functions.sh"
requires fio qemu-io nbdcopy jq cmp
S="$STRATA"
head -c 64M /dev/urandom >"$WORK/base.img"
"$S" layer create "$WORK/l1.layer" --size 64M >/dev/null
"$S" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" >/dev/null
cat >"$WORK/t.conf" <<EOT
[base]
0 131072 file $WORK/base.img 0 ro
[vm]
0 131072 cow $WORK/top.layer base=base
EOT
start_strata --table "$WORK/t.conf"
U=$(uri vm)
qemu-io -f raw "$U" -c "write -P 0xab 1000 70000" -c "write -z 1M 64k" -c "write -P 0x11 8M 1M" >/dev/null
ctl snapshot vm >/dev/null                      # top -> top.layer.snap1; new top
qemu-io -f raw "$U" -c "write -P 0xcd 0 4096" -c "write -P 0xee 2M 8192" -c "write -P 0x22 9M 512k" >/dev/null
layers() { ctl status vm --json | jq '.[0].segments[0].info.layers'; }
[ "$(layers)" = 3 ] || die "expected 3 layers before the merge, got $(layers)"
nbdcopy "$U" "$WORK/before.img"
# A writer on the upper half during the merge, verified afterwards. fio keeps
# its verify state in the current directory (not --directory), so run it in $WORK.
cd "$WORK"
fio --name=w --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --iodepth=16 --offset=32M --size=32M \
  --time_based --runtime=4 --verify=crc32c --do_verify=0 --verify_state_save=1 \
  >"$WORK/fio.log" 2>&1 &
F=$!
sleep 1
out=$(ctl merge vm --json) || die "merge failed: $out"
jq -e '.chunks_copied > 0' <<<"$out" >/dev/null || die "merge copied nothing: $out"
wait $F || { cat "$WORK/fio.log"; die "fio failed during the merge"; }
[ "$(layers)" = 2 ] || die "expected 2 layers after the merge, got $(layers)"
[ ! -e "$WORK/top.layer.snap1" ] || die "the merged-away layer name is still there"
[ -e "$WORK/top.layer" ] || die "the top's file name is gone: the table would break"
nbdcopy "$U" "$WORK/after.img"
cmp -n 32M "$WORK/before.img" "$WORK/after.img" || die "the lower half changed across the merge"
fio --name=w --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --iodepth=16 --offset=32M --size=32M \
  --verify=crc32c --verify_only --verify_state_load=1 >"$WORK/fio2.log" 2>&1 ||
  { cat "$WORK/fio2.log"; die "data written during the merge does not verify"; }
stop_strata
"$S" layer check "$WORK/top.layer" >/dev/null || die "layer check after the merge"
start_strata --table "$WORK/t.conf"
grep -q "not closed cleanly" "$STRATA_LOG" && die "the merged stack was not closed cleanly"
nbdcopy "$(uri vm)" "$WORK/again.img"
cmp "$WORK/after.img" "$WORK/again.img" || die "the merged stack reads differently after a restart"
stop_strata
echo PASS
