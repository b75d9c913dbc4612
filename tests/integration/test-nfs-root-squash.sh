#!/bin/bash
# nfs target on a root-squashing export, image owned by uid 1000 mode 0600: strata (root) without uid= is refused at table load with a permission error naming the file; with uid=1000 gid=1000 writes (also FUA, 1 MiB+) land in the file, which stays owned by 1000 and mode 0600.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
source "$(dirname "$0")/nbd-lib.sh"
requires qemu-io

EXPORT=$WORK/export
mkdir -p "$EXPORT"
chmod 0755 "$EXPORT"
F=$EXPORT/user.img
SZ=$((4 << 20))
bytes $SZ 0x5e >"$F"
chown 1000:1000 "$F"
chmod 0600 "$F"
md5_before=$(md5sum <"$F")
nfs_start_ganesha "$EXPORT" squash
URL=$(nfs_url "$F")

# ---- 1. root, squashed to 65534: the file is not accessible.
for opts in "" "uid=0 gid=0" "uid=1001 gid=1000"; do
  echo "0 $((SZ / 512)) nfs $URL 0 $opts" >"$WORK/root.conf"
  rm -f "$SOCK" "$CTL"
  rc=0
  out=$(timeout 40 "$STRATA" serve --table "$WORK/root.conf" --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
  [ $rc -ne 0 ] || die "[$opts] serve accepted a file it may not access: $out"
  [ $rc -ne 124 ] || die "[$opts] serve is serving (or hangs) a file it may not access: $out"
  grep -qF "$WORK/root.conf:1: nfs:" <<<"$out" || die "[$opts] the error does not name the table line: $out"
  grep -qE "Permission denied|EACCES|ACCES" <<<"$out" || die "[$opts] the error is not a permission error: $out"
  grep -qF "user.img" <<<"$out" || die "[$opts] the error does not name the file: $out"
  [ ! -e "$SOCK" ] || die "[$opts] the NBD socket was created"
  echo "ok: [${opts:-no uid}] refused: $out"
done
[ "$(md5sum <"$F")" = "$md5_before" ] || die "the refused tables changed the file"

# ---- 2. uid=1000 gid=1000: the owner's credentials work.
echo "0 $((SZ / 512)) nfs $URL 0 uid=1000 gid=1000" >"$WORK/user.conf"
start_strata --table "$WORK/user.conf" --export d
U=$(uri d)
qio "$U" "read -P 0x5e 0 64k" "write -P 0x21 4096 8192" "write -P 0x22 1M 1536k" "write -P 0x23 $((SZ - 512)) 512" "flush"
py <<PYEOF || die "FUA write as uid 1000 failed"
import nbd
h = nbd.NBD(); h.connect_uri("$U")
h.pwrite(b"\x24" * 4096, 65536, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 4096) == b"\x21" * 8192
h.shutdown()
PYEOF
expect_bytes "$F" 0 4096 0x5e
expect_bytes "$F" 4096 8192 0x21
expect_bytes "$F" 12288 $((65536 - 12288)) 0x5e
expect_bytes "$F" 65536 4096 0x24
expect_bytes "$F" $((1 << 20)) $((1536 << 10)) 0x22
expect_bytes "$F" $((SZ - 512)) 512 0x23
[ "$(stat -c '%u:%g %a' "$F")" = "1000:1000 600" ] || die "the file's owner or mode changed: $(stat -c '%u:%g %a' "$F")"
finish
