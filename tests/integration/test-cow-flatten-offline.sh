#!/bin/bash
# `strata flatten DEV --to RAW --table T` with no server: a two-layer cow stack (partial chunks, zeros over base data, a base hole) flattens into a raw file identical to base + writes, sparse where the device reads zeros; the layers are not modified; a stack whose top a running server holds is refused (lock); an unknown device name is refused; a plain file device flattens too.
. "$(dirname "$0")/functions.sh"
requires qemu-io cmp sha256sum

M=1048576
SIZE=$((16 * M))   # [8M, 16M) reads zeros: holes in the raw file
B=$WORK/base.img
truncate -s $SIZE "$B"
fill "$B" 0 $((6 * M)) 0x11
cp "$B" "$WORK/expect.img"
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"
put() { # OFF LEN BYTE
  if [ "$3" = 0x00 ]; then qio "$(uri d)" "write -z $1 $2"; else qio "$(uri d)" "write -P $3 $1 $2"; fi
  fill "$WORK/expect.img" "$1" "$2" "$3"
}
"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
start_strata --table "$WORK/t.conf"
put $M $((2 * M)) 0x22
ctl snapshot d >/dev/null
put $((2 * M - 100)) 300 0x33
put $((4 * M)) $M 0x00
put $((7 * M)) 4096 0x44

# While the server holds the top for writing, offline flatten is refused.
out=$("$STRATA" flatten d --table "$WORK/t.conf" --to "$WORK/busy.raw" 2>&1) && die "offline flatten of a served stack succeeded"
grep -qi "in use" <<<"$out" || die "refusal does not say the layer is in use: $out"
stop_strata

sums() { sha256sum "$WORK"/top.layer* | sort; }
before=$(sums)
"$STRATA" flatten d --table "$WORK/t.conf" --to "$WORK/flat.raw" >/dev/null || die "offline flatten failed"
cmp "$WORK/flat.raw" "$WORK/expect.img" || die "the flattened file differs from base + writes"
[ "$(sums)" = "$before" ] || die "offline flatten modified a layer"
alloc=$(du -k "$WORK/flat.raw" | cut -f1)
[ "$alloc" -le $(((SIZE - 8 * M) / 1024)) ] || die "zero runs were written out (${alloc} KiB allocated)"

out=$("$STRATA" flatten nope --table "$WORK/t.conf" --to "$WORK/x.raw" 2>&1) && die "flatten of an unknown device succeeded"
grep -q "no device named 'nope'" <<<"$out" || die "unclear unknown-device error: $out"

"$STRATA" flatten base --table "$WORK/t.conf" --to "$WORK/base.raw" >/dev/null || die "offline flatten of a file device failed"
cmp "$WORK/base.raw" "$B" || die "flattened file device differs"
echo PASS
