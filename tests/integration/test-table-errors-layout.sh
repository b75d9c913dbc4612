#!/bin/bash
# table syntax and layout errors (non-numeric start, zero sectors, gap, overlap, unknown target, missing fields, duplicate device, empty table): serve exits non-zero, names file:line, field and reason, and serves nothing.
. "$(dirname "$0")/functions.sh"

bad_table start-not-a-number "abc 2048 zero\n" \
  "@CONF@:1:" "field 1 (start_sector)" "'abc' is not a non-negative integer"
bad_table start-negative "0 8 zero\n-8 8 zero\n" \
  "@CONF@:2:" "field 1 (start_sector)" "'-8' is not a non-negative integer"
bad_table sectors-not-a-number "# a comment\n0 1k zero\n" \
  "@CONF@:2:" "field 2 (num_sectors)" "'1k' is not a non-negative integer"
bad_table zero-sectors "0 8 zero\n8 0 zero\n" \
  "@CONF@:2:" "field 2 (num_sectors)" "at least one sector"
bad_table gap "0 2048 zero\n\n2049 100 zero\n" \
  "@CONF@:3:" "field 1 (start_sector)" "gap" "2049" "ends at sector 2048"
bad_table overlap "0 2048 zero\n2047 100 zero\n" \
  "@CONF@:2:" "field 1 (start_sector)" "overlaps" "ends at sector 2048"
bad_table first-not-at-zero "8 8 zero\n" \
  "@CONF@:1:" "field 1 (start_sector)" "gap"
bad_table unknown-target "0 8 zero\n8 8 stripe x\n" \
  "@CONF@:2:" "field 3 (target)" "unknown target 'stripe'" "file, linear, zero, error, memory, pattern"
bad_table missing-sectors "0\n" \
  "@CONF@:1:" "field 2 (num_sectors)" "missing"
bad_table missing-target "0 8\n" \
  "@CONF@:1:" "field 3 (target)" "missing"
bad_table duplicate-device "[a]\n0 8 zero\n[b]\n0 8 zero\n[a]\n0 8 zero\n" \
  "@CONF@:5:" "device 'a' is defined twice"
bad_table device-without-segments "[a]\n[b]\n0 8 zero\n" \
  "@CONF@:1:" "device 'a' has no segments"
bad_table bad-header "[a\n0 8 zero\n" \
  "@CONF@:1:" "device header"
bad_table bad-device-option "[a rw]\n0 8 zero\n" \
  "@CONF@:1:" "unknown device option 'rw'"
bad_table empty "" \
  "@CONF@:" "no device defined"
bad_table only-comments "# nothing here\n\n   # still nothing\n" \
  "@CONF@:" "no device defined"

# The same device name in two --table files: the second file's line is named.
printf '[a]\n0 8 zero\n' >"$WORK/one.conf"
printf '# second table\n[b]\n0 8 zero\n[a]\n0 16 zero\n' >"$WORK/two.conf"
rm -f "$SOCK" "$CTL"
rc=0
out=$(timeout 10 "$STRATA" serve --table "$WORK/one.conf" --table "$WORK/two.conf" --unix "$SOCK" \
  --control "$CTL" 2>&1) || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "serve accepted device 'a' from two tables (rc $rc)"
grep -qF "$WORK/two.conf:4: device 'a' is defined twice" <<<"$out" ||
  die "duplicate device across tables: unexpected message: $out"
[ ! -e "$SOCK" ] && [ ! -e "$CTL" ] || die "duplicate device across tables: a socket was created"

# A missing table file is refused before anything starts.
rm -f "$SOCK" "$CTL"
rc=0
out=$(timeout 10 "$STRATA" serve --table "$WORK/nope.conf" --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "serve accepted a missing table file (rc $rc)"
grep -qF "$WORK/nope.conf" <<<"$out" || die "missing table: the message does not name the file: $out"
[ ! -e "$SOCK" ] && [ ! -e "$CTL" ] || die "missing table: a socket was created"
echo PASS
