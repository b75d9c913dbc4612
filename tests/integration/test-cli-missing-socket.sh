#!/bin/bash
# CLI clients against a control socket with no server (missing path, stale socket, not a socket): non-zero exit and a clear error naming the path and suggesting --control; nothing on stdout.
. "$(dirname "$0")/functions.sh"

check() {  # check PATH DESCRIPTION REASON
  local p=$1 what=$2 reason=$3 cmd rc out
  for cmd in list "table" "status" "status disk" server "list --json"; do
    rc=0
    out=$(timeout 10 "$STRATA" $cmd --control "$p" 2>"$WORK/err") || rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || die "strata $cmd with $what: rc $rc"
    [ -z "$out" ] || die "strata $cmd with $what printed on stdout: $out"
    grep -qF "$p" "$WORK/err" || die "strata $cmd with $what: the error does not name $p: $(cat "$WORK/err")"
    grep -q -- "--control" "$WORK/err" || die "strata $cmd with $what: no hint about --control: $(cat "$WORK/err")"
    grep -q "$reason" "$WORK/err" || die "strata $cmd with $what: reason '$reason' missing: $(cat "$WORK/err")"
  done
  echo "ok: $what: $(cat "$WORK/err")"
}

check "$WORK/none.sock" "a missing socket" "No such file or directory"

# A stale socket left by a killed server.
truncate -s 1M "$WORK/x.img"
start_strata --file "$WORK/x.img"
kill9_strata
[ -S "$CTL" ] || die "no stale socket to test with"
check "$CTL" "a stale socket" "Connection refused"

touch "$WORK/plain"
check "$WORK/plain" "a regular file" "Connection refused"

# STRATA_CONTROL is the default when --control is not given.
rc=0
STRATA_CONTROL=$WORK/env.sock "$STRATA" list 2>"$WORK/err" || rc=$?
[ $rc -ne 0 ] && grep -qF "$WORK/env.sock" "$WORK/err" || die "STRATA_CONTROL not used: $(cat "$WORK/err")"
echo PASS
