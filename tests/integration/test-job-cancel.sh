#!/bin/bash
# Jobs can be cancelled half-way and run again: a merge cancelled by `strata job cancel` (and one whose following CLI
# is interrupted with Ctrl-C) ends "cancelled" with the stack still readable as before, and a later merge finishes it
# with every byte identical to the reference; a sync cancelled half-way leaves the blocks it did not copy dirty, and a
# later sync makes the replica identical. `job wait` exits 3 for a cancelled job, 0 for a done one.
source "$(dirname "$0")/functions.sh"
requires jq nbdcopy cmp
S="$STRATA"
SIZE=$((160 * 1048576))
head -c $SIZE /dev/urandom >"$WORK/base.img"
"$S" layer create "$WORK/l1.layer" --size $SIZE >/dev/null
"$S" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" >/dev/null
truncate -s $SIZE "$WORK/plain.img"
cat >"$WORK/t.conf" <<EOT
[base]
0 $((SIZE / 512)) file $WORK/base.img 0 ro
[vm]
0 $((SIZE / 512)) cow $WORK/top.layer base=base
[plain]
0 $((SIZE / 512)) file $WORK/plain.img 0
EOT
# Every merge waits 1 s between its switch and its copy (a failpoint): the merge followed by the
# CLI below must still be running when the CLI is interrupted (a merge no longer flushes at its
# start, and once ended before the Ctrl-C reached it).
STRATA_FAILPOINT_MERGE_COPY_DELAY_MS=1000 start_strata --table "$WORK/t.conf"
ctl dirty start plain m >/dev/null
head -c $SIZE /dev/urandom >"$WORK/data.img"
nbdcopy "$WORK/data.img" "$(uri vm)"
nbdcopy "$WORK/data.img" "$(uri plain)"
layers() { ctl status vm --json | jq '.[0].segments[0].info.layers'; }
[ "$(layers)" = 2 ] || die "expected 2 layers, got $(layers)"

# start_and_cancel_half METHOD PARAMS: start a job (detached) and cancel it once it has copied something (it must not
# have ended), polling every millisecond; prints the job's id. The job is started from the poller itself, so that a
# slow start of the poller on a busy machine cannot let a short job end first.
start_and_cancel_half() {
  $PYTHON - "$CTL" "$1" "$2" <<'PY' || die "could not cancel a $1 job half-way"
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("r")
def ask(req):
    s.sendall((json.dumps(req) + "\n").encode()); return json.loads(f.readline())
params = json.loads(sys.argv[3]); params["detach"] = True
r = ask({"method": sys.argv[2], "params": params})
assert r["ok"], r
jid = r["result"]["job"]
print(jid, flush=True)
for _ in range(20000):
    j = [x for x in ask({"method": "job_list"})["result"] if x["id"] == jid][0]
    assert j["state"] == "running", j
    if 0 < j["done_bytes"] < j["total_bytes"]:
        assert ask({"method": "job_cancel", "params": {"id": jid}})["ok"]
        sys.exit(0)
    time.sleep(0.001)
sys.exit(1)
PY
}

# 1. A merge followed by the CLI, interrupted with Ctrl-C: the server cancels it.
"$S" merge vm --control "$CTL" 2>"$WORK/merge2.err" &
M=$!
for i in $(seq 1 500); do
  [ "$(ctl jobs --json | jq '[.[] | select(.state == "running")] | length')" = 1 ] && break
  sleep 0.01
done
kill -INT $M
wait $M && die "an interrupted merge exited 0"
for i in $(seq 1 200); do
  st=$(ctl jobs --json | jq -r '.[-1].state')
  [ "$st" != running ] && break
  sleep 0.05
done
[ "$st" = cancelled ] || die "the interrupted merge's job is '$st', not cancelled"

# 2. A merge cancelled with `job cancel`.
id=$(start_and_cancel_half device_merge '{"device": "vm"}')
[[ $id =~ ^[0-9]+$ ]] || die "no merge job to cancel"
rc=0; ctl job wait "$id" --json >"$WORK/w1.json" || rc=$?
[ $rc -eq 3 ] || die "job wait of a cancelled merge exited $rc: $(cat "$WORK/w1.json")"
[ "$(jq -r .state "$WORK/w1.json")" = cancelled ] || die "merge job: $(cat "$WORK/w1.json")"
jq -e '.done_bytes < .total_bytes' "$WORK/w1.json" >/dev/null || die "the merge was not cancelled half-way"
[ "$(layers)" = 2 ] || die "a cancelled merge dropped the top"
nbdcopy "$(uri vm)" "$WORK/mid.img"
cmp "$WORK/data.img" "$WORK/mid.img" || die "the stack reads differently after a cancelled merge"

# 3. Merge again, to the end. A snapshot while it runs is refused (the stack keeps its layers).
ctl merge vm --json >"$WORK/m3.json" 2>"$WORK/m3.err" &
M=$!
for i in $(seq 1 500); do
  [ "$(ctl jobs --json | jq '[.[] | select(.state == "running")] | length')" = 1 ] && break
  sleep 0.01
done
snap=$(ctl snapshot vm 2>&1) && die "a snapshot during a merge succeeded: $snap"
grep -q "a merge is running" <<<"$snap" || die "a snapshot during a merge: $snap"
wait $M || die "merge after cancel failed: $(cat "$WORK/m3.json" "$WORK/m3.err")"
jq -e '.chunks_copied > 0' "$WORK/m3.json" >/dev/null || die "the merge after the cancel copied nothing: $(cat "$WORK/m3.json")"
[ "$(layers)" = 1 ] || die "the merge did not finish: $(layers) layers"
nbdcopy "$(uri vm)" "$WORK/after.img"
cmp "$WORK/data.img" "$WORK/after.img" || die "the merged stack differs from the reference"

# 4. A sync cancelled half-way keeps what it did not copy dirty.
id=$(start_and_cancel_half device_sync "{\"device\": \"plain\", \"map\": \"m\", \"to\": \"$WORK/replica.img\"}")
[[ $id =~ ^[0-9]+$ ]] || die "no sync job to cancel"
rc=0; ctl job wait "$id" >/dev/null || rc=$?
[ $rc -eq 3 ] || die "job wait of a cancelled sync exited $rc"
left=$(ctl dirty status plain --json | jq '.[0].dirty_bytes')
[ "$left" -gt 0 ] || die "a cancelled sync left nothing dirty"
out=$(ctl sync plain --map m --to "$WORK/replica.img" --json) || die "sync after cancel failed: $out"
[ "$(jq -c '[.converged, .dirty_bytes_left]' <<<"$out")" = '[true,0]' ] || die "sync: $out"
cmp "$WORK/data.img" "$WORK/replica.img" || die "the replica differs after a cancelled sync and a full one"
[ "$(ctl jobs --json | jq -c '[.[].state]')" = '["cancelled","cancelled","done","cancelled","done"]' ] ||
  die "jobs: $(ctl jobs --json)"
stop_strata
echo PASS
