#!/bin/bash
# linear target: a device mapping a sector range of an earlier device reads the same bytes as that range, writes through it land in the lower device's file, and nothing outside the range is reachable.
. "$(dirname "$0")/functions.sh"
requires qemu-io cmp nbdcopy

F=$WORK/base.img
M=1048576
head -c $((4 * M)) /dev/urandom >"$F"
cp "$F" "$WORK/expect.img"
cat >"$WORK/t.conf" <<CONF
[base]
0 8192 file $F 0
# 1 MiB of base starting at sector 3000 (byte 1536000), then 512 KiB from sector 0
[lin]
0 2048 linear base 3000
2048 1024 linear base 0
# a linear of a linear
[lin2]
0 100 linear lin 10
CONF
start_strata --table "$WORK/t.conf"

[ "$(ctl list --json | jq '.[] | select(.name == "lin") | .size')" = $((3 * M / 2)) ] || die "lin has the wrong size"

# Whole-device reads compare with the file ranges.
nbdcopy "$(uri lin)" "$WORK/lin.out"
cmp <(head -c $M "$WORK/lin.out") <(file_range "$F" 1536000 $M) || die "lin[0, 1 MiB) != base from sector 3000"
cmp <(tail -c $((M / 2)) "$WORK/lin.out") <(file_range "$F" 0 $((M / 2))) || die "lin[1 MiB, 1.5 MiB) != base from 0"
nbdcopy "$(uri lin2)" "$WORK/lin2.out"
cmp "$WORK/lin2.out" <(file_range "$F" $(( (3000 + 10) * 512 )) $((100 * 512))) || die "lin2 != base from sector 3010"

file_range "$F" 1536000 $M >"$WORK/range.img"
file_range "$F" 0 $((M / 2)) >>"$WORK/range.img"
qemu-img compare -q -f raw -F raw "$WORK/range.img" "$(uri lin)" || die "qemu-img compare: lin != its base ranges"
# libnbd: unaligned windows of lin equal the same windows of base.
out=$(nbdsh_py "
a = nbd.NBD(); a.connect_uri('$(uri lin)')
b = nbd.NBD(); b.connect_uri('$(uri base)')
assert a.pread(77777, 1234) == b.pread(77777, 1536000 + 1234), 'window differs'
assert a.pread(5000, $M - 2500) == b.pread(2500, 1536000 + $M - 2500) + b.pread(2500, 0), 'boundary window differs'
print('ok')
" 2>&1) && [ "$out" = ok ] || die "lin vs base: $out"

# Writes through lin land in the base file (and are seen through base).
qio "$(uri lin)" "write -P 0x5c 1000 3000"
fill "$WORK/expect.img" $((1536000 + 1000)) 3000 0x5c
qio "$(uri base)" "read -P 0x5c $((1536000 + 1000)) 3000"
qio "$(uri lin)" "write -P 0x5d $((M - 100)) 200"   # across lin's two segments
fill "$WORK/expect.img" $((1536000 + M - 100)) 100 0x5d
fill "$WORK/expect.img" 0 100 0x5d
qio "$(uri lin2)" "write -P 0x5e 0 512"
fill "$WORK/expect.img" $(( (3000 + 10) * 512 )) 512 0x5e
qio "$(uri lin)" "read -P 0x5e 5120 512"
cmp "$F" "$WORK/expect.img" || die "base file does not hold the writes made through linear devices"

# lin2 cannot reach beyond its 100 sectors.
out=$(nbdsh_py "
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri('$(uri lin2)')
assert h.get_size() == 51200, h.get_size()
try:
    h.pwrite(b'x' * 512, 51200)
    print('write beyond the end succeeded')
except nbd.Error:
    print('refused')
" 2>&1)
[ "$out" = refused ] || die "lin2: $out"
cmp "$F" "$WORK/expect.img" || die "base file changed by a refused write"

ctl table lin | grep -qx "0 2048 linear base 3000" || die "strata table lin: $(ctl table lin)"
ctl table lin | grep -qx "2048 1024 linear base 0" || die "strata table lin: $(ctl table lin)"

stop_strata
echo PASS
