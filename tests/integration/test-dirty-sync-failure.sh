#!/bin/bash
# strata sync to a replica that fails - an unreachable URI, a read-only export, a file that cannot be created, an NBD server killed in the middle of a slow sync - exits non-zero with a clear error and forgets nothing: dirty list afterwards shows every block that was dirty (plus blocks written during the failed sync), and a later sync to a good replica copies them all.
. "$(dirname "$0")/functions.sh"
requires qemu-io nbdkit jq

SIZE=$((64 << 20))
IMG=$WORK/d.img
head -c $SIZE /dev/urandom >"$IMG"
start_strata --file "$IMG" --export d --state-dir "$WORK/state"
ctl dirty start d m >/dev/null
# 40 MiB dirty in scattered extents, and some small ones.
cmds=()
for i in $(seq 0 9); do cmds+=("write -P $((i + 1)) $((i * 6 << 20)) $((4 << 20))"); done
qio "$(uri d)" "${cmds[@]}" "write 62914560 1000" "write -z 66000000 5000"
ctl dirty list d m >"$WORK/before"
[ "$(ctl dirty list d m --json | jq .dirty_bytes)" = $((40 * 1048576 + 4096 + 8192)) ] ||
  die "setup: $(ctl dirty list d m --json | jq -c 'del(.extents)')"

expect_sync_fails() { # WANT-REGEX TO
  local rc=0
  ctl sync d --map m --to "$2" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [ $rc -ne 0 ] || die "sync to $2 succeeded: $(cat "$WORK/out")"
  grep -Eq "^strata: $1" "$WORK/err" || die "sync to $2: unclear error: $(cat "$WORK/err")"
  ctl dirty list d m | cmp -s - "$WORK/before" || die "sync to $2 failed but changed the map: $(ctl dirty list d m | head)"
  [ "$(ctl dirty status d --json | jq '.[0].consistent')" = true ] || die "map inconsistent after a failed sync"
}
expect_sync_fails "replica nbd\+unix:///x\?socket=$WORK/nosuch.sock: .*(No such file|connect)" "nbd+unix:///x?socket=$WORK/nosuch.sock"
expect_sync_fails "replica nbd://127.0.0.1:1/x: .*(refused|connect)" "nbd://127.0.0.1:1/x"
expect_sync_fails "replica $WORK/nodir/r.img: No such file or directory" "$WORK/nodir/r.img"
KPIDS=()
trap 'rc=$?; set +e; for p in "${KPIDS[@]}"; do kill -9 $p 2>/dev/null; done; (exit $rc); cleanup' EXIT
start_nbdkit() { # SOCK NBDKIT-ARGS...: in the background, until the socket is there
  local s=$1
  shift
  nbdkit --exit-with-parent --unix "$s" "$@" >>"$WORK/nbdkit.log" 2>&1 &
  KPIDS+=($!)
  disown $!   # killed by the trap without a "Killed" notice
  for _ in $(seq 100); do [ -S "$s" ] && return 0; sleep 0.05; done
  die "nbdkit $* did not start: $(cat "$WORK/nbdkit.log")"
}
# A read-only NBD replica.
start_nbdkit "$WORK/ro.sock" --readonly memory 64M
expect_sync_fails "replica .*read-only" "nbd+unix:///?socket=$WORK/ro.sock"
# A replica too small for the device.
start_nbdkit "$WORK/small.sock" memory 1M
expect_sync_fails "replica .*holds 1048576 bytes" "nbd+unix:///?socket=$WORK/small.sock"

# ---- a replica that dies in the middle: every 4 MiB chunk written to it
# takes 0.4 s, and the server is killed after about a second.
REP=$WORK/replica.img
truncate -s $SIZE "$REP"
start_nbdkit "$WORK/slow.sock" --filter=delay file "$REP" delay-write=400ms
KPID=${KPIDS[-1]}
SYNC_RC=0
(ctl sync d --map m --to "nbd+unix:///?socket=$WORK/slow.sock" >"$WORK/slow.out" 2>"$WORK/slow.err" || exit $?) &
SPID=$!
# Once it has copied a chunk or two: writes during the doomed sync (the
# control socket is busy, NBD is not), then the replica dies.
for _ in $(seq 200); do grep -q "round 1" "$WORK/slow.err" && break; sleep 0.05; done
qio "$(uri d)" "write 4718592 4096" "write -P 9 23068672 4096"
sleep 0.3
kill -9 $KPID
while kill -0 $KPID 2>/dev/null; do sleep 0.05; done
wait $SPID || SYNC_RC=$?
[ $SYNC_RC -ne 0 ] || die "sync succeeded although its replica was killed: $(cat "$WORK/slow.out")"
grep -q "round 1" "$WORK/slow.err" || die "the sync made no progress before the kill: $(cat "$WORK/slow.err")"
grep -Eq "^strata: sync: replica nbd\+unix:///\?socket=$WORK/slow.sock: .*\(the map is unchanged\)$" "$WORK/slow.err" ||
  die "sync with a killed replica: unclear error: $(cat "$WORK/slow.err")"
# Nothing forgotten: every block that was dirty, and the two new ones.
ctl dirty list d m --json >"$WORK/after.json"
"$PYTHON" - "$WORK/before" "$WORK/after.json" <<'PY' || die "blocks were lost by the failed sync"
import json, sys
G = 4096
def blocks(ext):
    s = set()
    for off, ln in ext:
        s.update(range(off // G, (off + ln + G - 1) // G))
    return s
before = blocks([tuple(map(int, l.split())) for l in open(sys.argv[1])])
after = blocks(json.load(open(sys.argv[2]))["extents"])
want = before | {4718592 // G, 23068672 // G}
assert after == want, f"missing {sorted(want - after)[:5]}, extra {sorted(after - want)[:5]}"
PY
[ "$(ctl dirty status d --json | jq '.[0].consistent')" = true ] || die "map inconsistent after the killed sync"

# A sync to a good replica afterwards works and copies all of it.
ctl sync d --map m --to "$REP" --json >"$WORK/good.json" 2>/dev/null || die "sync to a good replica failed afterwards"
[ "$(jq -c '[.copied_bytes, .converged, .dirty_bytes_left]' "$WORK/good.json")" = "[$((40 * 1048576 + 4096 + 8192 + 8192)),true,0]" ] ||
  die "good sync: $(cat "$WORK/good.json")"
"$PYTHON" - "$IMG" "$REP" "$WORK/after.json" <<'PY' || die "replica differs from the source in the dirty extents"
import json, sys
src, rep = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
for off, ln in json.load(open(sys.argv[3]))["extents"]:
    src.seek(off); rep.seek(off)
    assert src.read(ln) == rep.read(ln), f"extent {off}+{ln} differs"
PY

stop_strata
echo PASS
