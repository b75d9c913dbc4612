#!/bin/bash
# Listening on a non-loopback TCP address without --tls=require logs a warning naming the address (--tls=off and --tls=on); with --tls=require, or on 127.0.0.1 / localhost, there is none. The TCP listener serves in every case.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/tls-lib.sh"
requires nbdinfo psktool

make_psk "$WORK/keys.psk" alice
truncate -s 4M "$WORK/disk.img"
free_port() { $PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run EXPECT(warn|quiet) HOST ARGS...: serve on HOST:<free port>, check the log, check it serves.
run() {
  local expect=$1 host=$2 port addr u c=127.0.0.1
  shift 2
  port=$(free_port)
  addr=$host:$port
  : >"$STRATA_LOG"
  start_strata --file "$WORK/disk.img" --tcp "$addr" "$@"
  case "$host" in \[*) c="[::1]" ;; esac
  case "$*" in
    *--tls=require*) u="nbds://alice@$c:$port/?tls-psk-file=$WORK/keys.psk" ;;
    *) u="nbd://$c:$port/" ;;
  esac
  # The listener greets a TCP client (NBD magic)...
  $PYTHON -c 'import socket, struct, sys
s = socket.create_connection((sys.argv[1].strip("[]"), int(sys.argv[2])), timeout=5)
g = b""
while len(g) < 18:
    c = s.recv(18 - len(g))
    assert c, "closed"
    g += c
assert struct.unpack(">QQ", g[:16]) == (0x4E42444D41474943, 0x49484156454F5054), g' "$c" "$port" ||
    die "--tcp $addr $*: no NBD greeting on port $port"
  # ...and serves it (libnbd sends an IPv6 literal as TLS SNI, which GnuTLS
  # servers refuse, so the full client runs over IPv4 only).
  if [ "$c" = 127.0.0.1 ]; then
    nbdinfo --size "$u" >/dev/null || die "--tcp $addr $*: nothing served on port $port"
  fi
  if [ "$expect" = warn ]; then
    grep -E "^[0-9T:.-]+Z strata: warn" "$STRATA_LOG" | grep -qF -- "--tcp $addr: serving a non-loopback address without --tls=require" ||
      die "--tcp $addr $*: no warning naming $addr: $(cat "$STRATA_LOG")"
  else
    if grep -iE "non-loopback|warn" "$STRATA_LOG"; then die "--tcp $addr $*: unexpected warning (above)"; fi
  fi
  stop_strata
  echo "ok: --tcp $addr $*: $expect"
}

run warn 0.0.0.0                                   # --tls=off by default
run warn 0.0.0.0 --tls=off
run warn 0.0.0.0 --tls=on --tls-psk "$WORK/keys.psk"
run quiet 0.0.0.0 --tls=require --tls-psk "$WORK/keys.psk"
run quiet 127.0.0.1
run quiet 127.0.0.1 --tls=on --tls-psk "$WORK/keys.psk"
run quiet localhost
run warn "[::]"
run warn ""                                        # empty host: every address
run quiet "[::]" --tls=require --tls-psk "$WORK/keys.psk"
run quiet "[::1]"
echo "PASS: $(basename "$0")"
