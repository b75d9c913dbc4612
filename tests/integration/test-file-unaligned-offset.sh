#!/bin/bash
# file target: qemu-io writes at unaligned offsets land at table offset + position in the backing file (offsets 4096 and 1048576), nothing else changes.
. "$(dirname "$0")/functions.sh"
requires qemu-io cmp dd

A=$WORK/a.img B=$WORK/b.img
# Backing files full of 0x11 so untouched bytes are recognisable.
bytes $((4096 + 2 * 1048576 + 8192)) 0x11 >"$A"
bytes $((1048576 + 1048576 + 4096)) 0x11 >"$B"
cp "$A" "$WORK/a.expect"
cp "$B" "$WORK/b.expect"

cat >"$WORK/t.conf" <<CONF
[a]
0 4096 file $A 4096
[b]
0 2048 file $B 1048576
CONF
start_strata --table "$WORK/t.conf"

# Device a: table offset 4096.
qio "$(uri a)" "write -P 0x5a 1000 70000" "read -P 0x5a 1000 70000" \
  "read -P 0x11 0 1000" "read -P 0x11 71000 4096"
# Last 333 bytes of the device, ending on its last byte.
qio "$(uri a)" "write -P 0x6b $((2097152 - 333)) 333" "read -P 0x6b $((2097152 - 333)) 333"
# Device b: table offset 1048576; a write that starts and ends mid-sector.
qio "$(uri b)" "write -P 0xa5 12345 99999" "read -P 0xa5 12345 99999" "read -P 0x11 0 12345"
qio "$(uri b)" "write -P 0x3c 7 1" "read -P 0x3c 7 1"

fill "$WORK/a.expect" $((4096 + 1000)) 70000 0x5a
fill "$WORK/a.expect" $((4096 + 2097152 - 333)) 333 0x6b
fill "$WORK/b.expect" $((1048576 + 12345)) 99999 0xa5
fill "$WORK/b.expect" $((1048576 + 7)) 1 0x3c

# The server writes through the page cache: the file shows the data at once.
expect_bytes "$A" $((4096 + 1000)) 70000 0x5a
expect_bytes "$B" $((1048576 + 12345)) 99999 0xa5
cmp "$A" "$WORK/a.expect" || die "a.img differs from the expected image (bytes outside the writes changed?)"
cmp "$B" "$WORK/b.expect" || die "b.img differs from the expected image (bytes outside the writes changed?)"
[ "$(stat -c %s "$A")" -eq $((4096 + 2 * 1048576 + 8192)) ] || die "a.img changed size"

# The reverse direction: bytes put into the file are what the client reads.
fill "$B" $((1048576 + 500000)) 4321 0xe7
qio "$(uri b)" "read -P 0xe7 500000 4321" "read -P 0x11 $((500000 + 4321)) 100"

stop_strata
echo PASS
