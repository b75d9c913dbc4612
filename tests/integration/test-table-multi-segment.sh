#!/bin/bash
# multi-segment table (file A, zero, file B at an offset): qemu-io writes and reads that cross segment boundaries land in the right files at the right places; the zero segment reads zeros and drops writes.
. "$(dirname "$0")/functions.sh"
requires qemu-io cmp

A=$WORK/a.img B=$WORK/b.img
bytes 1048576 0xaa >"$A"                 # sectors 0-2047: all of A
bytes $((65536 + 1048576 + 512)) 0xbb >"$B"   # sectors 4096-6143: B from byte 65536
cp "$A" "$WORK/a.expect"
cp "$B" "$WORK/b.expect"
cat >"$WORK/t.conf" <<CONF
# A, a zero gap, then B
0    2048 file $A 0
2048 2048 zero
4096 2048 file $B 65536
CONF
start_strata --table "$WORK/t.conf" --export m
M=1048576   # segment boundaries at 1 MiB and 2 MiB

[ "$(ctl list --json | jq '.[0].size')" = $((3 * M)) ] || die "device size is not 3 MiB"
[ "$(ctl list --json | jq '.[0].segments')" = 3 ] || die "device does not have 3 segments"

# Initial contents seen through the device.
qio "$(uri m)" "read -P 0xaa 0 $M" "read -P 0 $M $M" "read -P 0xbb $((2 * M)) $M"
# One read spanning all three segments, unaligned at both ends.
qio "$(uri m)" "read -P 0xaa $((M - 1000)) 1000" "read -P 0 $M $M" "read -P 0xbb $((2 * M)) 1000"
out=$(nbdsh_py "
h = nbd.NBD()
h.connect_uri('$(uri m)')
b = h.pread($M + 2000, $M - 1000)
assert b == b'\xaa' * 1000 + bytes($M) + b'\xbb' * 1000, 'three-segment read is wrong'
print('ok')
" 2>&1) && [ "$out" = ok ] || die "spanning read: $out"

# Write across A -> zero: the A part lands in A, the zero part is dropped.
qio "$(uri m)" "write -P 0x11 $((M - 3000)) 10000" "read -P 0x11 $((M - 3000)) 3000" "read -P 0 $M 7000"
fill "$WORK/a.expect" $((M - 3000)) 3000 0x11
# Write across zero -> B (unaligned).
qio "$(uri m)" "write -P 0x22 $((2 * M - 4321)) 9999" "read -P 0 $((2 * M - 4321)) 4321" \
  "read -P 0x22 $((2 * M)) $((9999 - 4321))"
fill "$WORK/b.expect" 65536 $((9999 - 4321)) 0x22
# One write across all three segments.
qio "$(uri m)" "write -P 0x33 $((M - 512)) $((M + 1024))" "read -P 0x33 $((M - 512)) 512" \
  "read -P 0 $M $M" "read -P 0x33 $((2 * M)) 512"
fill "$WORK/a.expect" $((M - 512)) 512 0x33
fill "$WORK/b.expect" 65536 512 0x33
# The last byte of the device is the last byte of B's range.
qio "$(uri m)" "write -P 0x44 $((3 * M - 1)) 1" "read -P 0x44 $((3 * M - 1)) 1"
fill "$WORK/b.expect" $((65536 + M - 1)) 1 0x44
# A read running past the end is refused by the server (libnbd's own checks off).
out=$(nbdsh_py "
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri('$(uri m)')
try:
    h.pread(1024, $((3 * M - 512)))
    print('read past the end succeeded')
except nbd.Error as e:
    print('refused')
" 2>&1)
[ "$out" = refused ] || die "read past the end: $out"

cmp "$A" "$WORK/a.expect" || die "file A does not hold what was written to sectors 0-2047"
cmp "$B" "$WORK/b.expect" || die "file B does not hold what was written to sectors 4096-6143 at offset 65536"

# Both files' segments counted their part of the split requests.
st=$(ctl status m --json)
[ "$(jq '.[0].segments[0].info.write_bytes' <<<"$st")" -eq $((3000 + 512)) ] || die "A write_bytes wrong: $st"
[ "$(jq '.[0].segments[2].info.write_bytes' <<<"$st")" -eq $((9999 - 4321 + 512 + 1)) ] || die "B write_bytes wrong: $st"

stop_strata
echo PASS
