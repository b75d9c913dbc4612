#!/bin/bash
# Shared read-only cow layers on an NFS server (ganesha), read by two hosts (two strata processes) through nfs://
# parent links, each with its own local top; the lease that keeps writers out (docs/cluster.md):
# - a host's stack reads the golden bytes from the shared layer over NFS, its own writes from its local top;
#   `layer create --parent nfs://...` links by URL; status names the shared layer by its URL;
# - each reading host holds a lease file beside the layer; the publisher's merge into the shared layer (on the
#   server, where the files are local) is refused naming both hosts, and the layer's bytes stay as they were;
# - a writer's live claim keeps a new host from opening the layer; a stale claim (a writer that died) does not;
# - a host whose lease lapses (the server stops answering for longer than the lease) fails reads of the shared
#   layer (EIO) while reads of its own top go on, and reads again once the lease is back and the layer unchanged;
# - a host stopped cleanly removes its lease; one killed -9 holds the layer until its lease expires, then the
#   merge goes through.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
requires qemu-io nbdcopy jq sha256sum cmp

M=1048576
SIZE=$((16 * M))
EXPORT=$WORK/export
mkdir -p "$EXPORT"
nfs_start_ganesha "$EXPORT"

HOST_PIDS=()
trap 'st=$?; set +e; for p in "${HOST_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; (exit $st); nfs_cleanup' EXIT

# The publisher, on the storage server: a stack on the exported files, filled, then snapshotted: the snapshot is
# the shared golden layer; the publisher keeps a top over it.
head -c $SIZE /dev/urandom >"$WORK/golden.bin"
"$STRATA" layer create "$EXPORT/golden.layer" --size $SIZE >/dev/null
printf '[pub]\n0 %d cow %s\n' $((SIZE / 512)) "$EXPORT/golden.layer" >"$WORK/pub.conf"
start_strata --table "$WORK/pub.conf"
nbdcopy "$WORK/golden.bin" "$(uri pub)"
ctl snapshot pub >/dev/null
SNAP=$EXPORT/golden.layer.snap1
[ -f "$SNAP" ] || die "no snapshot layer $SNAP: $(ls "$EXPORT")"
qio "$(uri pub)" "write -P 0x77 0 65536" "flush"
SUM=$(sha256sum <"$SNAP")
URL=$(nfs_url "$SNAP")

host_start() { # NAME: strata serving $WORK/NAME.conf on $WORK/NAME.sock
  local n=$1 i
  "$STRATA" serve --table "$WORK/$n.conf" --unix "$WORK/$n.sock" --control "$WORK/$n.ctl" \
    --state-dir "$WORK/$n-state" >>"$WORK/$n.log" 2>&1 &
  HOST_PIDS+=($!)
  eval "PID_$n=$!"
  for i in $(seq 1 200); do
    "$STRATA" list --control "$WORK/$n.ctl" >/dev/null 2>&1 && return 0
    running "$!" || die "host $n: strata exited during start-up: $(cat "$WORK/$n.log")"
    sleep 0.05
  done
  die "host $n: strata did not start within 10 s"
}
host_uri() { echo "nbd+unix:///vm?socket=$WORK/$1.sock"; }
leases() { find "$EXPORT" -maxdepth 1 -name 'golden.layer.snap1.lease-*' | wc -l; }

for h in a b c; do
  "$STRATA" layer create "$WORK/$h.layer" --parent "$URL" >/dev/null
  printf '[vm]\n0 %d cow %s lease=3\n' $((SIZE / 512)) "$WORK/$h.layer" >"$WORK/$h.conf"
done
pp=$("$STRATA" layer info "$WORK/a.layer" --json | jq -r .parent_path)
[ "$pp" = "$URL" ] || die "layer create --parent $URL linked '$pp'"
host_start a
host_start b

# Each host reads the golden bytes from the shared layer, over NFS.
for h in a b; do
  nbdcopy "$(host_uri $h)" "$WORK/$h.read"
  cmp "$WORK/golden.bin" "$WORK/$h.read" || die "host $h does not read the golden image through $URL"
done
qio "$(host_uri a)" "write -P 0x11 $M 65536" "flush"
qio -r "$(host_uri a)" "read -P 0x11 $M 65536"
cmp <(head -c $M "$WORK/golden.bin") <(qemu-io -f raw -r "$(host_uri b)" -c "read -v 0 $M" >/dev/null 2>&1; nbdcopy "$(host_uri b)" - | head -c $M) ||
  die "host b does not read the golden bytes"
