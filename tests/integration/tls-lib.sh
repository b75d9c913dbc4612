# shellcheck shell=bash
# tls-lib.sh: makes TLS material for the tests with GnuTLS's own tools
# (sourced after functions.sh).
#
#   make_pki DIR       CA, server cert (CN/SAN localhost) and a client cert
#                      signed by the CA: DIR/{ca-cert,server-cert,server-key}.pem
#                      and DIR/client/{ca-cert,client-cert,client-key}.pem
#   make_rogue DIR     another CA and a client cert it signed (wrong CA)
#   make_psk FILE USER a PSK file in psktool's username:hexkey format

certtool_template() { # file, then lines
  local f=$1; shift
  printf '%s\n' "$@" >"$f"
}

make_ca() { # dir name
  local d=$1 name=$2
  mkdir -p "$d"
  certtool --generate-privkey --key-type=ecdsa --outfile "$d/ca-key.pem" 2>/dev/null
  certtool_template "$d/ca.info" "cn = $name" "ca" "cert_signing_key" "expiration_days = 30"
  certtool --generate-self-signed --load-privkey "$d/ca-key.pem" --template "$d/ca.info" \
    --outfile "$d/ca-cert.pem" 2>/dev/null
}

make_signed() { # cadir out-prefix cn role(tls_www_server|tls_www_client)
  local ca=$1 out=$2 cn=$3 role=$4
  certtool --generate-privkey --key-type=ecdsa --outfile "$out-key.pem" 2>/dev/null
  certtool_template "$out.info" "cn = $cn" "dns_name = localhost" "ip_address = 127.0.0.1" \
    "$role" "signing_key" "encryption_key" "expiration_days = 30"
  certtool --generate-certificate --load-privkey "$out-key.pem" --load-ca-certificate "$ca/ca-cert.pem" \
    --load-ca-privkey "$ca/ca-key.pem" --template "$out.info" --outfile "$out-cert.pem" 2>/dev/null
}

make_pki() {
  local d=$1
  make_ca "$d" "strata test CA"
  make_signed "$d" "$d/server" localhost tls_www_server
  mkdir -p "$d/client"
  cp "$d/ca-cert.pem" "$d/client/ca-cert.pem"
  make_signed "$d" "$d/client/client" "strata client" tls_www_client
  [ -s "$d/server-cert.pem" ] && [ -s "$d/client/client-cert.pem" ] || die "certtool failed"
}

make_rogue() {
  local d=$1
  make_ca "$d" "rogue CA"
  mkdir -p "$d/client"
  make_signed "$d" "$d/client/client" "rogue client" tls_www_client
  cp "$d/ca-cert.pem" "$d/client/ca-cert.pem"
}

make_psk() {
  local f=$1 user=$2
  psktool -u "$user" -p "$f" >/dev/null 2>&1 || die "psktool failed"
  grep -q "^$user:" "$f" || die "psktool wrote no key for $user"
}
