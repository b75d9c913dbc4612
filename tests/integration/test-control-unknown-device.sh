#!/bin/bash
# strata status/table of a device that does not exist: non-zero exit, a clear error naming the device, nothing on stdout; the server keeps working.
. "$(dirname "$0")/functions.sh"

truncate -s 1M "$WORK/x.img"
printf '[disk]\n0 2048 file %s 0\n' "$WORK/x.img" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf"

for cmd in status table; do
  for json in "" --json; do
    rc=0
    out=$(ctl $cmd nosuch $json 2>"$WORK/err") || rc=$?
    [ $rc -ne 0 ] || die "strata $cmd nosuch $json succeeded: $out"
    [ -z "$out" ] || die "strata $cmd nosuch $json printed on stdout: $out"
    grep -qx "strata: no device named 'nosuch'" "$WORK/err" || die "strata $cmd nosuch $json: unclear error: $(cat "$WORK/err")"
  done
done
# A name that differs only in case is a different device.
rc=0
ctl status DISK 2>"$WORK/err" >/dev/null || rc=$?
[ $rc -ne 0 ] && grep -q "no device named 'DISK'" "$WORK/err" || die "status DISK: rc $rc, $(cat "$WORK/err")"
# The server still answers.
ctl status disk >/dev/null || die "status of the real device failed after the errors"
stop_strata
echo PASS
