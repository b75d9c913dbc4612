#!/bin/bash
# Bad TLS credentials are refused, each with a server log line naming the connection and a reason, while good clients (one connected throughout, new ones after) keep working and the server stays up: wrong PSK key, unknown PSK user, a client trusting another CA; under --tls-verify-peer a client without a certificate and one whose certificate a rogue CA signed.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
source "$(dirname "$0")/tls-lib.sh"
requires nbdinfo qemu-io certtool psktool

PKI=$WORK/pki ROGUE=$WORK/rogue
make_pki "$PKI"
make_rogue "$ROGUE"
make_psk "$WORK/keys.psk" alice
mkdir -p "$WORK/wrong" "$WORK/nocert"
make_psk "$WORK/wrong/keys.psk" alice        # same user, another key
make_psk "$WORK/mallory.psk" mallory         # a user the server does not know
grep -q "^alice:" "$WORK/keys.psk" && ! cmp -s "$WORK/keys.psk" "$WORK/wrong/keys.psk" || die "psktool made the same key twice"
cp "$PKI/ca-cert.pem" "$WORK/nocert/"        # trusts the right CA, has no certificate
mkdir -p "$WORK/roguecert"                     # trusts the right CA, a certificate the rogue CA signed
cp "$PKI/ca-cert.pem" "$WORK/roguecert/"
cp "$ROGUE/client/client-cert.pem" "$ROGUE/client/client-key.pem" "$WORK/roguecert/"
truncate -s 8M "$WORK/disk.img"
export PKI ROGUE

GOOD_PSK="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$WORK/keys.psk"
GOOD_X509="nbds+unix:///?socket=$SOCK&tls-certificates=$PKI/client"

# refused WHAT REGEX CMD...: CMD (a client) must fail, and a new server log
# line "conn N (unix): handshake ended: <reason>" must match REGEX.
refused() {
  local what=$1 re=$2 before out
  shift 2
  before=$(wc -l <"$STRATA_LOG")
  if out=$("$@" 2>&1); then die "$what: the client succeeded: $out"; fi
  LAST_CLIENT_ERROR=$out
  echo "$what: client error: $(tail -1 <<<"$out")"
  for _ in $(seq 1 100); do
    if tail -n +"$((before + 1))" "$STRATA_LOG" | grep -qE "conn [0-9]+ \(unix\): handshake ended: .*$re"; then
      echo "$what: server: $(tail -n +"$((before + 1))" "$STRATA_LOG" | grep -E "handshake ended" | tail -1)"
      server_alive
      return 0
    fi
    sleep 0.05
  done
  tail -n +"$((before + 1))" "$STRATA_LOG" >&2
  die "$what: no server log line naming the connection and a reason matching '$re'"
}

# A good client that stays connected: a python libnbd process driven over a FIFO.
start_keeper() { # URI
  cat >"$WORK/keeper.py" <<'PYEOF'
import os, sys, nbd
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["URI"])
print("connected", flush=True)
n = 0
for line in sys.stdin:
    if line.strip() == "check":
        d = os.urandom(4096) + bytes([n % 256]) * 4096
        h.pwrite(d, 8192 * n)
        assert h.pread(8192, 8192 * n) == d
        n += 1
        print("ok", n, flush=True)
    elif line.strip() == "quit":
        h.shutdown()
        print("bye", flush=True)
        break
PYEOF
  mkfifo "$WORK/keeper.in"
  URI=$1 $PYTHON "$WORK/keeper.py" <"$WORK/keeper.in" >"$WORK/keeper.out" 2>&1 &
  KEEPER=$!
  exec 7>"$WORK/keeper.in"
}
keeper_check() {
  local want=$(( $(grep -c '^ok' "$WORK/keeper.out" || true) + 1 ))
  echo check >&7
  for _ in $(seq 1 100); do
    [ "$(grep -c '^ok' "$WORK/keeper.out" || true)" -ge "$want" ] && return 0
    kill -0 "$KEEPER" 2>/dev/null || break
    sleep 0.05
  done
  cat "$WORK/keeper.out" >&2
  die "the good client connected throughout stopped working"
}
stop_keeper() {
  echo quit >&7
  exec 7>&-
  wait "$KEEPER" || { cat "$WORK/keeper.out" >&2; die "the long-lived good client failed"; }
  grep -q bye "$WORK/keeper.out" || die "the long-lived good client did not finish: $(cat "$WORK/keeper.out")"
  rm -f "$WORK/keeper.in" "$WORK/keeper.out"
}

