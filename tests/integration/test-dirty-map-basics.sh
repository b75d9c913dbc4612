#!/bin/bash
# dirty maps: writes (aligned and unaligned), trims and write-zeroes mark exactly their blocks at 4 KiB and 64 KiB granularity, reads mark nothing; dirty list (text and --json), dirty status, nbdinfo --map=strata:dirty:NAME and the listed meta contexts agree; stop removes the context and the file; unknown device/map, duplicate start and bad granularity fail with clear messages.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdinfo jq

IMG=$WORK/d.img
SIZE=$((16 << 20))
truncate -s $SIZE "$IMG"
ST=$WORK/state
start_strata --file "$IMG" --export d --state-dir "$ST"

out=$(ctl dirty start d m) || die "dirty start m: $out"
[ "$out" = "started map 'm' on 'd' (4096 byte blocks)" ] || die "dirty start m printed: $out"
ctl dirty start d big --granularity 65536 >/dev/null || die "dirty start big"
[ -f "$ST/d/m.dmap" ] || die "no map file $ST/d/m.dmap: $(ls -R "$ST")"
[ -f "$ST/d/big.dmap" ] || die "no map file $ST/d/big.dmap"
# A fresh map is empty.
[ -z "$(ctl dirty list d m)" ] || die "a fresh map is not empty: $(ctl dirty list d m)"

# Writes through qemu-io: 1000+5000 touches blocks 0 and 1; 40960+4096 is
# block 10 exactly; the last 100 bytes of the device are in block 4095.
qio "$(uri d)" "write -P 0x11 1000 5000" "write -P 0x22 40960 4096" "write -P 0x33 $((SIZE - 100)) 100" \
  "read 8388608 65536"
# write_zeroes (unaligned: 3 blocks, 258..260) and trim (unaligned, inside
# block 512) through libnbd so that their exact ranges reach the server.
out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
assert h.can_zero() and h.can_trim()
h.zero(3 * 4096 - 200, 258 * 4096 + 100)
h.trim(1024, 2 * 1048576 + 512)
h.pread(4096, 3 * 1048576)
print('ok')
" 2>&1) && [ "$out" = ok ] || die "libnbd zero/trim: $out"

want4k="0 8192
40960 4096
1056768 12288
2097152 4096
16773120 4096"
want64k="0 65536
1048576 65536
2097152 65536
16711680 65536"
got=$(ctl dirty list d m)
[ "$got" = "$want4k" ] || die "dirty list m (4 KiB):
$got
want:
$want4k"
got=$(ctl dirty list d big)
[ "$got" = "$want64k" ] || die "dirty list big (64 KiB):
$got
want:
$want64k"

# --json: granularity, consistency, byte count, extents.
j=$(ctl dirty list d m --json)
[ "$(jq -c . <<<"$j")" = '{"consistent":true,"dirty_bytes":32768,"extents":[[0,8192],[40960,4096],[1056768,12288],[2097152,4096],[16773120,4096]],"granularity":4096}' ] ||
  die "dirty list --json: $j"
j=$(ctl dirty list d big --json)
[ "$(jq -c '[.granularity, .dirty_bytes, .consistent, (.extents | length)]' <<<"$j")" = '[65536,262144,true,4]' ] ||
  die "dirty list big --json: $j"

# dirty status, for the device and for all, as text and JSON.
st=$(ctl dirty status d --json)
[ "$(jq -c 'sort_by(.name) | map([.device, .name, .granularity, .dirty_blocks, .dirty_bytes, .consistent])' <<<"$st")" = \
  '[["d","big",65536,4,262144,true],["d","m",4096,8,32768,true]]' ] || die "dirty status d --json: $st"
[ "$(jq -r '.[] | select(.name == "m") | .path' <<<"$st")" = "$ST/d/m.dmap" ] || die "dirty status path: $st"
[ "$(ctl dirty status --json | jq -c 'map(.name) | sort')" = '["big","m"]' ] || die "dirty status (all) --json"
txt=$(ctl dirty status)
grep -Eq '^d +m +4096 B blocks +32\.0 KiB dirty +consistent$' <<<"$txt" || die "dirty status text: $txt"
grep -Eq '^d +big +65536 B blocks +256\.0 KiB dirty +consistent$' <<<"$txt" || die "dirty status text: $txt"

