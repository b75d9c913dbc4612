#!/bin/bash
# durability: data written with libnbd and qemu-io and then flushed is in the file after the server is SIGKILLed, and a restarted server on the same file serves it.
. "$(dirname "$0")/functions.sh"
requires qemu-io

F=$WORK/d.img
truncate -s $((8 * 1048576 + 4096)) "$F"
echo "0 16384 file $F 4096" >"$WORK/t.conf"   # 8 MiB from offset 4096
start_strata --table "$WORK/t.conf" --export d

flushes0=$(ctl status d --json | jq '.[0].segments[0].info.flushes')
out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
h.pwrite(b'\xd1' * 65536, 100000)
h.pwrite(b'\xd2' * 513, 7000000)
h.flush()
print('ok')
" 2>&1) && [ "$out" = ok ] || die "libnbd write+flush: $out"
qio "$(uri d)" "write -P 0xd3 3000000 70001" "flush"
flushes1=$(ctl status d --json | jq '.[0].segments[0].info.flushes')
[ "$flushes1" -ge $((flushes0 + 2)) ] || die "the flushes did not reach the file target ($flushes0 -> $flushes1)"

kill9_strata
expect_bytes "$F" $((4096 + 100000)) 65536 0xd1
expect_bytes "$F" $((4096 + 7000000)) 513 0xd2
expect_bytes "$F" $((4096 + 3000000)) 70001 0xd3
expect_bytes "$F" 4096 100000 0x00

# A new server on the same table serves the data.
start_strata --table "$WORK/t.conf" --export d
qio "$(uri d)" "read -P 0xd1 100000 65536" "read -P 0xd2 7000000 513" "read -P 0xd3 3000000 70001" \
  "read -P 0 0 100000" "read -P 0 $((7000000 + 513)) 1000"
stop_strata
echo PASS
