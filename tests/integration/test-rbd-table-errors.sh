#!/bin/bash
# rbd target table errors on a real one-node Ceph cluster: no such pool, no such image, no such snapshot, a snapshot opened writable, an image smaller than the segment, permission denied (a client whose caps name another pool), a wrong key, an unreachable monitor (fails within timeout=3, not the default 300 s; also when only CEPH_ARGS names it), a bad POOL/IMAGE spec and a bad option: serve exits non-zero within its time, names file:line, the rbd target and the cause, and serves nothing. A snapshot with `ro` serves the snapshot's data and refuses writes.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/ceph-lib.sh"
requires qemu-io timeout

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# bad_table NAME TABLE-TEXT EXPECTED-SUBSTRING...
bad_table() {
  local name=$1 text=$2 rc=0 out t0 t want
  shift 2
  local conf=$WORK/$name.conf
  printf '%s\n' "$text" >"$conf"
  rm -f "$SOCK" "$CTL"
  t0=$(now_ms)
  out=$(timeout 60 "$STRATA" serve --table "$conf" --unix "$SOCK" --control "$CTL" 2>&1) || rc=$?
  t=$(($(now_ms) - t0))
  [ $rc -ne 0 ] || die "$name: serve accepted a bad table: $out"
  [ $rc -ne 124 ] || die "$name: serve did not exit within 60 s: $out"
  [ $t -le "${MAX_MS:-15000}" ] || die "$name: serve took $t ms to reject the table: $out"
  grep -qF -- "$conf:1: rbd:" <<<"$out" || die "$name: the message does not name $conf:1 and rbd: $out"
  for want in "$@"; do
    grep -qiF -- "$want" <<<"${out//$conf/}" || die "$name: error message lacks '$want': $out"
  done
  [ ! -e "$SOCK" ] || die "$name: the NBD socket was created"
  [ "$(grep -c 'error' <<<"$out")" -le 1 ] || die "$name: expected one error, got: $out"
  echo "ok: $name ($t ms): $out"
}

ceph_start
S=$((16 << 20)) SECT=$((16 << 11))
rbd_create img 16M
# A snapshot holding 0x5a, then the image changes to 0xa5.
rbd_table "$WORK/w.conf" rbd/img $S
start_strata --table "$WORK/w.conf" --export d
qio "$(uri d)" "write -P 0x5a 0 16M" flush
stop_strata
timeout 60 rbd snap create rbd/img@s1 >/dev/null 2>&1 || die "rbd snap create failed"
start_strata --table "$WORK/w.conf" --export d
qio "$(uri d)" "write -P 0xa5 0 1M" flush
stop_strata

C="conf=$CEPH_CONF"
bad_table no-pool "0 $SECT rbd nopool/img $C" "no such pool 'nopool'"
bad_table no-image "0 $SECT rbd rbd/missing $C" "no such image 'missing' in pool 'rbd'"
bad_table no-snap "0 $SECT rbd rbd/img@nosnap $C ro" "has no snapshot 'nosnap'"
bad_table snap-writable "0 $SECT rbd rbd/img@s1 $C" "snapshot is read-only" "add \`ro\`"
bad_table too-small "0 $((SECT * 2)) rbd rbd/img $C" "image too small" "needs $((2 * S)) bytes" "has $S"
bad_table bad-spec "0 $SECT rbd img $C" "must be POOL/IMAGE"
bad_table bad-timeout "0 $SECT rbd rbd/img $C timeout=soon" "timeout=soon"
bad_table bad-option "0 $SECT rbd rbd/img $C pool=rbd" "pool"
bad_table no-conf "0 $SECT rbd rbd/img conf=$WORK/nothere.conf" "nothere.conf" "No such file"

# Permission denied: a client whose OSD caps name another pool.
timeout 60 ceph auth get-or-create client.other mon 'allow r' osd 'allow rwx pool=other' \
  -o "$CEPH_DIR/other.keyring" >/dev/null 2>&1 || die "ceph auth get-or-create failed"
bad_table no-perm "0 $SECT rbd rbd/img $C id=other keyring=$CEPH_DIR/other.keyring timeout=10" \
  "permission denied" "client.other"
# A wrong key for a known client.
sed 's/key = .*/key = AQBvTjBnAAAAABAAb2ZZZZZZZZZZZZZZZZZZZZ==/' "$CEPH_DIR/other.keyring" >"$CEPH_DIR/wrong.keyring"
grep -q 'key = AQBvTjBn' "$CEPH_DIR/wrong.keyring" || die "could not make a wrong keyring"
bad_table wrong-key "0 $SECT rbd rbd/img $C id=other keyring=$CEPH_DIR/wrong.keyring timeout=10" \
  "authentication as client.other failed"

# An unreachable monitor: a conf naming a port nobody listens on; within timeout=3.
port=$(_ceph_free_port)
sed "s/^mon_host = .*/mon_host = 127.0.0.1:$port/" "$CEPH_CONF" >"$WORK/dead.conf"
MAX_MS=8000 bad_table unreachable "0 $SECT rbd rbd/img conf=$WORK/dead.conf timeout=3" \
  "cluster unreachable" "127.0.0.1:$port" "within 3 s"
# CEPH_ARGS overrides the conf, as for the rbd and ceph tools: the good conf, a dead monitor in CEPH_ARGS.
CEPH_ARGS="--mon_host 127.0.0.1:$port" MAX_MS=8000 bad_table ceph-args "0 $SECT rbd rbd/img $C timeout=3" \
  "cluster unreachable" "127.0.0.1:$port" "within 3 s"

# The snapshot, read-only: its own data, and writes refused.
rbd_table "$WORK/s.conf" rbd/img@s1 $S ro
start_strata --table "$WORK/s.conf" --export s
qio -r "$(uri s)" "read -P 0x5a 0 16M"
out=$(qio_fails "$(uri s)" "write -P 1 0 4096")
grep -qiE 'read-only|permission|not permitted' <<<"$out" || die "a write to the snapshot failed oddly: $out"
stop_strata
echo PASS
