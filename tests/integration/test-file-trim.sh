#!/bin/bash
# file target TRIM: a discard punches a hole in the backing file (allocated blocks drop, nbdinfo --map reports a hole), the range reads back as zeros and the data around it is intact.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdinfo jq stat

F=$WORK/t.img
OFF=65536                 # table offset into the file
SIZE=$((16 * 1048576))    # device size
head -c $((OFF + SIZE)) /dev/urandom >"$F"   # fully allocated, no holes
cp "$F" "$WORK/orig.img"
sync "$F"
blocks_before=$(stat -c %b "$F")
[ "$blocks_before" -ge $(((OFF + SIZE) / 512)) ] || die "the test file is not fully allocated ($blocks_before blocks)"

echo "0 $((SIZE / 512)) file $F $OFF" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export t

info=$(nbdinfo --json "$(uri t)")
[ "$(jq '.exports[0].can_trim' <<<"$info")" = true ] || die "export does not offer trim"

# Before: no hole anywhere.
map=$(nbdinfo --map --json "$(uri t)")
[ "$(jq '[.[] | select(.type != 0)] | length' <<<"$map")" = 0 ] || die "fresh file already has holes: $map"

# Discard 8 MiB at device offset 4 MiB (file offset 4 MiB + 64 KiB).
T_OFF=$((4 * 1048576)) T_LEN=$((8 * 1048576))
qio "$(uri t)" "discard $T_OFF $T_LEN"

blocks_after=$(stat -c %b "$F")
freed=$(( (blocks_before - blocks_after) * 512 ))
# The filesystem may keep partial blocks at the edges; nearly all must go.
[ "$freed" -ge $((T_LEN - 2 * 65536)) ] || die "only $freed bytes freed after discarding $T_LEN ($blocks_before -> $blocks_after blocks)"
[ "$(stat -c %s "$F")" -eq $((OFF + SIZE)) ] || die "the file changed size"

# nbdinfo --map: the discarded range is a hole+zero extent (type 3), the rest is data.
map=$(nbdinfo --map --json "$(uri t)")
jq -e --argjson o $T_OFF --argjson l $T_LEN \
  '[.[] | select(.type == 3 and .offset <= $o + 65536 and .offset + .length >= $o + $l - 65536)] | length == 1' \
  <<<"$map" >/dev/null || die "no hole reported over $T_OFF+$T_LEN: $map"
jq -e --argjson o $T_OFF --argjson l $T_LEN \
  '[.[] | select(.type != 0 and (.offset + .length <= $o or .offset >= $o + $l))] | length == 0' \
  <<<"$map" >/dev/null || die "holes reported outside the discarded range: $map"

# The range reads back as zeros (in the file and through NBD); the rest is intact.
expect_bytes "$F" $((OFF + T_OFF)) $T_LEN 0x00
qio "$(uri t)" "read -P 0 $T_OFF $T_LEN"
cmp <(file_range "$F" 0 $((OFF + T_OFF))) <(file_range "$WORK/orig.img" 0 $((OFF + T_OFF))) ||
  die "data before the discarded range changed"
cmp <(file_range "$F" $((OFF + T_OFF + T_LEN)) $((SIZE - T_OFF - T_LEN))) \
  <(file_range "$WORK/orig.img" $((OFF + T_OFF + T_LEN)) $((SIZE - T_OFF - T_LEN))) ||
  die "data after the discarded range changed"

# The trim counter moved.
[ "$(ctl status t --json | jq '.[0].segments[0].info.trim_bytes')" -ge $T_LEN ] || die "trim_bytes counter did not count the discard"

stop_strata
echo PASS
