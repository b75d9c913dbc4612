#!/bin/bash
# fio over NBD: 4k random read/write at iodepth 32 with crc32c verification over a 64 MiB file export passes (exit 0, err= 0, no verify errors) and the I/O reaches the file target.
. "$(dirname "$0")/functions.sh"
requires fio jq

truncate -s 64M "$WORK/f.img"
start_strata --file "$WORK/f.img" --export fio

cd "$WORK"   # fio writes its verify state files into the current directory
start=$(date +%s)
rc=0
fio --name=randrw --ioengine=nbd --uri="$(uri fio)" --rw=randrw --bs=4k --iodepth=32 \
  --size=64M --verify=crc32c --do_verify=1 --verify_fatal=1 --numjobs=1 --verify_state_save=0 \
  --output-format=normal >"$WORK/fio.out" 2>&1 || rc=$?
cat "$WORK/fio.out"
echo "fio took $(( $(date +%s) - start )) s"
[ $rc -eq 0 ] || die "fio exited with status $rc"
grep -q "err= 0" "$WORK/fio.out" || die "fio did not report err= 0"
grep -qiE "verify.*(fail|bad)|crc32c.*mismatch|bad magic" "$WORK/fio.out" && die "fio reported verify errors"

# The data passed through the server's file target.
st=$(ctl status fio --json)
[ "$(jq '.[0].segments[0].info.write_bytes' <<<"$st")" -gt $((16 * 1048576)) ] || die "few writes reached the file: $st"
[ "$(jq '.[0].segments[0].info.read_bytes' <<<"$st")" -gt $((16 * 1048576)) ] || die "few reads reached the file: $st"
[ "$(jq '.[0].segments[0].info.errors' <<<"$st")" = 0 ] || die "the file target counted errors: $st"
[ "$(du -k "$WORK/f.img" | cut -f1)" -gt 16384 ] || die "the file holds little data after fio"
stop_strata
echo PASS
