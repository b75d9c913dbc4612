#!/bin/bash
# file target `ro` option: the export is read-only (nbdinfo is_read_only, can_trim/can_zero off), writes/trims/zeroes fail, the file is opened O_RDONLY and never changes.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdinfo jq md5sum

F=$WORK/r.img W=$WORK/w.img
bytes 2097152 0x33 >"$F"
bytes 1048576 0x44 >"$W"
cat >"$WORK/t.conf" <<CONF
[ro]
0 4096 file $F 0 ro
[rw]
0 2048 file $W 0
CONF
sum=$(md5sum <"$F")
start_strata --table "$WORK/t.conf"

info=$(nbdinfo --json "$(uri ro)")
[ "$(jq '.exports[0].is_read_only' <<<"$info")" = true ] || die "export 'ro' is not read-only: $info"
[ "$(jq '.exports[0].can_trim' <<<"$info")" = false ] || die "export 'ro' offers trim"
[ "$(jq '.exports[0].can_zero' <<<"$info")" = false ] || die "export 'ro' offers write zeroes"
# The other device of the same table stays writable.
[ "$(jq '.exports[0].is_read_only' <<<"$(nbdinfo --json "$(uri rw)")")" = false ] || die "export 'rw' is read-only"

qio -r "$(uri ro)" "read -P 0x33 0 2097152"
# qemu-io sees the read-only flag and will not open the export for writing.
out=$(qio_fails "$(uri ro)" "write -P 0x55 0 4096")
grep -qiE 'permission denied|read-only' <<<"$out" || die "unexpected qemu-io failure: $out"
# A client that ignores the read-only flag is refused by the server itself.
out=$(nbdsh_py "
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri('$(uri ro)')
for name, op in (('write', lambda: h.pwrite(b'x' * 512, 0)),
                 ('trim', lambda: h.trim(512, 0)),
                 ('zero', lambda: h.zero(512, 0))):
    try:
        op()
        print(name, 'succeeded')
    except nbd.Error as e:
        print(name, 'refused', e.errnum)
" 2>&1) || die "python client crashed: $out"
grep -q succeeded <<<"$out" && die "the server accepted a write to a read-only export: $out"
[ "$(grep -c refused <<<"$out")" = 3 ] || die "unexpected result: $out"

# The fd is O_RDONLY (access mode 0).
for fd in /proc/"$STRATA_PID"/fd/*; do
  [ "$(readlink "$fd")" = "$F" ] || continue
  flags=$(awk '/^flags:/ {print $2}' /proc/"$STRATA_PID"/fdinfo/"${fd##*/}")
  (( (8#$flags & 3) == 0 )) || die "$F is open for writing (flags $flags)"
done

[ "$(ctl list --json | jq '.[] | select(.name == "ro") | .read_only')" = true ] || die "strata list: 'ro' not read-only"
ctl table ro | grep -qE "file $F 0 ro\$" || die "strata table ro does not show the ro option: $(ctl table ro)"

stop_strata
[ "$(md5sum <"$F")" = "$sum" ] || die "the read-only file changed"
echo PASS
