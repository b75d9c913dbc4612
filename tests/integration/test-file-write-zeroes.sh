#!/bin/bash
# file target WRITE_ZEROES: with and without may-trim (qemu-io write -z / -z -u), unaligned, and with FAST_ZERO from libnbd, the range reads back as zeros in the file and over NBD; bytes around it are untouched.
. "$(dirname "$0")/functions.sh"
requires qemu-io cmp

F=$WORK/z.img
OFF=1048576
SIZE=$((8 * 1048576))
bytes $((OFF + SIZE + 4096)) 0x77 >"$F"
cp "$F" "$WORK/expect.img"
echo "0 $((SIZE / 512)) file $F $OFF" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export z

# No unmap: NBD_CMD_WRITE_ZEROES with NO_HOLE.
qio "$(uri z)" "write -z 65536 131072" "read -P 0 65536 131072" "read -P 0x77 0 65536" "read -P 0x77 196608 4096"
fill "$WORK/expect.img" $((OFF + 65536)) 131072 0x00
# May unmap (punch hole) over 1 MiB.
qio "$(uri z)" "write -z -u 2097152 1048576" "read -P 0 2097152 1048576"
fill "$WORK/expect.img" $((OFF + 2097152)) 1048576 0x00
# Unaligned: starts and ends mid-sector.
qio "$(uri z)" "write -z 5000 3333" "read -P 0 5000 3333" "read -P 0x77 4999 1" "read -P 0x77 8333 1"
fill "$WORK/expect.img" $((OFF + 5000)) 3333 0x00
# The last bytes of the device.
qio "$(uri z)" "write -z $((SIZE - 700)) 700" "read -P 0 $((SIZE - 700)) 700"
fill "$WORK/expect.img" $((OFF + SIZE - 700)) 700 0x00

# libnbd with FAST_ZERO (and without), unaligned offsets.
out=$(nbdsh_py "
h = nbd.NBD()
h.connect_uri('$(uri z)')
assert h.can_zero() and h.can_fast_zero(), 'zero / fast zero not offered'
h.zero(12345, 4000000, nbd.CMD_FLAG_FAST_ZERO)
h.zero(777, 6000001)
assert h.pread(12345, 4000000) == bytes(12345)
assert h.pread(777, 6000001) == bytes(777)
assert h.pread(1, 3999999) == b'\x77' and h.pread(1, 4012345) == b'\x77'
h.shutdown()
print('ok')
" 2>&1) || die "libnbd zero failed: $out"
[ "$out" = ok ] || die "libnbd: $out"
fill "$WORK/expect.img" $((OFF + 4000000)) 12345 0x00
fill "$WORK/expect.img" $((OFF + 6000001)) 777 0x00

cmp "$F" "$WORK/expect.img" || die "the file does not hold zeros exactly where they were written"
[ "$(stat -c %s "$F")" -eq $((OFF + SIZE + 4096)) ] || die "the file changed size"
[ "$(ctl status z --json | jq '.[0].segments[0].info.zeros')" -ge 6 ] || die "zeros counter did not count the requests"

stop_strata
echo PASS
