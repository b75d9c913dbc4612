#!/bin/bash
# TLS with a pre-shared key (--tls=require --tls-psk): nbdinfo reports TLS, nbdcopy moves 32 MiB in and out byte-identical, qemu-io (tls-creds-psk) writes and reads patterns at unaligned offsets, and the server logs "TLS established: ... PSK user alice".
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/tls-lib.sh"
requires nbdinfo nbdcopy qemu-io psktool cmp

mkdir -p "$WORK/psk"
KEYS=$WORK/psk/keys.psk   # qemu's tls-creds-psk wants dir/keys.psk
make_psk "$KEYS" alice
truncate -s 64M "$WORK/disk.img"
start_strata --file "$WORK/disk.img" --tls=require --tls-psk "$KEYS"

TURI="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$KEYS"

info=$(nbdinfo "$TURI") || die "nbdinfo over TLS failed: $info"
grep -q "with TLS" <<<"$info" || die "nbdinfo does not report TLS: $info"
grep -q "export-size: 67108864" <<<"$info" || die "nbdinfo: wrong size: $info"

# nbdcopy in and out: 32 MiB of random data, byte-identical both ways.
head -c 32M /dev/urandom >"$WORK/src.bin"
nbdcopy "$WORK/src.bin" "$TURI" || die "nbdcopy to the TLS export failed"
cmp -n 33554432 "$WORK/src.bin" "$WORK/disk.img" || die "the served file differs from what nbdcopy wrote"
nbdcopy "$TURI" "$WORK/out.bin" || die "nbdcopy from the TLS export failed"
[ "$(stat -c %s "$WORK/out.bin")" = 67108864 ] || die "nbdcopy out: wrong size $(stat -c %s "$WORK/out.bin")"
cmp -n 33554432 "$WORK/src.bin" "$WORK/out.bin" || die "nbdcopy out differs from what went in"
cmp "$WORK/disk.img" "$WORK/out.bin" || die "nbdcopy out differs from the served file"

# qemu-io over tls-creds-psk: patterns at unaligned offsets, read back over TLS.
qtls() {
  local out
  out=$(qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$WORK/psk,username=alice" \
    --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0" "$@" 2>&1) ||
    die "qemu-io over TLS failed: $out"
  if grep -qiE 'fail|error|mismatch' <<<"$out"; then die "qemu-io over TLS reported: $out"; fi
  printf '%s\n' "$out"
}
qtls -c "write -P 0x5a 1000 3333" -c "write -P 0xa5 $((40 * 1048576 + 7)) 70001" \
  -c "write -P 0x3c $((64 * 1048576 - 513)) 513" >/dev/null
qtls -c "read -P 0x5a 1000 3333" -c "read -P 0xa5 $((40 * 1048576 + 7)) 70001" \
  -c "read -P 0x3c $((64 * 1048576 - 513)) 513" >/dev/null
# The bytes reached the file, and their neighbours are untouched.
expect_bytes "$WORK/disk.img" 1000 3333 0x5a
expect_bytes "$WORK/disk.img" $((40 * 1048576 + 7)) 70001 0xa5
expect_bytes "$WORK/disk.img" $((64 * 1048576 - 513)) 513 0x3c
cmp <(file_range "$WORK/disk.img" 0 1000) <(file_range "$WORK/src.bin" 0 1000) || die "bytes before 1000 changed"
cmp <(file_range "$WORK/disk.img" 4333 4000) <(file_range "$WORK/src.bin" 4333 4000) || die "bytes after 4333 changed"
expect_bytes "$WORK/disk.img" $((40 * 1048576)) 7 0x00
# A pattern that is not there must be reported as a mismatch (the check can fail).
out=$(qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$WORK/psk,username=alice" \
  --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0" -c "read -P 0x11 1000 3333" 2>&1) || true
grep -qi "mismatch\|fail" <<<"$out" || die "qemu-io read -P with a wrong pattern did not fail: $out"

grep -qE "conn [0-9]+ .*TLS established: TLS1\.[23] PSK user alice" "$STRATA_LOG" ||
  die "server log has no 'TLS established: ... PSK user alice' line"
if grep -E "CHECK failed|terminate called|Sanitizer|runtime error:" "$STRATA_LOG"; then die "server log shows a crash"; fi
stop_strata
echo "PASS: $(basename "$0")"