l0=$("$STRATA" status vm --control "$WORK/a.ctl" --json | jq -r '.[0].segments[0].layers[0].path')
[ "$l0" = "$URL" ] || die "host a's status names its bottom layer '$l0', not $URL"
[ "$(leases)" = 2 ] || die "expected 2 lease files beside the shared layer, found $(leases): $(ls "$EXPORT")"

# The publisher's merge into the shared layer is refused while the hosts read it.
out=$(ctl merge pub 2>&1) && die "merge into the shared layer was not refused: $out"
echo "$out" | grep -q "is shared: 2 host(s) read it" || die "merge refused with the wrong reason: $out"
[ "$(sha256sum <"$SNAP")" = "$SUM" ] || die "the refused merge changed the shared layer"
[ ! -e "$SNAP.writer" ] || die "the refused merge left its claim $SNAP.writer"
qio -r "$(uri pub)" "read -P 0x77 0 65536"
cmp <(tail -c $((SIZE - M)) "$WORK/golden.bin") <(nbdcopy "$(uri pub)" - | tail -c $((SIZE - M))) ||
  die "the publisher's device changed after the refused merge"

# A writer's live claim keeps a new host out; a stale one (its writer died a minute ago) does not.
printf 'writer host=publisher pid=4242 renewed=%d\n' "$(date +%s)" >"$SNAP.writer"
if timeout 30 "$STRATA" serve --table "$WORK/c.conf" --unix "$WORK/c.sock" --control "$WORK/c.ctl" \
  --state-dir "$WORK/c-state" >"$WORK/c-refused.log" 2>&1; then
  die "host c served a shared layer that is being written"
fi
grep -q "is being written (writer host=publisher pid=4242" "$WORK/c-refused.log" ||
  die "host c refused for the wrong reason: $(cat "$WORK/c-refused.log")"
[ "$(leases)" = 2 ] || die "the refused host left its lease behind ($(leases) lease files)"
printf 'writer host=publisher pid=4242 renewed=%d\n' $(($(date +%s) - 60)) >"$SNAP.writer"
host_start c
grep -q "ignoring a stale writer's claim" "$WORK/c.log" || die "host c did not report the stale claim"
kill "$PID_c" && wait "$PID_c" || die "host c did not stop cleanly"
rm -f "$SNAP.writer"

# Host a's lease lapses while the server does not answer: reads of the shared layer fail, its own top reads on.
kill -STOP "$GANESHA_PID"
sleep 4.5
qio_fails -r "$(host_uri a)" "read 0 4096"
qio -r "$(host_uri a)" "read -P 0x11 $M 65536"
grep -q "lease not renewed" "$WORK/a.log" || die "host a did not log its lapsed lease"
kill -CONT "$GANESHA_PID"
ok=
for i in $(seq 1 100); do
  if qemu-io -f raw -r "$(host_uri a)" -c "read 0 4096" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || die "host a did not read the shared layer again within 20 s of the server's return"
cmp <(head -c $M "$WORK/golden.bin") <(nbdcopy "$(host_uri a)" - | head -c $M) ||
  die "host a reads other bytes after its lease came back"

# Host b stops cleanly (its lease goes); host a is killed (its lease stays until it expires).
kill "$PID_b" && wait "$PID_b" || die "host b did not stop cleanly"
[ "$(leases)" = 1 ] || die "host b's clean stop left $(leases) lease files, expected 1"
kill -9 "$PID_a"
wait "$PID_a" 2>/dev/null || true
out=$(ctl merge pub 2>&1) && die "merge went through while host a's lease was live: $out"
echo "$out" | grep -q "is shared: 1 host(s)" || die "merge refused with the wrong reason: $out"
sleep 3.5
ctl merge pub >/dev/null || die "merge still refused after host a's lease expired"
# The merged layer took the top's name (the table names the top): the old shared layer is gone.
[ ! -e "$SNAP" ] || die "the merge left $SNAP"
qio -r "$(uri pub)" "read -P 0x77 0 65536"
cmp <(tail -c $((SIZE - M)) "$WORK/golden.bin") <(nbdcopy "$(uri pub)" - | tail -c $((SIZE - M))) ||
  die "the publisher's device changed in the merge"
[ -z "$(find "$EXPORT" -name '*.writer')" ] || die "the finished merge left its claim: $(ls "$EXPORT")"
echo "PASS: shared layers over NFS: 2 hosts read the golden layer; merge refused while leases live"
