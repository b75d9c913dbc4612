#!/bin/bash
# strata list (text and --json): every device of the table with its size, read-only state and segment count.
. "$(dirname "$0")/functions.sh"
requires jq

F=$WORK/x.img
truncate -s 3M "$F"
cat >"$WORK/t.conf" <<CONF
[disk]
0 2048 file $F 4096
2048 2048 zero
[mem ro]
0 100 memory
[pat]
0 8 pattern
CONF
start_strata --table "$WORK/t.conf"

j=$(ctl list --json)
[ "$(jq -c '[.[].name]' <<<"$j")" = '["disk","mem","pat"]' ] || die "device names/order: $j"
[ "$(jq -c '[.[].size]' <<<"$j")" = '[2097152,51200,4096]' ] || die "sizes: $j"
[ "$(jq -c '[.[].segments]' <<<"$j")" = '[2,1,1]' ] || die "segment counts: $j"
# mem is [mem ro]; pattern cannot be written: both read-only.
[ "$(jq -c '[.[].read_only]' <<<"$j")" = '[false,true,true]' ] || die "read_only: $j"

t=$(ctl list)
echo "$t"
[ "$(grep -c . <<<"$t")" = 3 ] || die "text list should have 3 lines: $t"
grep -qE '^disk +2\.0 MiB +read-write +2 segment' <<<"$t" || die "text list, disk: $t"
grep -qE '^mem +50\.0 KiB +read-only +1 segment' <<<"$t" || die "text list, mem: $t"
grep -qE '^pat +4\.0 KiB +read-only +1 segment' <<<"$t" || die "text list, pat: $t"

# --file: one device named by --export (or "").
stop_strata
start_strata --file "$F" --offset 1048576 --export single
[ "$(ctl list --json | jq -c '[.[] | [.name, .size, .read_only]]')" = '[["single",2097152,false]]' ] ||
  die "--file list: $(ctl list --json)"
stop_strata
start_strata --file "$F" --read-only
[ "$(ctl list --json | jq -c '[.[] | [.name, .size, .read_only]]')" = '[["",3145728,true]]' ] ||
  die "--file --read-only list: $(ctl list --json)"
ctl list | grep -qE '^"" +3\.0 MiB +read-only' || die "unnamed device in text list: $(ctl list)"
stop_strata
echo PASS
