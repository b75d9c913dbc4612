#!/usr/bin/env bash
# test-cli-version-usage.sh: `strata --version` prints the CMake project version (and git describe) and exits 0;
# a usage error (no verb, an unknown verb, a verb missing its own verb, an unknown option) exits 2 and lists the
# verbs of the command it was in; `serve --help` names option values for people, with no CLI11 type names or
# validator descriptions.
source "$(dirname "$0")/functions.sh"

want=$(sed -nE 's/^project\(strata VERSION ([0-9.]+).*/\1/p' "$STRATA_SRC/CMakeLists.txt")
[ -n "$want" ] || die "no project version in CMakeLists.txt"
out=$("$STRATA" --version) || die "strata --version failed"
grep -qE "^strata $want( \(git [^)]+\))?$" <<<"$out" || die "--version: '$out', expected strata $want"

# usage_error WHAT EXPECTED-VERBS... -- ARGS: exit 2, the verbs listed on stderr, nothing on stdout.
usage_error() {
  local what=$1 verbs=() rc=0 out err
  shift
  while [ "$1" != -- ]; do verbs+=("$1"); shift; done
  shift
  out=$("$STRATA" "$@" 2>"$WORK/err") || rc=$?
  err=$(cat "$WORK/err")
  [ $rc -eq 2 ] || die "$what: exit status $rc, expected 2: $err"
  [ -z "$out" ] || die "$what: printed on stdout: $out"
  grep -q '^strata: ' <<<"$err" || die "$what: no error line: $err"
  for v in "${verbs[@]}"; do
    grep -qE "^  $v +[^ ]" <<<"$err" || die "$what: verb '$v' not listed: $err"
  done
}
usage_error "no verb" serve list status dirty sync layer merge flatten create remove jobs --
usage_error "unknown verb" serve list status -- frobnicate
usage_error "dirty without its verb" start stop status list clear checkpoint -- dirty
usage_error "layer without its verb" create info check -- layer
usage_error "unknown option" -- serve --no-such-option
grep -q -- "--no-such-option" "$WORK/err" || die "the unknown option is not named: $(cat "$WORK/err")"
usage_error "missing argument" -- sync

out=$("$STRATA" serve --help) || die "serve --help failed"
grep -qE '^Usage: strata serve ' <<<"$out" || die "usage line: $out"
if grep -nE 'TEXT|UINT|FLOAT|BOOLEAN|->|OR \{|:FILE|:DIR|\{off,on|\.\.\.' <<<"$out" >&2; then
  die "serve --help shows CLI11 internals (above)"
fi
for o in "--table FILE" "--tcp HOST:PORT" "--tls off|on|require" "--sched batch|normal" "--fuse-io-uring on|off" \
  "--max-connections N"; do
  grep -qF -- "$o" <<<"$out" || die "serve --help lacks '$o': $out"
done
# Flags take no value.
grep -qE '^  --direct +With' <<<"$out" || die "--direct shown with a value: $(grep -- --direct <<<"$out")"
grep -q '(default: 256)' <<<"$out" || die "defaults not shown: $out"
