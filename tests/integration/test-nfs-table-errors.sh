#!/bin/bash
# nfs target table errors (unaligned offset, offset beyond the end, file too small, a directory, missing file, unknown export, permission denied, unreachable server, no server behind rpcbind, bad URLs, bad options): serve exits non-zero within its time, names file:line, the nfs target and the cause, and serves nothing; the file is unchanged.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"

# bad_table NAME TABLE-TEXT EXPECTED-SUBSTRING...: each substring may be
# A|B (either); @CONF@ stands for the table file.
bad_table() {
  local name=$1 text=$2 rc=0 out t0 t want alt ok
  shift 2
  local conf=$WORK/$name.conf
  printf '%b' "$text" >"$conf"
  rm -f "$SOCK" "$CTL"
  t0=$(now_ms)
  out=$(timeout 40 "$STRATA" serve --table "$conf" --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
  t=$(($(now_ms) - t0))
  [ $rc -ne 0 ] || die "$name: serve accepted a bad table: $out"
  [ $rc -ne 124 ] || die "$name: serve did not exit within 40 s (it is serving a bad table, or hangs): $out"
  [ $t -le "${MAX_MS:-15000}" ] || die "$name: serve took $t ms to reject the table: $out"
  # (the other fragments must not match the table file's own name)
  local rest=${out//$conf/@CONF@}
  for want in "$@"; do
    ok=0
    if [ "$want" = "@CONF@:1: nfs:" ]; then
      grep -qF -- "$conf:1: nfs:" <<<"$out" && ok=1
    fi
    IFS='|' read -ra alts <<<"$want"
    for alt in "${alts[@]}"; do
      [ "$want" != "@CONF@:1: nfs:" ] && grep -qiF -- "$alt" <<<"$rest" && ok=1
    done
    [ $ok = 1 ] || die "$name: error message lacks '$want': $out"
  done
  [ ! -e "$SOCK" ] || die "$name: the NBD socket was created"
  [ ! -e "$CTL" ] || die "$name: the control socket was created"
  [ "$(grep -c . <<<"$out")" -le 2 ] || die "$name: expected one error, got: $out"
  echo "ok: $name ($t ms): $out"
}

EXPORT=$WORK/srv
mkdir -p "$EXPORT/dir" "$EXPORT/private"
F=$EXPORT/f.img
bytes $((1 << 20)) 0x5e >"$F"
chmod 0600 "$F"
mkdir -p "$EXPORT/private/inner"
bytes 8192 0x5e >"$EXPORT/private/inner/p.img"
chmod 0700 "$EXPORT/private"
nfs_start_ganesha "$EXPORT"
URL=$(nfs_url "$F")
md5_before=$(md5sum <"$F")

# The good table works (so the failures below are about what they change).
echo "0 2048 nfs $URL 0" >"$WORK/good.conf"
start_strata --table "$WORK/good.conf" --export d
[ "$(nbdinfo --size "$(uri d)")" = 1048576 ] || die "the good table does not serve 1 MiB"
stop_strata

bad_table offset-unaligned "0 8 nfs $URL 512\n" \
  "@CONF@:1: nfs:" "offset" "512" "multiple of 4096"
bad_table offset-unaligned-2 "0 8 nfs $URL 6144\n" \
  "@CONF@:1: nfs:" "6144" "multiple of 4096"
bad_table offset-beyond-end "0 8 nfs $URL 2097152\n" \
  "@CONF@:1: nfs:" "2097152" "beyond the end" "1048576"
bad_table file-too-small "0 4096 nfs $URL 0\n" \
  "@CONF@:1: nfs:" "too small" "2097152" "1048576"
bad_table file-too-small-at-offset "0 2048 nfs $URL 4096\n" \
  "@CONF@:1: nfs:" "too small" "1048576"
bad_table directory "0 8 nfs $(nfs_url "$EXPORT/dir") 0\n" \
  "@CONF@:1: nfs:" "not a regular file"
bad_table missing-file "0 8 nfs $(nfs_url "$EXPORT/missing.img") 0\n" \
  "@CONF@:1: nfs:" "missing.img" "No such file|NOENT|not found|does not exist"
# (ganesha answers MNT3ERR_ACCES for an export it does not have; the
# message must still say that the export is the problem)
bad_table missing-export "0 8 nfs nfs://$NFS_HOST/no/such/dir/f.img 0\n" \
  "@CONF@:1: nfs:" "/no/such/dir" "export"
bad_table permission-denied "0 8 nfs $URL 0 uid=1000 gid=1000\n" \
  "@CONF@:1: nfs:" "f.img" "Permission denied|EACCES|ACCES"
bad_table permission-denied-dir "0 8 nfs $(nfs_url "$EXPORT/private/inner/p.img") 0 uid=1000 gid=1000\n" \
  "@CONF@:1: nfs:" "Permission denied|EACCES|ACCES"
bad_table bad-url-scheme "0 8 nfs http://x/y 0\n" \
  "@CONF@:1: nfs:" "http://x/y" "url|URL"
bad_table bad-url-no-path "0 8 nfs nfs://$NFS_HOST 0\n" \
  "@CONF@:1: nfs:" "nfs://$NFS_HOST" "url|URL|path"
bad_table bad-url-no-file "0 8 nfs nfs://$NFS_HOST/ 0\n" \
  "@CONF@:1: nfs:" "url|URL|path|file"
bad_table missing-offset "0 8 nfs $URL\n" \
  "@CONF@:1: nfs:" "offset"
bad_table unknown-option "0 8 nfs $URL 0 tmeout=3\n" \
  "@CONF@:1: nfs:" "tmeout"
bad_table bad-timeout "0 8 nfs $URL 0 timeout=soon\n" \
  "@CONF@:1: nfs:" "timeout" "soon"
bad_table bad-uid "0 8 nfs $URL 0 uid=-1\n" \
  "@CONF@:1: nfs:" "uid" "-1"
bad_table bad-version "0 8 nfs $URL 0 version=5\n" \
  "@CONF@:1: nfs:" "version=5" "must be 3 or 4"
bad_table zero-timeout "0 8 nfs $URL 0 timeout=0\n" \
  "@CONF@:1: nfs:" "timeout" "1..3600|at least 1|positive"

# Unreachable: an address with no route in this namespace (only lo).
bad_table unreachable "0 8 nfs nfs://10.255.255.1$F 0 timeout=3\n" \
  "@CONF@:1: nfs:" "10.255.255.1" "unreachable|connect"
[ "$(md5sum <"$F")" = "$md5_before" ] || die "a rejected table changed the file"

# No NFS server behind rpcbind (ganesha stopped), then no rpcbind either.
nfs_stop_ganesha
MAX_MS=15000 bad_table no-server "0 8 nfs $URL 0 timeout=3\n" \
  "@CONF@:1: nfs:" "$NFS_HOST" "unreachable|connect|not registered|not available|rpcbind|portmap"
_nfs_stop_pid "$RPCBIND_PID" TERM 10
RPCBIND_PID=
MAX_MS=15000 bad_table no-rpcbind "0 8 nfs $URL 0 timeout=3\n" \
  "@CONF@:1: nfs:" "$NFS_HOST" "unreachable|connect|refused|rpcbind|portmap"
[ "$(md5sum <"$F")" = "$md5_before" ] || die "a rejected table changed the file"
echo PASS
