#!/bin/bash
# Control clients can only name files under the operator's --allow-path directories: sync and flatten targets and FUSE mountpoints outside them are refused with a clear error and nothing is created; inside them the same requests work; NBD URIs are not paths.
source "$(dirname "$0")/functions.sh"
requires jq
truncate -s 8M "$WORK/disk.img"
OUT=$(mktemp -d /tmp/strata-outside.XXXXXX)

start_strata --file "$WORK/disk.img" --export d
ctl dirty start d m >/dev/null
# Outside $WORK (start_strata allows only $WORK): refused, nothing written.
for args in "sync d --map m --to $OUT/replica.img" "flatten d --to $OUT/flat.img" "fuse start $OUT" \
            "sync d --map m --to $WORK/../$(basename "$OUT")/r.img"; do
  if out=$(ctl $args 2>&1); then die "'$args' was accepted outside --allow-path: $out"; fi
  grep -q "outside the directories this server lets clients name" <<<"$out" || die "'$args': unclear error: $out"
done
[ -z "$(ls -A "$OUT")" ] || die "files were created outside --allow-path: $(ls "$OUT")"
grep -q "$OUT" /proc/mounts && die "a FUSE mount was made outside --allow-path"
# A symlink inside $WORK that points outside does not get around it.
ln -s "$OUT" "$WORK/link"
if out=$(ctl flatten d --to "$WORK/link/x.img" 2>&1); then die "symlink escape accepted: $out"; fi
[ ! -e "$OUT/x.img" ] || die "symlink escape wrote $OUT/x.img"
# Inside: works.
ctl sync d --map m --to "$WORK/replica.img" >/dev/null || die "sync inside --allow-path failed"
ctl flatten d --to "$WORK/flat.img" >/dev/null || die "flatten inside --allow-path failed"
cmp "$WORK/flat.img" "$WORK/disk.img" || die "flatten produced a different image"
stop_strata
rm -rf "$OUT"
echo PASS
