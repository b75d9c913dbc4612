#!/bin/bash
# `[name ro]` headers make just that device read-only (NBD flag and server refusal) while the others stay writable; serve --read-only makes every device of the table read-only.
. "$(dirname "$0")/functions.sh"
requires nbdinfo jq

F=$WORK/f.img
bytes 2097152 0x21 >"$F"
sum=$(md5sum <"$F")
cat >"$WORK/t.conf" <<CONF
[rw]
0 2048 file $F 0
[view ro]
0 2048 linear rw 0
[scratch]
0 2048 memory
CONF

try_write() {  # try_write EXPORT -> prints ok or refused
  nbdsh_py "
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri('$(uri "$1")')
try:
    h.pwrite(b'\x99' * 4096, 8192); h.flush(); print('ok')
except nbd.Error:
    print('refused')
"
}
ro_flag() { nbdinfo --json "$(uri "$1")" | jq '.exports[0].is_read_only'; }

start_strata --table "$WORK/t.conf"
[ "$(ro_flag rw)" = false ] && [ "$(ro_flag view)" = true ] && [ "$(ro_flag scratch)" = false ] ||
  die "read-only flags: rw=$(ro_flag rw) view=$(ro_flag view) scratch=$(ro_flag scratch)"
[ "$(try_write view)" = refused ] || die "a write to [view ro] was accepted"
[ "$(md5sum <"$F")" = "$sum" ] || die "the write to [view ro] reached the file"
[ "$(try_write scratch)" = ok ] || die "a write to scratch was refused"
[ "$(try_write rw)" = ok ] || die "a write to rw was refused"
expect_bytes "$F" 8192 4096 0x99
# The read-only view sees the lower device's new data.
qio -r "$(uri view)" "read -P 0x99 8192 4096"
stop_strata

fill "$F" 8192 4096 0x21
start_strata --table "$WORK/t.conf" --read-only
for e in rw view scratch; do
  [ "$(ro_flag $e)" = true ] || die "--read-only: '$e' is writable"
  [ "$(try_write $e)" = refused ] || die "--read-only: a write to '$e' was accepted"
done
[ "$(ctl list --json | jq -c '[.[].read_only]')" = '[true,true,true]' ] || die "--read-only list: $(ctl list --json)"
stop_strata
[ "$(md5sum <"$F")" = "$sum" ] || die "the file changed under --read-only"
echo PASS
