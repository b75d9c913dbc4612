#!/bin/bash
# strata status lists a cow device's layers, bottom to top, in text and --json: path, UUID (as `strata layer info`
# reads it), which one is writable (the top), the chunks the device reads from each and the space each file takes.
# A stack of 3: 3 layers in order; after a snapshot, 4 (the snapshot under the new top, holding the chunks the top
# held); after a merge, 3 again.
source "$(dirname "$0")/functions.sh"
requires jq qemu-io
M=1048576
SIZE=$((4 * M))
truncate -s $SIZE "$WORK/base.img"
"$STRATA" layer create "$WORK/l1.layer" --size $SIZE >/dev/null
"$STRATA" layer create "$WORK/l2.layer" --parent "$WORK/l1.layer" >/dev/null
"$STRATA" layer create "$WORK/top.layer" --parent "$WORK/l2.layer" >/dev/null
uuid() { "$STRATA" layer info "$1" --json | jq -r .uuid; }
U1=$(uuid "$WORK/l1.layer") U2=$(uuid "$WORK/l2.layer") U3=$(uuid "$WORK/top.layer")
cow_table "$WORK/t.conf" $SIZE "$WORK/base.img" "$WORK/top.layer"
start_strata --table "$WORK/t.conf"

layers() { ctl status d --json | jq -c '.[0].segments[0].layers'; }
# Two 4 KiB chunks written into the top.
qio "$(uri d)" "write -P 0x5a 0 8192"

L=$(layers)
[ "$(jq length <<<"$L")" = 3 ] || die "3 layers expected: $L"
[ "$(jq -c '[.[].path]' <<<"$L")" = "[\"$WORK/l1.layer\",\"$WORK/l2.layer\",\"$WORK/top.layer\"]" ] ||
  die "paths, bottom to top: $L"
[ "$(jq -c '[.[].uuid]' <<<"$L")" = "[\"$U1\",\"$U2\",\"$U3\"]" ] || die "uuids: $L"
[ "$(jq -c '[.[].writable]' <<<"$L")" = '[false,false,true]' ] || die "writable: $L"
[ "$(jq -c '[.[].chunks]' <<<"$L")" = '[0,0,2]' ] || die "chunks: $L"
jq -e '.[2].allocated_bytes >= 8192 and .[2].file_bytes > 8192 and .[0].file_bytes > 0' <<<"$L" >/dev/null ||
  die "sizes: $L"

# The text form: a header, then one line per layer in the same order, the top marked writable.
txt=$(ctl status d)
echo "$txt"
grep -q "layers (bottom to top):" <<<"$txt" || die "status text has no layer list: $txt"
got=$(grep -E "^ +[0-9]+ $WORK/" <<<"$txt")
[ "$(wc -l <<<"$got")" = 3 ] || die "3 layer lines expected: $got"
sed -n 1p <<<"$got" | grep -qE "^ +0 $WORK/l1.layer $U1 0 chunks, .* on disk$" || die "line 0: $got"
sed -n 2p <<<"$got" | grep -qE "^ +1 $WORK/l2.layer $U2 0 chunks, .* on disk$" || die "line 1: $got"
sed -n 3p <<<"$got" | grep -qE "^ +2 $WORK/top.layer $U3 2 chunks, .* on disk, writable$" || die "line 2: $got"

# A snapshot: 4 layers, the snapshot (the old top, renamed) under a new empty top at the same path.
snap=$(ctl snapshot d --json | jq -r '.[0].snapshot')
L=$(layers)
[ "$(jq length <<<"$L")" = 4 ] || die "4 layers expected after the snapshot: $L"
[ "$(jq -c '[.[].path]' <<<"$L")" = "[\"$WORK/l1.layer\",\"$WORK/l2.layer\",\"$snap\",\"$WORK/top.layer\"]" ] ||
  die "paths after the snapshot: $L"
[ "$(jq -r '.[2].uuid' <<<"$L")" = "$U3" ] || die "the snapshot keeps the old top's uuid: $L"
[ "$(jq -r '.[3].uuid' <<<"$L")" != "$U3" ] || die "the new top has a uuid of its own: $L"
[ "$(jq -r '.[3].uuid' <<<"$L")" = "$(uuid "$WORK/top.layer")" ] || die "new top's uuid: $L"
[ "$(jq -c '[.[].writable]' <<<"$L")" = '[false,false,false,true]' ] || die "writable after the snapshot: $L"
[ "$(jq -c '[.[].chunks]' <<<"$L")" = '[0,0,2,0]' ] || die "chunks after the snapshot: $L"
[ "$(ctl status d | grep -cE "^ +[0-9]+ $WORK/")" = 4 ] || die "text: $(ctl status d)"

# One more chunk in the new top, then merge the top into the snapshot: 3 layers, the merged one holding all 3.
qio "$(uri d)" "write -P 0x6b 16384 4096"
[ "$(layers | jq -c '[.[].chunks]')" = '[0,0,2,1]' ] || die "chunks before the merge: $(layers)"
merged=$(ctl merge d --json | jq -c .layers)
L=$(layers)
[ "$(jq length <<<"$L")" = 3 ] || die "3 layers expected after the merge: $L"
[ "$(jq -c '[.[].path]' <<<"$L")" = "$merged" ] || die "status and merge disagree: $L vs $merged"
[ "$(jq -r '.[0].path, .[1].path' <<<"$L" | tr '\n' ' ')" = "$WORK/l1.layer $WORK/l2.layer " ] ||
  die "lower layers after the merge: $L"
[ "$(jq -c '[.[].writable]' <<<"$L")" = '[false,false,true]' ] || die "writable after the merge: $L"
[ "$(jq -c '[.[].chunks]' <<<"$L")" = '[0,0,3]' ] || die "chunks after the merge: $L"
[ "$(ctl status d | grep -cE "^ +[0-9]+ $WORK/")" = 3 ] || die "text after the merge: $(ctl status d)"
stop_strata
echo PASS
