#!/bin/bash
# fio over NBD: data fio writes (random 4k..64k blocks, iodepth 16, crc32c headers) and flushes verifies with --verify_only against a new server started after SIGKILL, and a corrupted block is detected.
. "$(dirname "$0")/functions.sh"
requires fio

truncate -s 32M "$WORK/f.img"
echo "0 65536 file $WORK/f.img 0" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export v
cd "$WORK"   # fio writes its verify state files into the current directory
job=(--name=w --ioengine=nbd --uri="$(uri v)" --rw=randwrite --bsrange=4k-64k --iodepth=16 --size=32M
     --verify=crc32c --randrepeat=1 --randseed=1234 --verify_fatal=1 --verify_state_save=0)

fio "${job[@]}" --do_verify=0 --end_fsync=1 >"$WORK/w.out" 2>&1 || { cat "$WORK/w.out"; die "fio write phase failed"; }
grep -q "err= 0" "$WORK/w.out" || { cat "$WORK/w.out"; die "fio write phase: no err= 0"; }
kill9_strata

start_strata --table "$WORK/t.conf" --export v
fio "${job[@]}" --verify_only >"$WORK/v.out" 2>&1 || { cat "$WORK/v.out"; die "fio verify after restart failed"; }
grep -q "err= 0" "$WORK/v.out" || { cat "$WORK/v.out"; die "fio verify: no err= 0"; }
grep -qE "READ: .*io=[1-9]" "$WORK/v.out" || { cat "$WORK/v.out"; die "fio verify read nothing"; }

# The verification can fail: overwrite one written block behind fio's back.
stop_strata
# Find a block fio wrote (non-zero) and flip bytes in its data area.
off=$(/usr/bin/python3 -c "
import sys
f = open('$WORK/f.img', 'rb')
for blk in range(0, 32 << 20, 4096):
    f.seek(blk)
    if f.read(4096).strip(b'\0'):
        print(blk); break
")
[ -n "$off" ] || die "fio wrote nothing to the file"
fill "$WORK/f.img" $((off + 1024)) 64 0x5a
start_strata --table "$WORK/t.conf" --export v
rc=0
fio "${job[@]}" --verify_only >"$WORK/bad.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || { cat "$WORK/bad.out"; die "fio verify did not notice a corrupted block at $off"; }
stop_strata
echo PASS
