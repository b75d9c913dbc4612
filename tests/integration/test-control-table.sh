#!/bin/bash
# strata table: prints each device's table as dmsetup lines (canonical spacing, options, ro header), for one device or all, and the printed table loads again into an identical server.
. "$(dirname "$0")/functions.sh"
requires jq

F=$WORK/x.img G=$WORK/y.img
truncate -s 4M "$F" "$G"
# Odd spacing and comments in the input; the output is canonical.
cat >"$WORK/t.conf" <<CONF
# two devices
[disk]
0    2048   file $F 4096      # first MiB after 4 KiB
2048 8      zero
2056 2040   file $G 0 direct=on
[view ro]
0 1024 linear disk 1024
CONF
start_strata --table "$WORK/t.conf"

want_disk="0 2048 file $F 4096
2048 8 zero
2056 2040 file $G 0 direct=on"
[ "$(ctl table disk)" = "$want_disk" ] || die "strata table disk: $(ctl table disk)"
[ "$(ctl table view)" = "0 1024 linear disk 1024" ] || die "strata table view: $(ctl table view)"
[ "$(ctl table disk --json | jq -r '.[0].table')" = "$want_disk" ] || die "table --json: $(ctl table disk --json)"
[ "$(ctl table --json | jq -c '[.[].name]')" = '["disk","view"]' ] || die "table --json names: $(ctl table --json)"

all=$(ctl table)
echo "$all"
grep -qx '\[disk\]' <<<"$all" || die "strata table: no [disk] header: $all"
grep -qx '\[view ro\]' <<<"$all" || die "strata table: [view] lost its ro: $all"

# What strata table prints is a table file that loads into the same devices.
ctl table >"$WORK/again.conf"
list1=$(ctl list --json)
stop_strata
start_strata --table "$WORK/again.conf"
[ "$(ctl list --json)" = "$list1" ] || die "reloaded table differs: $(ctl list --json) vs $list1"
[ "$(ctl table)" = "$all" ] || die "reloaded table prints differently: $(ctl table)"
stop_strata
echo PASS
