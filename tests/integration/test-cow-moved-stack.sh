#!/bin/bash
# cow: a stack built in directory A (layers in subdirectories, so parent paths go through ../) and moved as a whole with mv to B serves from B with every level's data (parent paths are stored relative), takes new writes, checks clean; moving the top alone away from its parents fails at start with a broken-parent-link message.
. "$(dirname "$0")/functions.sh"
requires jq

M=1048576
SIZE=$((8 * M))
A=$WORK/A
mkdir -p "$A/golden" "$A/vm"
fill "$A/base.img" 0 $SIZE 0x11
"$STRATA" layer create "$A/golden/l1.layer" --size $SIZE >/dev/null
"$STRATA" layer create "$A/l2.layer" --parent "$A/golden/l1.layer" >/dev/null
"$STRATA" layer create "$A/vm/top.layer" --parent "$A/l2.layer" >/dev/null
[ "$("$STRATA" layer info "$A/l2.layer" --json | jq -r .parent_path)" = golden/l1.layer ] || die "l2's parent path is not relative"
[ "$("$STRATA" layer info "$A/vm/top.layer" --json | jq -r .parent_path)" = ../l2.layer ] || die "top's parent path is not relative"

table() { # DIR TOP
  cat >"$WORK/t.conf" <<CONF
[base]
0 $((SIZE / 512)) file $1/base.img 0 ro
[d]
0 $((SIZE / 512)) cow $1/$2 base=base
CONF
}
# Each level gets its own bytes: l1 at 1M, l2 at 2M, top at 3M (and an
# unaligned write over l1's data).
for lv in golden/l1.layer:0x21:$M l2.layer:0x22:$((2 * M)) vm/top.layer:0x23:$((3 * M)); do
  IFS=: read -r layer byte off <<<"$lv"
  table "$A" "$layer"
  start_strata --table "$WORK/t.conf"
  qio "$(uri d)" "write -P $byte $off $M"
  [ "$layer" = vm/top.layer ] && qio "$(uri d)" "write -P 0x24 $((M + 1000)) 3000"
  stop_strata
done

B=$WORK/B
mv "$A" "$B"
[ ! -e "$A" ] || die "A still exists"
table "$B" vm/top.layer
start_strata --table "$WORK/t.conf"
verify() {
  qio -r "$(uri d)" \
    "read -P 0x11 0 $M" \
    "read -P 0x21 $M 1000" \
    "read -P 0x24 $((M + 1000)) 3000" \
    "read -P 0x21 $((M + 4000)) $((M - 4000))" \
    "read -P 0x22 $((2 * M)) $M" \
    "read -P 0x23 $((3 * M)) $M" \
    "read -P 0x11 $((4 * M)) $((4 * M))"
}
verify
[ "$(ctl status d --json | jq '.[0].segments[0].info.layers')" = 3 ] || die "not 3 layers from B"
ctl status d --json | jq -r '.[0].segments[0].info.top' | grep -qx "$B/vm/top.layer" || die "top is not served from B"
# New writes land in B's top; the lower layers are only read.
l1sum=$(sha256sum <"$B/golden/l1.layer")
qio "$(uri d)" "write -P 0x25 $((5 * M + 7)) 10000"
stop_strata
[ "$(sha256sum <"$B/golden/l1.layer")" = "$l1sum" ] || die "l1 was written"
start_strata --table "$WORK/t.conf"
verify_new() { qio -r "$(uri d)" "read -P 0x11 $((5 * M)) 7" "read -P 0x25 $((5 * M + 7)) 10000"; }
verify_new
stop_strata
for l in golden/l1.layer l2.layer vm/top.layer; do
  "$STRATA" layer check "$B/$l" >/dev/null || die "layer check $l in B: $("$STRATA" layer check "$B/$l")"
done

# The top alone, away from its parents: a clear error, nothing served.
mkdir "$WORK/C"
cp "$B/vm/top.layer" "$WORK/C/top.layer"
cp "$B/base.img" "$WORK/C/base.img"
table "$WORK/C" top.layer
if "$STRATA" serve --unix "$WORK/c.sock" --control "$WORK/c.ctl" --table "$WORK/t.conf" >"$WORK/c.out" 2>&1; then
  die "a top without its parents was served"
fi
grep -q "broken parent link" "$WORK/c.out" || die "no clear message for a top without its parents: $(cat "$WORK/c.out")"
grep -q "l2.layer" "$WORK/c.out" || die "the message does not name the missing parent: $(cat "$WORK/c.out")"
out=$("$STRATA" layer check "$WORK/C/top.layer" 2>&1) && die "layer check passed for a top without its parents"
grep -q "broken parent link" <<<"$out" || die "layer check: $out"
echo PASS