# python ssl client: HANDSHAKE(cafile, certfile, keyfile) then NBD GO.
ssl_client() { # cafile [cert key]
  CAFILE=$1 CERT=${2:-} KEY=${3:-} py <<'PYEOF'
import os, ssl, sys
from nbd_raw import *
ctx = ssl.create_default_context(cafile=os.environ["CAFILE"])
if os.environ["CERT"]:
    ctx.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
r = Raw()
r.greet()
typ, _, _ = r.option(OPT_STARTTLS)
assert typ == REP_ACK, hex(typ)
try:
    r.s = ctx.wrap_socket(r.s, server_hostname="localhost")
    typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
    rd = r.cmd(CMD_READ, 0, 512)
except (ssl.SSLError, Closed, ConnectionError, OSError) as e:
    print("refused:", type(e).__name__, e)
    sys.exit(1)
print("served: GO", hex(typ), "read error", rd["error"])
PYEOF
}

# ---- PSK and X.509 without --tls-verify-peer --------------------------------
start_strata --file "$WORK/disk.img" --tls=require --tls-certificates "$PKI" --tls-psk "$WORK/keys.psk"
start_keeper "$GOOD_PSK"
keeper_check
refused "wrong PSK key" "TLS handshake: .+" \
  nbdinfo "nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$WORK/wrong/keys.psk"
# The server tells the client why with a TLS alert (not just a dropped connection).
grep -q "fatal alert" <<<"$LAST_CLIENT_ERROR" || die "wrong PSK key: the client got no TLS alert: $LAST_CLIENT_ERROR"
keeper_check
refused "unknown PSK user" "TLS handshake: .+" \
  nbdinfo "nbds+unix://mallory@/?socket=$SOCK&tls-psk-file=$WORK/mallory.psk"
grep -q "fatal alert" <<<"$LAST_CLIENT_ERROR" || die "unknown PSK user: the client got no TLS alert: $LAST_CLIENT_ERROR"
keeper_check
# (libnbd does not check the server's certificate over a Unix socket, so the
# clients that trust only the rogue CA are python's ssl and qemu.)
refused "client trusting another CA (python ssl)" "TLS handshake: .+" \
  ssl_client "$ROGUE/ca-cert.pem"
keeper_check
refused "client trusting another CA (qemu)" ".+" \
  qemu-io --object "tls-creds-x509,id=tls0,endpoint=client,dir=$ROGUE/client" \
  --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0,tls-hostname=localhost" -c "read 0 512"
keeper_check
# Controls: the same clients with good credentials are served.
nbdinfo --size "$GOOD_PSK" >/dev/null || die "good PSK client refused"
nbdinfo --size "$GOOD_X509" >/dev/null || die "good X.509 client refused"
ssl_client "$PKI/ca-cert.pem" || die "python ssl client trusting the right CA refused"
keeper_check
stop_keeper
finish
: >"$STRATA_LOG"

# ---- --tls-verify-peer: client certificates are required --------------------
start_strata --file "$WORK/disk.img" --tls=require --tls-certificates "$PKI" --tls-verify-peer
start_keeper "$GOOD_X509"
keeper_check
refused "no client certificate (libnbd)" "[Cc]ertificate" \
  nbdinfo "nbds+unix:///?socket=$SOCK&tls-certificates=$WORK/nocert"
keeper_check
refused "no client certificate (python ssl)" "[Cc]ertificate" \
  ssl_client "$PKI/ca-cert.pem"
keeper_check
refused "client certificate signed by a rogue CA" "client certificate: .+" \
  ssl_client "$PKI/ca-cert.pem" "$ROGUE/client/client-cert.pem" "$ROGUE/client/client-key.pem"
keeper_check
# (GnuTLS clients, libnbd here, do not send a certificate whose issuer the
# server did not ask for: the server sees none.)
refused "rogue-signed client certificate (libnbd)" "[Cc]ertificate" \
  nbdinfo "nbds+unix:///?socket=$SOCK&tls-certificates=$WORK/roguecert"
keeper_check
# Controls: a client with a good certificate is served by every client kind.
nbdinfo --size "$GOOD_X509" >/dev/null || die "good X.509 client refused under --tls-verify-peer"
ssl_client "$PKI/ca-cert.pem" "$PKI/client/client-cert.pem" "$PKI/client/client-key.pem" ||
  die "python ssl client with a good certificate refused under --tls-verify-peer"
qio_out=$(qemu-io --object "tls-creds-x509,id=tls0,endpoint=client,dir=$PKI/client" \
  --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0,tls-hostname=localhost" \
  -c "write -P 0x44 100000 5000" -c "read -P 0x44 100000 5000" 2>&1) || die "qemu-io with a good certificate: $qio_out"
! grep -qiE "fail|error|mismatch" <<<"$qio_out" || die "qemu-io with a good certificate: $qio_out"
keeper_check
stop_keeper
grep -qE "conn [0-9]+ \(unix\): TLS established: TLS1\.[23] X\.509" "$STRATA_LOG" || die "no TLS established line"
finish
