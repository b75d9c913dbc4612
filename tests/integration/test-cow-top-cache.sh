#!/bin/bash
# cow: the writable top's page cache is dropped when it is opened (at start, after a snapshot, and when a merge makes the parent the write layer), so large folios left over its holes by a reader (cat, a backup) cannot slow fresh-chunk writes (measured 6-10x); read-only layers keep their cache; data reads back intact.
. "$(dirname "$0")/functions.sh"
requires fincore qemu-io jq

M=1048576
SIZE=$((64 * M))
B=$WORK/base.img
truncate -s $SIZE "$B"
fill "$B" 0 $SIZE 0x11
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"
cached() { fincore -b -n -o RES "$1" | tr -d ' '; }  # bytes of FILE in the page cache

"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
start_strata --table "$WORK/t.conf"
qio "$(uri d)" "write -P 0x22 0 $((8 * M))"
ctl snapshot d >/dev/null   # top.layer.snap1 holds 8 MiB; top.layer is new
stop_strata

# A reader pulls both whole sparse files into the page cache.
cat "$WORK/top.layer" "$WORK/top.layer.snap1" >/dev/null
[ "$(cached "$WORK/top.layer")" -ge $((SIZE / 2)) ] || die "cat did not cache top.layer: $(cached "$WORK/top.layer")"
snap_before=$(cached "$WORK/top.layer.snap1")
[ "$snap_before" -ge $((SIZE / 2)) ] || die "cat did not cache the snapshot: $snap_before"

start_strata --table "$WORK/t.conf"
top=$(cached "$WORK/top.layer")
# The header and bitmap region (1 MiB here, read at open) may stay; the
# data region is gone.
[ "$top" -le $((2 * M)) ] || die "the writable top still has $top bytes cached after open"
[ "$(cached "$WORK/top.layer.snap1")" -ge $((SIZE / 2)) ] || die "the read-only layer lost its cache"

# Fresh writes, then a merge of the top into the snapshot: the snapshot
# becomes the write layer and its cache is dropped too.
qio "$(uri d)" "write -P 0x33 $((16 * M)) $((4 * M))"
cat "$WORK/top.layer.snap1" >/dev/null
ctl merge d >/dev/null 2>&1 || die "merge failed"
# The merged layer now has the top's path; what it holds in the cache is its
# header region and the 4 MiB the merge copied down, not the 64 MiB cat read.
[ ! -e "$WORK/top.layer.snap1" ] || die "top.layer.snap1 is still there after the merge"
merged=$(cached "$WORK/top.layer")
[ "$merged" -le $((8 * M)) ] || die "the merged-into layer kept $merged bytes cached"
qio "$(uri d)" "read -P 0x22 0 $((8 * M))" "read -P 0x11 $((8 * M)) $((8 * M))" "read -P 0x33 $((16 * M)) $((4 * M))" \
  "read -P 0x11 $((20 * M)) $((44 * M))"
stop_strata
echo PASS
