#!/bin/bash
# file target direct=on: the file is opened O_DIRECT, the export advertises a 4096-byte minimum block size, and aligned qemu-io I/O lands at the right place.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdinfo jq

F=$WORK/d.img
bytes $((8192 + 4 * 1048576)) 0x22 >"$F"
cp "$F" "$WORK/d.expect"
# Table offset 8192 (aligned), 4 MiB segment.
echo "0 8192 file $F 8192 direct=on" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d

# The fd of the file in the server has O_DIRECT (040000 octal) set.
found=
for fd in /proc/"$STRATA_PID"/fd/*; do
  [ "$(readlink "$fd")" = "$F" ] || continue
  flags=$(awk '/^flags:/ {print $2}' /proc/"$STRATA_PID"/fdinfo/"${fd##*/}")
  (( 8#$flags & 8#040000 )) || die "$F is open without O_DIRECT (flags $flags)"
  found=1
done
[ -n "$found" ] || die "the server does not hold $F open"

info=$(nbdinfo --json "$(uri d)")
[ "$(jq '.exports[0].block_size_minimum' <<<"$info")" = 4096 ] ||
  die "block_size_minimum is not 4096: $(jq -c '.exports[0]' <<<"$info")"
[ "$(jq '.exports[0]."export-size"' <<<"$info")" = $((4 * 1048576)) ] || die "wrong export size"

qio "$(uri d)" "write -P 0x4d 4096 65536" "read -P 0x4d 4096 65536" "read -P 0x22 0 4096" \
  "write -P 0x4e 1048576 1048576" "read -P 0x4e 1048576 1048576" \
  "write -P 0x4f $((4 * 1048576 - 4096)) 4096" "read -P 0x4f $((4 * 1048576 - 4096)) 4096"
fill "$WORK/d.expect" $((8192 + 4096)) 65536 0x4d
fill "$WORK/d.expect" $((8192 + 1048576)) 1048576 0x4e
fill "$WORK/d.expect" $((8192 + 4 * 1048576 - 4096)) 4096 0x4f
cmp "$F" "$WORK/d.expect" || die "the backing file does not hold the aligned writes at offset 8192 + position"

# Data put in the file directly is read back through O_DIRECT.
fill "$F" $((8192 + 2 * 1048576)) 8192 0x71
sync "$F"
qio "$(uri d)" "read -P 0x71 $((2 * 1048576)) 8192"

stop_strata
echo PASS
