#!/bin/bash
# cow: a base file and three layers (l1, l2, top) each written in turn with its own qemu-io pattern: the full stack reads the topmost writer of every range (copy-up keeps lower bytes of a partly written chunk), base:allocation sets the zero flag only where the stack truly reads zeros, strata:allocation-depth names the right level of every chunk, and `strata flatten` gives a raw file identical to an image built by applying the same writes to a copy of the base.
. "$(dirname "$0")/functions.sh"
requires qemu-io qemu-img nbdinfo jq

M=1048576
SIZE=$((8 * M))
B=$WORK/base.img
truncate -s $SIZE "$B"
fill "$B" 0 $((6 * M)) 0x11   # [6M, 8M) stays a hole of the base file
cp "$B" "$WORK/expect.img"
BASE_SUM=$(sha256sum <"$B")
: >"$WORK/events"             # OFF LEN LAYER per write, for the depth oracle

table() {
  cat >"$WORK/t.conf" <<CONF
[base]
0 $((SIZE / 512)) file $B 0 ro
[d]
0 $((SIZE / 512)) cow $WORK/$1 base=base
CONF
}
# put LAYER OFF LEN BYTE: a qemu-io write (BYTE 0x00: write -z) through the
# device, and the same bytes into the expected image.
put() {
  if [ "$4" = 0x00 ]; then
    qio "$(uri d)" "write -z $2 $3"
  else
    qio "$(uri d)" "write -P $4 $2 $3"
  fi
  fill "$WORK/expect.img" "$2" "$3" "$4"
  echo "$2 $3 $1" >>"$WORK/events"
}

# Level 1: l1 over the base.
"$STRATA" layer create "$WORK/l1.layer" --size $SIZE >/dev/null
table l1.layer
start_strata --table "$WORK/t.conf"
put 1 $((1 * M)) $((3 * M)) 0x22
put 1 $((13 * M / 2)) $((M / 2)) 0x22      # data in a layer over a hole of the base
stop_strata
# Level 2: l2 over l1.
"$STRATA" layer create "$WORK/l2.layer" --parent "$WORK/l1.layer" >/dev/null
table l2.layer
start_strata --table "$WORK/t.conf"
put 2 $((2 * M)) $((2 * M)) 0x33
put 2 $((5 * M)) $((M / 2)) 0x00           # zeros over base data
put 2 $((2 * M - 100)) 300 0x36            # unaligned, over l1's chunk: copy-up
stop_strata
# Level 3: the top over l2.
"$STRATA" layer create "$WORK/top.layer" --parent "$WORK/l2.layer" >/dev/null
table top.layer
start_strata --table "$WORK/t.conf"
put 3 $((3 * M)) $((M / 2)) 0x44
put 3 $((7 * M / 2 + 1000)) 5000 0x55      # not chunk-aligned, over l2: copy-up
put 3 $((4 * M + 4096 * 3 + 17)) 9 0x56    # a few bytes over the base
[ "$(ctl status d --json | jq '.[0].segments[0].info.layers')" = 3 ] || die "status does not show 3 layers"

# Which layer wins each range.
qio -r "$(uri d)" \
  "read -P 0x11 0 $M" \
  "read -P 0x22 $M $((M - 100))" \
  "read -P 0x36 $((2 * M - 100)) 300" \
  "read -P 0x33 $((2 * M + 200)) $((M - 200))" \
  "read -P 0x44 $((3 * M)) $((M / 2))" \
  "read -P 0x33 $((7 * M / 2)) 1000" \
  "read -P 0x55 $((7 * M / 2 + 1000)) 5000" \
  "read -P 0x33 $((7 * M / 2 + 6000)) $((M / 2 - 6000))" \
  "read -P 0x11 $((4 * M)) $((4096 * 3 + 17))" \
  "read -P 0x56 $((4 * M + 4096 * 3 + 17)) 9" \
  "read -P 0x11 $((4 * M + 4096 * 3 + 26)) $((M - 4096 * 3 - 26))" \
  "read -P 0x00 $((5 * M)) $((M / 2))" \
  "read -P 0x11 $((11 * M / 2)) $((M / 2))" \
  "read -P 0x00 $((6 * M)) $((M / 2))" \
  "read -P 0x22 $((13 * M / 2)) $((M / 2))" \
  "read -P 0x00 $((7 * M)) $M"