# The same bits over NBD: the strata:dirty:NAME metadata context.
map_of() { nbdinfo --map="strata:dirty:$1" "$(uri d)" | awk '$3 == 1 { print $1, $2 }'; }
all_of() { nbdinfo --map="strata:dirty:$1" "$(uri d)" | awk '{ n += $2 } END { print n }'; }
got=$(map_of m)
[ "$got" = "$want4k" ] || die "nbdinfo --map=strata:dirty:m:
$got
want:
$want4k"
[ "$(all_of m)" = $SIZE ] || die "nbdinfo --map=strata:dirty:m does not cover the device"
got=$(map_of big)
[ "$got" = "$want64k" ] || die "nbdinfo --map=strata:dirty:big:
$got"
nbdinfo --map="strata:dirty:m" "$(uri d)" | awk '$3 != 0 && $3 != 1 { bad = 1 } END { exit bad }' ||
  die "nbdinfo --map shows flags other than 0 and 1"

# The contexts are listed.
lst=$(nbdinfo --list --content "$(uri)")
grep -qx $'\t\tstrata:dirty:m' <<<"$lst" || die "nbdinfo --list: no strata:dirty:m: $lst"
grep -qx $'\t\tstrata:dirty:big' <<<"$lst" || die "nbdinfo --list: no strata:dirty:big: $lst"
[ "$(nbdinfo --json "$(uri d)" | jq -c '.exports[0].contexts | sort')" = \
  '["base:allocation","strata:dirty:big","strata:dirty:m"]' ] || die "nbdinfo --json contexts: $(nbdinfo --json "$(uri d)")"

# stop: the map, its context and its file are gone; the other map stays.
ctl dirty stop d m || die "dirty stop m"
[ ! -e "$ST/d/m.dmap" ] || die "dirty stop left $ST/d/m.dmap"
[ -f "$ST/d/big.dmap" ] || die "dirty stop m removed big's file"
[ "$(ctl dirty status d --json | jq -c 'map(.name)')" = '["big"]' ] || die "status after stop: $(ctl dirty status d --json)"
[ "$(nbdinfo --json "$(uri d)" | jq -c '.exports[0].contexts | sort')" = '["base:allocation","strata:dirty:big"]' ] ||
  die "contexts after stop: $(nbdinfo --json "$(uri d)")"
rc=0
nbdinfo --map="strata:dirty:m" "$(uri d)" >/dev/null 2>&1 || rc=$?
[ $rc -ne 0 ] || die "nbdinfo --map of a stopped map succeeded"
[ "$(ctl dirty list d big)" = "$want64k" ] || die "big changed when m stopped"
# A map of the same name started again is new and empty.
ctl dirty start d m >/dev/null || die "dirty start m again"
[ -z "$(ctl dirty list d m)" ] || die "a restarted map is not empty"

# Errors: non-zero exit, a clear message, nothing on stdout.
expect_err() {
  local want=$1 out rc=0
  shift
  out=$(ctl "$@" 2>"$WORK/err") || rc=$?
  [ $rc -ne 0 ] || die "strata $* succeeded: $out"
  [ -z "$out" ] || die "strata $* printed on stdout: $out"
  grep -qxF "strata: $want" "$WORK/err" || die "strata $*: expected 'strata: $want', got: $(cat "$WORK/err")"
}
expect_err "no device named 'nosuch'" dirty start nosuch m
expect_err "no device named 'nosuch'" dirty list nosuch m
expect_err "no device named 'nosuch'" dirty status nosuch
expect_err "device 'd' has no dirty map 'nosuch'" dirty list d nosuch
expect_err "device 'd' has no dirty map 'nosuch'" dirty stop d nosuch
expect_err "device 'd' has no dirty map 'nosuch'" dirty checkpoint d nosuch
expect_err "device 'd' has no dirty map 'nosuch'" dirty clear d nosuch
expect_err "device 'd' already has a dirty map 'big'" dirty start d big
expect_err "granularity 1000 must be a power of two of at least 512" dirty start d g --granularity 1000
expect_err "granularity 256 must be a power of two of at least 512" dirty start d g --granularity 256
[ ! -e "$ST/d/g.dmap" ] || die "a refused map left a file"
# The duplicate start did not reset the existing map.
[ "$(ctl dirty list d big)" = "$want64k" ] || die "a refused duplicate start changed big"
[ "$(ctl dirty status d --json | jq -c 'map(.name) | sort')" = '["big","m"]' ] || die "maps after the errors"

stop_strata
echo PASS
