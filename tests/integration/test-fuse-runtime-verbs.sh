#!/bin/bash
# FUSE runtime verbs: `fuse start MNT` on a running server mounts it and the device file appears ("default" for the unnamed device) and serves I/O; `fuse list` shows every export (and server_status's servers, with the NBD server); `fuse stop MNT` unmounts just that one; stop of an unknown mountpoint, start on a missing directory or a live export fail with clear errors; SIGTERM unmounts the rest.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires jq realpath

IMG=$WORK/disk.img
truncate -s $((4 << 20)) "$IMG"
start_strata --file "$IMG"
MNT2=$WORK/mnt2
mkdir -p "$MNT2"
RM=$(realpath "$MNT") RM2=$(realpath "$MNT2")

# Nothing exported yet.
[ -z "$(ctl fuse list)" ] || die "fuse list before any start: $(ctl fuse list)"
[ "$(fuse_mounts "$MNT")" = 0 ] || die "$MNT is mounted before fuse start"
[ -z "$(ls -A "$MNT")" ] || die "$MNT is not empty before fuse start"

out=$(ctl fuse start "$MNT") || die "fuse start $MNT failed: $out"
[ "$out" = "$RM" ] || die "fuse start printed '$out', want '$RM'"
[ "$(fuse_mounts "$MNT")" = 1 ] || die "$MNT is not a fuse.strata mount after fuse start"
[ "$(ls "$MNT")" = default ] || die "the mount shows '$(ls "$MNT")', want 'default'"
[ "$(stat -c %s "$MNT/default")" = $((4 << 20)) ] || die "$MNT/default is $(stat -c %s "$MNT/default") bytes"
[ "$(ctl fuse list)" = "$RM" ] || die "fuse list: '$(ctl fuse list)', want '$RM'"
[ "$(ctl fuse list --json | jq -c '[.[].mountpoint]')" = "[\"$RM\"]" ] || die "fuse list --json: $(ctl fuse list --json)"
# This kernel has FUSE over io_uring: the export uses it, and the data
# requests below travel through ring entries, not /dev/fuse.
[ "$(ctl fuse list --json | jq -r '.[0].transport')" = io_uring ] || die "transport: $(ctl fuse list --json)"
before=$(ctl fuse list --json | jq '.[0].uring_requests')
fill "$MNT/default" 8192 4096 0x61
expect_bytes "$IMG" 8192 4096 0x61
expect_bytes "$MNT/default" 8192 4096 0x61
after=$(ctl fuse list --json | jq '.[0].uring_requests')
[ "$after" -ge $((before + 2)) ] || die "uring_requests went from $before to $after over a write and a read"

# A second export of the same devices, through a path with .. in it.
out=$(ctl fuse start "$WORK/mnt/../mnt2") || die "fuse start mnt2 failed: $out"
[ "$out" = "$RM2" ] || die "fuse start printed '$out', want '$RM2'"
[ "$(ctl fuse list | sort)" = "$(printf '%s\n%s\n' "$RM" "$RM2" | sort)" ] || die "fuse list with two: $(ctl fuse list)"
expect_bytes "$MNT2/default" 8192 4096 0x61
fill "$MNT2/default" 12288 4096 0x62
expect_bytes "$MNT/default" 12288 4096 0x62

# server_status lists every export (the NBD server, then each mount) with
# where clients reach it.
servers=$($PYTHON - "$CTL" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"method": "server_status"}\n')
buf = b""
while not buf.endswith(b"\n"):
    buf += s.recv(65536)
r = json.loads(buf)
print(json.dumps(r["result"]["servers"], separators=(",", ":")))
PY
)
want=$(jq -ncS --arg s "$SOCK" --arg a "$RM" --arg b "$RM2" \
  '[{kind:"nbd",at:["nbd+unix:///?socket="+$s]}] + ([{kind:"fuse",at:[$a]},{kind:"fuse",at:[$b]}] | sort_by(.at[0]))')
got=$(echo "$servers" | jq -cS '.[:1] + (.[1:] | sort_by(.at[0]))')
[ "$got" = "$want" ] || die "server_status servers: $servers, want $want"

# Errors: non-zero exit, a clear message naming the path, nothing changes.
expect_err() {  # expect_err PATTERN ARGS...
  local want=$1 out rc=0
  shift
  out=$(ctl "$@" 2>"$WORK/err") || rc=$?
  [ $rc -ne 0 ] || die "strata $* succeeded: $out"
  grep -qE "$want" "$WORK/err" || die "strata $*: expected /$want/, got: $(cat "$WORK/err")"
}
expect_err "^strata: no FUSE export at '$WORK/nosuch'\$" fuse stop "$WORK/nosuch"
mkdir -p "$WORK/plain"
expect_err "^strata: no FUSE export at '$(realpath "$WORK/plain")'\$" fuse stop "$WORK/plain"
expect_err "$WORK/missing.*(No such file|not found)" fuse start "$WORK/missing"
touch "$WORK/afile"
expect_err "$WORK/afile.*not a directory" fuse start "$WORK/afile"
expect_err "$RM.*(live FUSE|already exported)" fuse start "$MNT"
[ "$(ctl fuse list | wc -l)" = 2 ] || die "the failed verbs changed the export list: $(ctl fuse list)"
[ "$(fuse_mounts "$MNT")" = 1 ] && [ "$(fuse_mounts "$MNT2")" = 1 ] || die "the failed verbs changed the mounts"

# stop unmounts just that one.
ctl fuse stop "$MNT" || die "fuse stop $MNT failed"
[ "$(fuse_mounts "$MNT")" = 0 ] || die "$MNT is still mounted after fuse stop"
[ -z "$(ls -A "$MNT")" ] || die "$MNT still shows files after fuse stop: $(ls -A "$MNT")"
[ "$(ctl fuse list)" = "$RM2" ] || die "fuse list after stop: '$(ctl fuse list)', want '$RM2'"
expect_bytes "$MNT2/default" 8192 4096 0x61
expect_err "^strata: no FUSE export at '$RM'\$" fuse stop "$MNT"
# ...and it can be started again.
[ "$(ctl fuse start "$MNT")" = "$RM" ] || die "fuse start $MNT again failed"
expect_bytes "$MNT/default" 12288 4096 0x62
ctl fuse stop "$MNT" || die "second fuse stop $MNT failed"
[ "$(fuse_mounts "$MNT")" = 0 ] || die "$MNT is still mounted after the second fuse stop"

# SIGTERM unmounts what is left.
stop_strata
[ "$(fuse_mounts "$MNT2")" = 0 ] || die "$MNT2 is still mounted after SIGTERM"
echo PASS
