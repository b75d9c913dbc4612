#!/bin/bash
# --tls=on serves plaintext and TLS clients side by side: nbdinfo reports "without TLS" and "with TLS" respectively, data written by one is read back by the other (libnbd, qemu-io plaintext and over tls-creds-psk / tls-creds-x509), and only the TLS clients log "TLS established".
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
source "$(dirname "$0")/tls-lib.sh"
requires nbdinfo qemu-io certtool psktool

PKI=$WORK/pki
make_pki "$PKI"
mkdir -p "$WORK/psk"
make_psk "$WORK/psk/keys.psk" alice
truncate -s 8M "$WORK/disk.img"
start_strata --file "$WORK/disk.img" --tls=on --tls-certificates "$PKI" --tls-psk "$WORK/psk/keys.psk"
export PSK_URI="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$WORK/psk/keys.psk"
export X509_URI="nbds+unix:///?socket=$SOCK&tls-certificates=$PKI/client"
PLAIN_URI=$(uri)
export PLAIN_URI

info=$(nbdinfo "$PLAIN_URI") || die "plaintext nbdinfo failed under --tls=on: $info"
grep -q "without TLS" <<<"$info" || die "plaintext nbdinfo: $info"
grep -q "export-size: 8388608" <<<"$info" || die "plaintext nbdinfo: $info"
for u in "$PSK_URI" "$X509_URI"; do
  info=$(nbdinfo "$u") || die "TLS nbdinfo failed under --tls=on: $info"
  grep -q "with TLS" <<<"$info" || die "TLS nbdinfo ($u): $info"
done

# Two clients at the same time, one of each kind, each reading the other's writes.
py <<'PYEOF'
import os, nbd
def connect(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h
plain = connect(os.environ["PLAIN_URI"])
tls = connect(os.environ["PSK_URI"])
x509 = connect(os.environ["X509_URI"])
a, b, c = os.urandom(65536), os.urandom(65536), os.urandom(4096)
plain.pwrite(a, 0)
tls.pwrite(b, 1 << 20)
x509.pwrite(c, 3 << 20)
for h in (plain, tls, x509):
    assert h.pread(65536, 0) == a
    assert h.pread(65536, 1 << 20) == b
    assert h.pread(4096, 3 << 20) == c
    h.flush()
for h in (plain, tls, x509):
    h.shutdown()
print("plaintext and TLS clients side by side ok")
PYEOF

qio "$PLAIN_URI" "write -P 0x21 5000 1000" "read -P 0x21 5000 1000"
out=$(qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$WORK/psk,username=alice" \
  --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0" \
  -c "read -P 0x21 5000 1000" -c "write -P 0x22 7000 3000" 2>&1) || die "qemu-io PSK: $out"
! grep -qiE "fail|error|mismatch" <<<"$out" || die "qemu-io PSK: $out"
out=$(qemu-io --object "tls-creds-x509,id=tls0,endpoint=client,dir=$PKI/client" \
  --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0,tls-hostname=localhost" \
  -c "read -P 0x22 7000 3000" -c "read -P 0x21 5000 1000" 2>&1) || die "qemu-io X.509: $out"
! grep -qiE "fail|error|mismatch" <<<"$out" || die "qemu-io X.509: $out"
qio -r "$PLAIN_URI" "read -P 0x22 7000 3000"
expect_bytes "$WORK/disk.img" 5000 1000 0x21
expect_bytes "$WORK/disk.img" 7000 3000 0x22

# TLS sessions: nbdinfo 2, libnbd handles 2, qemu-io 2 (the plaintext clients make none).
n=$(grep -cE "conn [0-9]+ \(unix\): TLS established" "$STRATA_LOG" || true)
[ "$n" = 6 ] || die "expected 6 TLS sessions (the TLS clients only), the log has $n"
[ "$(grep -c "PSK user alice" "$STRATA_LOG")" = 3 ] || die "expected 3 PSK sessions"
finish
