#!/bin/bash
# CLI help: `strata --help` lists the subcommands, `strata serve --help` the serve options, `strata serve --help-targets` describes all eight targets; all exit 0 without starting a server; a bad option or no subcommand fails.
. "$(dirname "$0")/functions.sh"

out=$("$STRATA" --help) || die "strata --help failed"
for sub in serve list table status server; do
  grep -qE "^ +$sub +" <<<"$out" || die "strata --help does not list '$sub': $out"
done

out=$("$STRATA" serve --help) || die "strata serve --help failed"
for opt in --table --file --offset --direct --export --unix --tcp --read-only --control --help-targets; do
  grep -qE -- "(^|[ ,])$opt( |,|$)" <<<"$out" || die "strata serve --help does not mention $opt: $out"
done
grep -q "127.0.0.1:10809" <<<"$out" || die "strata serve --help does not give the default listener"

for sub in list table status server; do
  out=$("$STRATA" $sub --help) || die "strata $sub --help failed"
  grep -q -- --control <<<"$out" && grep -q -- --json <<<"$out" || die "strata $sub --help lacks --control/--json: $out"
done

out=$(timeout 10 "$STRATA" serve --help-targets --control "$CTL" --unix "$SOCK") || die "strata serve --help-targets failed"
[ ! -e "$CTL" ] && [ ! -e "$SOCK" ] || die "--help-targets started a server"
for t in "file <path> <offset>" "linear <device> <offset_sectors>" zero error memory pattern "cow <top-layer>" "nfs <url> <offset>" "rbd <pool>/<image>" "cache <device> <cache-file>"; do
  grep -qE "^$t" <<<"$out" || die "--help-targets does not describe '$t': $out"
done
[ "$(grep -cE '^[a-z]+( |$)' <<<"$out")" = 10 ] || die "--help-targets should describe exactly 10 targets: $out"
grep -q "direct=on" <<<"$out" && grep -q "ro" <<<"$out" || die "--help-targets: file options missing"

# Misuse fails with a message, exit status non-zero.
rc=0; out=$("$STRATA" 2>&1) || rc=$?
[ $rc -ne 0 ] || die "strata without a subcommand succeeded"
grep -qi "subcommand" <<<"$out" || die "strata without a subcommand: $out"
rc=0; out=$("$STRATA" serve --no-such-option 2>&1) || rc=$?
[ $rc -ne 0 ] || die "an unknown option was accepted"
grep -q -- "--no-such-option" <<<"$out" || die "unknown option not named: $out"
rc=0; out=$(timeout 10 "$STRATA" serve --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "serve with nothing to serve: rc $rc"
grep -q "nothing to serve" <<<"$out" || die "serve with nothing to serve: $out"
echo PASS
