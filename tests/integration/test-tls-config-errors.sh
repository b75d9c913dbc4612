#!/bin/bash
# Bad TLS configuration stops `strata serve` at start-up with a clear error and nothing served (no NBD or control socket): --tls=require/on without credentials, --tls-verify-peer without certificates (or without ca-cert.pem), a missing/corrupt/mismatched server key or certificate (named), a missing PSK file, an unknown --tls mode; the same set-up with good files starts.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/tls-lib.sh"
requires certtool psktool

PKI=$WORK/pki
make_pki "$PKI"
make_psk "$WORK/keys.psk" alice
truncate -s 4M "$WORK/disk.img"

# bad_config REGEX ARGS...: `strata serve ARGS` must exit non-zero, promptly,
# with an error matching REGEX, and must not have served anything.
bad_config() {
  local re=$1 rc=0 out
  shift
  rm -f "$SOCK" "$CTL"
  out=$(timeout 10 "$STRATA" serve --file "$WORK/disk.img" --unix "$SOCK" --control "$CTL" "$@" 2>&1) || rc=$?
  [ $rc -ne 124 ] || die "strata serve $* kept running (it should have refused the configuration)"
  [ $rc -ne 0 ] || die "strata serve $* exited 0: $out"
  grep -qE -- "$re" <<<"$out" || die "strata serve $*: error does not match '$re': $out"
  [ ! -e "$SOCK" ] || die "strata serve $*: the NBD socket was created"
  [ ! -e "$CTL" ] || die "strata serve $*: the control socket was created"
  if grep -qE "CHECK failed|terminate called|Sanitizer|Segmentation" <<<"$out"; then die "crash: $out"; fi
  echo "ok ($rc): $*: $(grep -iE 'error|needs|--tls' <<<"$out" | head -1)"
}

certdir() { # name, then files to copy from $PKI
  local d=$WORK/$1 f
  shift
  mkdir -p "$d"
  for f in "$@"; do cp "$PKI/$f" "$d/"; done
  echo "$d"
}

bad_config "--tls=on/require needs --tls-certificates DIR or --tls-psk FILE" --tls=require
bad_config "--tls=on/require needs --tls-certificates DIR or --tls-psk FILE" --tls=on
bad_config "--tls-verify-peer needs --tls-certificates" --tls=require --tls-psk "$WORK/keys.psk" --tls-verify-peer

D=$(certdir nokey ca-cert.pem server-cert.pem)
bad_config "$D/server-key\.pem" --tls=require --tls-certificates "$D"
D=$(certdir nocert ca-cert.pem server-key.pem)
bad_config "$D/server-cert\.pem" --tls=require --tls-certificates "$D"
D=$(certdir noca server-cert.pem server-key.pem)
bad_config "--tls-verify-peer needs $D/ca-cert\.pem" --tls=require --tls-certificates "$D" --tls-verify-peer
D=$(certdir badkey ca-cert.pem server-cert.pem)
echo "not a key" >"$D/server-key.pem"
bad_config "$D/server-key\.pem" --tls=require --tls-certificates "$D"
D=$(certdir mismatch ca-cert.pem server-cert.pem)
cp "$PKI/client/client-key.pem" "$D/server-key.pem"   # a real key, but not the certificate's
bad_config "$D/server-key\.pem" --tls=require --tls-certificates "$D"
D=$(certdir badca server-cert.pem server-key.pem)
echo "garbage" >"$D/ca-cert.pem"
bad_config "$D/ca-cert\.pem" --tls=require --tls-certificates "$D"
bad_config "$WORK/no-such\.psk" --tls=require --tls-psk "$WORK/no-such.psk"
bad_config "$WORK/no-such-dir" --tls=require --tls-certificates "$WORK/no-such-dir"
bad_config "--tls.*(maybe|not in|off|require)" --tls=maybe

# Controls: the complete directory and PSK file do start (so the failures above were the files').
for args in "--tls-certificates $PKI" "--tls-certificates $PKI --tls-verify-peer" "--tls-psk $WORK/keys.psk" \
  "--tls-certificates $PKI --tls-psk $WORK/keys.psk"; do
  # shellcheck disable=SC2086
  start_strata --file "$WORK/disk.img" --tls=require $args
  [ -S "$SOCK" ] || die "no NBD socket with $args"
  stop_strata
done
echo "PASS: $(basename "$0")"
