#!/bin/bash
# TLS with X.509 certificates (--tls=require --tls-certificates): nbdinfo reports TLS, nbdcopy round-trips 32 MiB byte-identical, qemu-img compare (tls-creds-x509) matches the source, and qemu-io patterns at unaligned offsets are written and read back; the server logs "TLS established: ... X.509".
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/tls-lib.sh"
requires nbdinfo nbdcopy qemu-io qemu-img certtool cmp

PKI=$WORK/pki
make_pki "$PKI"
truncate -s 32M "$WORK/disk.img"
start_strata --file "$WORK/disk.img" --tls=require --tls-certificates "$PKI"

TURI="nbds+unix:///?socket=$SOCK&tls-certificates=$PKI/client"
OBJ="tls-creds-x509,id=tls0,endpoint=client,dir=$PKI/client"
IMG="driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0,tls-hostname=localhost"  # unix socket: name the cert to check

info=$(nbdinfo "$TURI") || die "nbdinfo over TLS failed: $info"
grep -q "with TLS" <<<"$info" || die "nbdinfo does not report TLS: $info"
grep -q "export-size: 33554432" <<<"$info" || die "nbdinfo: wrong size: $info"

head -c 32M /dev/urandom >"$WORK/src.bin"
nbdcopy "$WORK/src.bin" "$TURI" || die "nbdcopy to the TLS export failed"
cmp "$WORK/src.bin" "$WORK/disk.img" || die "the served file differs from what nbdcopy wrote"
nbdcopy "$TURI" "$WORK/out.bin" || die "nbdcopy from the TLS export failed"
cmp "$WORK/src.bin" "$WORK/out.bin" || die "nbdcopy out differs from what went in"

# qemu-img compare over tls-creds-x509 against the source.
out=$(qemu-img compare --object "$OBJ" --image-opts "driver=raw,file.filename=$WORK/src.bin" "$IMG" 2>&1) ||
  die "qemu-img compare src vs TLS export: $out"
grep -q "Images are identical" <<<"$out" || die "qemu-img compare: $out"

qtls() {
  local out
  out=$(qemu-io --object "$OBJ" --image-opts "$IMG" "$@" 2>&1) || die "qemu-io over TLS failed: $out"
  if grep -qiE 'fail|error|mismatch' <<<"$out"; then die "qemu-io over TLS reported: $out"; fi
}
qtls -c "write -P 0x61 777 4099" -c "write -P 0x62 $((9 * 1048576 + 3)) 131075" -c "write -P 0x63 $((32 * 1048576 - 1)) 1"
qtls -c "read -P 0x61 777 4099" -c "read -P 0x62 $((9 * 1048576 + 3)) 131075" -c "read -P 0x63 $((32 * 1048576 - 1)) 1"
expect_bytes "$WORK/disk.img" 777 4099 0x61
expect_bytes "$WORK/disk.img" $((9 * 1048576 + 3)) 131075 0x62
expect_bytes "$WORK/disk.img" $((32 * 1048576 - 1)) 1 0x63
cmp <(file_range "$WORK/disk.img" 0 777) <(file_range "$WORK/src.bin" 0 777) || die "bytes before 777 changed"
cmp <(file_range "$WORK/disk.img" 4876 8192) <(file_range "$WORK/src.bin" 4876 8192) || die "bytes after 4876 changed"

# Now the export differs from the source: compare must say so (the check can fail)...
rc=0
out=$(qemu-img compare --object "$OBJ" --image-opts "driver=raw,file.filename=$WORK/src.bin" "$IMG" 2>&1) || rc=$?
[ $rc -eq 1 ] || die "qemu-img compare after writes: rc $rc (want 1, images differ): $out"
# ...and matches the served file exactly.
out=$(qemu-img compare --object "$OBJ" --image-opts "driver=raw,file.filename=$WORK/disk.img,file.locking=off" "$IMG" 2>&1) ||
  die "qemu-img compare served file vs TLS export: $out"

grep -qE "conn [0-9]+ .*TLS established: TLS1\.[23] X\.509" "$STRATA_LOG" ||
  die "server log has no 'TLS established: ... X.509' line"
if grep -E "CHECK failed|terminate called|Sanitizer|runtime error:" "$STRATA_LOG"; then die "server log shows a crash"; fi
stop_strata
echo "PASS: $(basename "$0")"
