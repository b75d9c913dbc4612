#!/usr/bin/env bash
# test-cli-json-progress.sh: `layer create --json` and `layer check --json` print JSON (check: ok, problems,
# repaired, remaining; exit 1 while problems remain); a flatten without a terminal prints its progress at most
# once every 5 s (not a line per chunk), with a rate, and ends with a 100% line.
source "$(dirname "$0")/functions.sh"
requires jq
L=$WORK/a.layer
out=$("$STRATA" layer create "$L" --size 64M --chunk-size 65536 --json) || die "layer create --json failed"
jq -e '.size == 67108864 and .chunk_size == 65536 and (.uuid | test("^[0-9a-f-]{36}$")) and .parent_path == ""' \
  <<<"$out" >/dev/null || die "layer create --json: $out"
[ "$(jq -r .path <<<"$out")" = "$L" ] || die "path: $out"
out=$("$STRATA" layer check "$L" --json) || die "layer check --json on a sound layer failed: $out"
jq -e '.ok == true and .problems == [] and .remaining == []' <<<"$out" >/dev/null || die "check: $out"

# A wrong header checksum: a problem, exit 1, nothing changed; --repair fixes it.
printf '\xde\xad\xbe\xef' | dd of="$L" bs=1 seek=4092 conv=notrunc status=none
before=$(sha256sum <"$L")
rc=0; out=$("$STRATA" layer check "$L" --json) || rc=$?
[ $rc = 1 ] || die "check --json of a damaged layer: exit $rc"
jq -e '.ok == false and (.problems | length) > 0 and .repaired == [] and .remaining == .problems' <<<"$out" >/dev/null ||
  die "check of a damaged layer: $out"
[ "$(sha256sum <"$L")" = "$before" ] || die "check without --repair changed the layer"
out=$("$STRATA" layer check "$L" --repair --json) || die "check --repair --json failed: $out"
jq -e '.ok == true and (.repaired | length) > 0 and .remaining == []' <<<"$out" >/dev/null || die "repair: $out"

# Progress without a terminal: 1 GiB (256 chunks of 4 MiB).
truncate -s 1G "$WORK/big.img"
printf '[big]\n0 2097152 file %s 0\n' "$WORK/big.img" >"$WORK/t.conf"
start=$(date +%s%N)
"$STRATA" flatten big --to "$WORK/flat.img" --table "$WORK/t.conf" >/dev/null 2>"$WORK/progress" || die "flatten"
ms=$((($(date +%s%N) - start) / 1000000))
rm -f "$WORK/flat.img"
n=$(wc -l <"$WORK/progress")
max=$((2 + ms / 5000))
[ "$n" -le "$max" ] || die "$n progress lines in $ms ms (at most $max): $(cat "$WORK/progress")"
tail -1 "$WORK/progress" | grep -qE '^flatten \[#+\] 100% 1\.0 GiB/1\.0 GiB( [0-9.]+ [KMG]?i?B/s)?$' ||
  die "last progress line: $(tail -1 "$WORK/progress")"
if grep -q $'\r' "$WORK/progress"; then die "carriage returns without a terminal"; fi
