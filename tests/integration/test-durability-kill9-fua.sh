#!/bin/bash
# durability: a FUA write (no flush ever sent) is in the file after the server is SIGKILLed and a restarted server serves it; no flush is involved.
. "$(dirname "$0")/functions.sh"

F=$WORK/d.img
truncate -s 4M "$F"
echo "0 8192 file $F 0" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d

out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
assert h.can_fua(), 'FUA not offered'
h.pwrite(b'\xf0' * 12345, 54321, nbd.CMD_FLAG_FUA)
h.pwrite(b'\xf1' * 1048576, 2097152, nbd.CMD_FLAG_FUA)
print('ok')
" 2>&1) && [ "$out" = ok ] || die "libnbd FUA write: $out"
st=$(ctl status d --json)
[ "$(jq '.[0].segments[0].info.flushes' <<<"$st")" = 0 ] || die "a flush was counted, the test needs FUA alone: $st"
[ "$(jq '.[0].segments[0].info.writes' <<<"$st")" = 2 ] || die "expected 2 writes: $st"

kill9_strata
expect_bytes "$F" 54321 12345 0xf0
expect_bytes "$F" 2097152 1048576 0xf1

start_strata --table "$WORK/t.conf" --export d
out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
assert h.pread(12345, 54321) == b'\xf0' * 12345
assert h.pread(1048576, 2097152) == b'\xf1' * 1048576
assert h.pread(54321, 0) == bytes(54321)
print('ok')
" 2>&1) && [ "$out" = ok ] || die "reading back after restart: $out"
stop_strata
echo PASS
