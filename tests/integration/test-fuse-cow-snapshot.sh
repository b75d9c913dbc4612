#!/bin/bash
# ext4 on a cow stack through FUSE + loop: snapshot while the filesystem is mounted and being written (after fsfreeze), then the snapshot layer alone, served read-only, mounts read-only, fsck is clean, and its files are exactly those at the snapshot.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fuse-lib.sh"
requires losetup mkfs.ext4 fsck.ext4 fsfreeze sha256sum
S="$STRATA"
truncate -s 256M "$WORK/base.img"
"$S" layer create "$WORK/top.layer" --size 256M >/dev/null
cat >"$WORK/t.conf" <<EOT
[base]
0 524288 file $WORK/base.img 0 ro
[vm]
0 524288 cow $WORK/top.layer base=base
EOT
mkdir -p "$WORK/fmnt" "$WORK/fs" "$WORK/fmnt2" "$WORK/fs2"
start_strata --table "$WORK/t.conf" --fuse "$WORK/fmnt"
LOOP=$(losetup --direct-io=on -f --show "$WORK/fmnt/vm")
mkfs.ext4 -q "$LOOP"
mount "$LOOP" "$WORK/fs"
cp -r "$STRATA_SRC/src" "$WORK/fs/src"
head -c 16M /dev/urandom >"$WORK/fs/big"
(cd "$WORK/fs" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/at-snapshot.sha"
# Keep writing while the snapshot is taken; freeze only around it.
(for i in $(seq 1 200); do head -c 64K /dev/urandom >"$WORK/fs/after.$i" 2>/dev/null || break; done) &
W=$!
sleep 0.2
fsfreeze -f "$WORK/fs"
snap=$(ctl snapshot vm --json | jq -r '.[0].snapshot')
fsfreeze -u "$WORK/fs"
wait $W
[ -f "$snap" ] || die "no snapshot layer: $snap"
echo "more" >"$WORK/fs/after-snapshot"
sync
# The live device still works and still has everything.
[ -s "$WORK/fs/after-snapshot" ] || die "write after the snapshot lost"
(cd "$WORK/fs" && sha256sum -c --quiet "$WORK/at-snapshot.sha") || die "live files changed by the snapshot"
# The snapshot alone: a second server, read-only, through its own FUSE mount.
cat >"$WORK/s.conf" <<EOT
[base]
0 524288 file $WORK/base.img 0 ro
[snap]
0 524288 cow $snap base=base ro
EOT
"$S" serve --table "$WORK/s.conf" --unix "$WORK/s2.sock" --control "$WORK/c2.sock" --fuse "$WORK/fmnt2" \
  >>"$STRATA_LOG" 2>&1 &
P2=$!
for _ in $(seq 100); do [ -e "$WORK/fmnt2/snap" ] && break; sleep 0.05; done
[ -e "$WORK/fmnt2/snap" ] || die "snapshot server did not start"
[ "$(stat -c %a "$WORK/fmnt2/snap")" = 400 ] || die "the snapshot file is not read-only"
LOOP2=$(losetup -r --direct-io=on -f --show "$WORK/fmnt2/snap")
fsck.ext4 -fn "$LOOP2" >"$WORK/fsck.log" 2>&1 || { cat "$WORK/fsck.log"; die "fsck of the snapshot is not clean"; }
mount -o ro,noload "$LOOP2" "$WORK/fs2"
(cd "$WORK/fs2" && sha256sum -c --quiet "$WORK/at-snapshot.sha") || die "snapshot files differ from the snapshot time"
[ ! -e "$WORK/fs2/after-snapshot" ] || die "the snapshot holds a file written after it"
umount "$WORK/fs2"
losetup -d "$LOOP2"
kill "$P2"; wait "$P2" || true
umount "$WORK/fs"
losetup -d "$LOOP"
fsck.ext4 -fn "$WORK/fmnt/vm" >/dev/null 2>&1 || die "fsck of the live stack is not clean"
stop_strata
echo PASS
