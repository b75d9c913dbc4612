#!/bin/bash
# serve --file shorthand: --offset maps device byte p to file byte offset+p, --export names it, --read-only and --direct apply (a file whose size is not a multiple of 4096 is served rounded down), and bad --file arguments fail clearly before anything is served.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdinfo jq

F=$WORK/f.img
bytes $((3 * 1048576 + 1000)) 0x13 >"$F"   # not a multiple of 512 or 4096
cp "$F" "$WORK/expect.img"

start_strata --file "$F" --offset 1048576 --export data
[ "$(ctl list --json | jq -c '.[0] | [.name, .size]')" = "[\"data\",$((2 * 1048576 + 512))]" ] ||
  die "--file --offset: $(ctl list --json)"
ctl table data | grep -qx "0 4097 file $F 1048576" || die "table: $(ctl table data)"
qio "$(uri data)" "write -P 0x31 777 5000" "read -P 0x31 777 5000" "read -P 0x13 0 777"
fill "$WORK/expect.img" $((1048576 + 777)) 5000 0x31
cmp "$F" "$WORK/expect.img" || die "--offset 1048576: the write did not land at offset + position"
stop_strata

start_strata --file "$F" --direct --export d
info=$(nbdinfo --json "$(uri d)")
[ "$(jq '.exports[0]."export-size"' <<<"$info")" = $((3 * 1048576)) ] || die "--direct size not rounded to 4096: $info"
[ "$(jq '.exports[0].block_size_minimum' <<<"$info")" = 4096 ] || die "--direct block size: $info"
qio "$(uri d)" "write -P 0x32 8192 4096" "read -P 0x32 8192 4096"
fill "$WORK/expect.img" 8192 4096 0x32
cmp "$F" "$WORK/expect.img" || die "--direct write landed in the wrong place"
stop_strata

start_strata --file "$F" --read-only
[ "$(nbdinfo --json "$(uri)" | jq '.exports[0].is_read_only')" = true ] || die "--read-only export is writable"
out=$(nbdsh_py "
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri('$(uri)')
try:
    h.pwrite(b'x' * 512, 0); print('write succeeded')
except nbd.Error:
    print('refused')
" 2>&1)
[ "$out" = refused ] || die "--read-only: $out"
stop_strata
cmp "$F" "$WORK/expect.img" || die "the file changed under --read-only"

# Errors: exit non-zero, clear message, no socket.
bad() {  # bad EXPECTED ARGS...
  local want=$1 rc=0 out
  shift
  rm -f "$SOCK" "$CTL"
  out=$(timeout 10 "$STRATA" serve "$@" --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || die "serve $* : rc $rc"
  grep -qF -- "$want" <<<"$out" || die "serve $*: expected '$want' in: $out"
  [ ! -e "$SOCK" ] && [ ! -e "$CTL" ] || die "serve $*: a socket was created"
  echo "ok: $out"
}
mkdir "$WORK/dir"
truncate -s 100 "$WORK/tiny.img"
printf '0 8 zero\n' >"$WORK/t.conf"
bad "--file $WORK/missing.img: No such file or directory" --file "$WORK/missing.img"
bad "--file $WORK/dir: not a regular file or block device" --file "$WORK/dir"
bad "--offset 9999999 is beyond the end of $F" --file "$F" --offset 9999999
bad "less than 512 bytes to serve" --file "$WORK/tiny.img"
bad "give either --file or --table, not both" --file "$F" --table "$WORK/t.conf"
bad "direct=on needs the offset (100)" --file "$F" --offset 100 --direct
bad "--tcp nocolon: expected HOST:PORT" --file "$F" --tcp nocolon
echo PASS
