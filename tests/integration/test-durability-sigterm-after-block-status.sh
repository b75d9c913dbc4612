#!/bin/bash
# durability: after clients have asked for block status (nbdinfo --map, which uses the blocking thread pool), SIGTERM still makes the server exit 0 within 10 s with the data flushed.
. "$(dirname "$0")/functions.sh"
requires nbdinfo qemu-io

F=$WORK/d.img
truncate -s 4M "$F"
echo "0 8192 file $F 0" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d

qio "$(uri d)" "write -P 0x9a 1048576 65536"
map=$(nbdinfo --map --json "$(uri d)")
# The written range is data, the rest of the sparse file holes.
jq -e '[.[] | select(.type == 0 and .offset <= 1048576 and .offset + .length >= 1048576 + 65536)] | length == 1' \
  <<<"$map" >/dev/null || die "block status does not show the written data: $map"
jq -e '[.[] | select(.type == 3 and .offset == 0)] | length == 1' <<<"$map" >/dev/null ||
  die "block status does not show the hole at 0: $map"

stop_strata   # SIGTERM: exit status 0 within 10 s
expect_bytes "$F" 1048576 65536 0x9a
echo PASS
