#!/bin/bash
# Checks that a malformed PSK file stops `strata serve --tls=require` at start-up with an error naming the file and the line (a key that is not hex, no colon, an empty file, an odd number of hex digits, an empty username or key, a directory), serving nothing; a world-readable key file starts with a warning, a private one without.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/tls-lib.sh"
requires psktool

truncate -s 4M "$WORK/disk.img"
bad_psk() { # NAME CONTENT MESSAGE
  local f=$WORK/$1.psk rc=0 out
  printf '%b' "$2" >"$f"
  chmod 600 "$f"
  rm -f "$SOCK" "$CTL"
  out=$(timeout 10 "$STRATA" serve --file "$WORK/disk.img" --unix "$SOCK" --control "$CTL" --tls=require \
    --tls-psk "$f" 2>&1) || rc=$?
  [ $rc -ne 124 ] || die "$1: strata serve kept running with a bad PSK file"
  [ $rc -ne 0 ] || die "$1: strata serve exited 0: $out"
  grep -qF -- "--tls-psk $f: $3" <<<"$out" || die "$1: expected '--tls-psk $f: $3' in: $out"
  [ ! -e "$SOCK" ] && [ ! -e "$CTL" ] || die "$1: a socket was created"
  echo "ok: $1: $(grep -F -- --tls-psk <<<"$out")"
}
bad_psk not-hex 'alice:zzzz\n' "line 1: the key is not hexadecimal"
bad_psk no-colon 'alice\n' "line 1: no ':' between the username and the key"
bad_psk empty '' "no key in it"
bad_psk blank-lines '\n\n' "no key in it"
bad_psk odd 'alice:abc\n' "line 1: the key has an odd number of hex digits"
bad_psk second-line 'alice:0123456789abcdef\nbob:12g4\n' "line 2: the key is not hexadecimal"
bad_psk no-user ':0123456789abcdef\n' "line 1: empty username"
bad_psk no-key 'alice:\n' "line 1: empty key"
mkdir "$WORK/dir.psk"
rc=0
out=$(timeout 10 "$STRATA" serve --file "$WORK/disk.img" --unix "$SOCK" --control "$CTL" --tls=require \
  --tls-psk "$WORK/dir.psk" 2>&1) || rc=$?
[ $rc -ne 0 ] && grep -qiE "not a regular file|directory" <<<"$out" || die "a directory as PSK file: rc $rc: $out"

# A good file (psktool's own output): private, no warning; world-readable, a warning.
make_psk "$WORK/keys.psk" alice
chmod 600 "$WORK/keys.psk"
start_strata --file "$WORK/disk.img" --tls=require --tls-psk "$WORK/keys.psk"
stop_strata
grep -q "readable by every user" "$STRATA_LOG" && die "a warning for a private key file: $(cat "$STRATA_LOG")"
chmod 644 "$WORK/keys.psk"
start_strata --file "$WORK/disk.img" --tls=require --tls-psk "$WORK/keys.psk"
stop_strata
grep -qF -- "--tls-psk $WORK/keys.psk: the key file is readable by every user (mode 644): chmod o-r it" "$STRATA_LOG" ||
  die "no warning for a world-readable key file: $(cat "$STRATA_LOG")"
echo "PASS: $(basename "$0")"