# The whole device against the expected image.
qemu-img compare -q -f raw -F raw "$WORK/expect.img" "$(uri d)" || die "the stack differs from the expected image"

nbdinfo --map --json "$(uri d)" >"$WORK/alloc.json"
nbdinfo --map=strata:allocation-depth --json "$(uri d)" >"$WORK/depth.json"
out=$($PYTHON - "$WORK/expect.img" "$WORK/events" "$WORK/alloc.json" "$WORK/depth.json" $SIZE <<'PY' 2>&1
import json, sys
img, events, alloc, depth, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
data = open(img, 'rb').read()
CH, M = 4096, 1 << 20
bad = []
# base:allocation: covers the device; zero flag only over zeros; and the
# ranges that are zeros by a zero chunk or a base hole say so.
ext = json.load(open(alloc))
pos = 0
zero_flag = bytearray(size // CH)
for e in ext:
    assert e['offset'] == pos, (e, pos)
    if e['type'] & 2:
        if data[e['offset']:e['offset'] + e['length']].count(0) != e['length']:
            bad.append(f"zero flag over non-zero data at {e['offset']}+{e['length']}")
        for c in range(e['offset'] // CH, (e['offset'] + e['length']) // CH):
            zero_flag[c] = 1
    pos += e['length']
assert pos == size, pos
for off, ln in ((5 * M, M // 2), (6 * M, M // 2), (7 * M, M)):
    if not all(zero_flag[off // CH:(off + ln) // CH]):
        bad.append(f"{off}+{ln} reads zeros but is not reported zero")
for off, ln in ((0, 5 * M), (11 * M // 2, M // 2), (13 * M // 2, M // 2)):
    if any(zero_flag[off // CH:(off + ln) // CH]):
        bad.append(f"{off}+{ln} holds data but is reported zero")
# strata:allocation-depth: 1 = top ... 4 = the base; per chunk, the last writer.
want = [4] * (size // CH)
for line in open(events):
    off, ln, layer = map(int, line.split())
    for c in range(off // CH, (off + ln - 1) // CH + 1):
        want[c] = 4 - layer
ext = json.load(open(depth))
pos = 0
for e in ext:
    for c in range(e['offset'] // CH, (e['offset'] + e['length'] - 1) // CH + 1):
        if want[c] != e['type']:
            bad.append(f"chunk {c} (byte {c * CH}): depth {e['type']}, expected {want[c]}")
            break
    pos += e['length']
assert pos == size, pos
seen = sorted({e['type'] for e in ext})
if seen != [1, 2, 3, 4]:
    bad.append(f"depths seen {seen}, expected all of 1..4")
print('\n'.join(bad[:20]) if bad else 'ok')
PY
) && [ "$out" = ok ] || die "block status: $out"

# flatten: one raw file, identical to the expected image, sparse where zeros.
ctl flatten d --to "$WORK/flat.raw" >/dev/null 2>&1 || die "strata flatten failed"
[ "$(stat -c %s "$WORK/flat.raw")" = $SIZE ] || die "flattened file has the wrong size"
qemu-img compare -q -f raw -F raw "$WORK/flat.raw" "$WORK/expect.img" || die "flattened file differs from the expected image"
cmp "$WORK/flat.raw" "$WORK/expect.img" || die "flattened file differs (cmp)"
stop_strata
[ "$(sha256sum <"$B")" = "$BASE_SUM" ] || die "the base file was written"
for l in l1 l2 top; do
  "$STRATA" layer check "$WORK/$l.layer" >/dev/null || die "layer check $l: $("$STRATA" layer check "$WORK/$l.layer")"
done
echo PASS
