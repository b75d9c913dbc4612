#!/bin/bash
# dirty maps persist: a clean restart (SIGTERM) keeps the map and its bits; after kill -9 during writes, every block a writer attempted since the checkpoint is in the map (offline, and online after a restart), nothing else is, and the map is consistent; the offline list equals the online list.
. "$(dirname "$0")/functions.sh"
requires qemu-io jq

IMG=$WORK/d.img
truncate -s 64M "$IMG"
ST=$WORK/state
start_strata --file "$IMG" --export d --state-dir "$ST"
ctl dirty start d m >/dev/null
ctl dirty start d coarse --granularity 1048576 >/dev/null
qio "$(uri d)" "write 1000 5000" "write -z 4194304 8192" "discard 8388608 65536" "write $((64 * 1048576 - 4096)) 4096"
want=$(ctl dirty list d m)
want_coarse=$(ctl dirty list d coarse)
[ "$want" = "0 8192
4194304 8192
8388608 65536
67104768 4096" ] || die "before restart: $want"

# ---- clean restart
stop_strata
# Offline, with no server: the same.
[ "$(ctl dirty list --offline --state-dir "$ST" d m)" = "$want" ] || die "offline list after SIGTERM: $(ctl dirty list --offline --state-dir "$ST" d m)"
start_strata --file "$IMG" --export d --state-dir "$ST"
[ "$(ctl dirty list d m)" = "$want" ] || die "after a clean restart: $(ctl dirty list d m)"
[ "$(ctl dirty list d coarse)" = "$want_coarse" ] || die "coarse after a clean restart: $(ctl dirty list d coarse)"
[ "$(ctl dirty status d --json | jq -c 'sort_by(.name) | map([.name, .granularity, .consistent])')" = \
  '[["coarse",1048576,true],["m",4096,true]]' ] || die "status after a clean restart: $(ctl dirty status d --json)"
# The map keeps working after the restart.
qio "$(uri d)" "write 12288 4096"
[ "$(ctl dirty list d m | head -2)" = "0 8192
12288 4096" ] || die "a write after the restart was not marked: $(ctl dirty list d m)"

# ---- kill -9 during writes
ctl dirty clear d m
ctl dirty clear d coarse
[ -z "$(ctl dirty list d m)" ] || die "not empty after clear"
# Two writer threads, each logging a write ("off len seq", to its own log,
# flushed) before sending it and "done seq" once it is acknowledged; they run
# until the server dies. Each write's data is its own tag (thread, seq), so
# the image tells whether the server processed a write never acknowledged.
"$PYTHON" - "$(uri d)" "$WORK" >"$WORK/writer.out" 2>&1 <<'PY' &
import random, struct, sys, threading, nbd
uri, work = sys.argv[1], sys.argv[2]
G = 4096
N = (64 << 20) // G
def writer(i):
    rng = random.Random(i)
    h = nbd.NBD()
    h.connect_uri(uri)
    with open(f"{work}/attempts.{i}", "w", buffering=1) as log:
        seq = 0
        try:
            while True:
                seq += 1
                b = rng.randrange(N)
                ln = rng.choice([512, 4096, 4096, 12288, 20000])
                off = b * G + rng.choice([0, 0, 104, 3000])
                ln = min(ln, N * G - off)
                log.write(f"{off} {ln} {seq}\n")
                log.flush()
                h.pwrite((struct.pack("<II", i + 1, seq) * (ln // 8 + 1))[:ln], off)
                log.write(f"done {seq}\n")
        except nbd.Error as e:
            print(f"writer {i} stopped: {e}")
ts = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
for t in ts: t.start()
for t in ts: t.join()
PY
WRITER=$!
# Let the writers get going, then kill the server under them.
for _ in $(seq 200); do
  [ "$(cat "$WORK"/attempts.* 2>/dev/null | grep -c '^done')" -ge 1000 ] && break
  sleep 0.05
done
kill9_strata
wait $WRITER || die "writer: $(cat "$WORK/writer.out")"
n=$(cat "$WORK"/attempts.* | grep -c '^done') || true
[ "$n" -ge 1000 ] || die "only $n writes were acknowledged before the kill"

# Every write the server processed is in the map - every acknowledged one,
# and an unacknowledged one (at most the last of each writer) whose data is
# in the image - and no block outside the attempted writes is dirty.
check_cover() { # LIST_FILE GRANULARITY
  "$PYTHON" - "$1" "$2" "$IMG" "$WORK"/attempts.* <<'PY'
import struct, sys
lst, g, img, logs = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb"), sys.argv[4:]
dirty = set()
for line in open(lst):
    off, ln = map(int, line.split())
    assert off % g == 0, line
    dirty.update(range(off // g, (off + ln + g - 1) // g))
def blocks(off, ln):
    return set(range(off // g, (off + ln - 1) // g + 1))
attempted, must, unacked, processed = set(), set(), 0, 0
for i, f in enumerate(logs):
    thread = int(f.rsplit(".", 1)[1]) + 1
    writes, done = {}, set()
    for line in open(f):
        p = line.split()
        if p[0] == "done":
            done.add(int(p[1]))
        else:
            writes[int(p[2])] = (int(p[0]), int(p[1]))
    for seq, (off, ln) in writes.items():
        attempted |= blocks(off, ln)
        if seq in done:
            must |= blocks(off, ln)
            continue
        unacked += 1
        assert seq == max(writes), f"writer {thread}: write {seq} unacknowledged but not the last"
        img.seek(off)
        data, tag = img.read(ln), struct.pack("<II", thread, seq)
        if any(data[k:k + 8] == tag for k in range(0, ln - 7, 8)):
            must |= blocks(off, ln)   # the server processed it: it must be marked
            processed += 1
missing, extra = must - dirty, dirty - attempted
assert not missing, f"{len(missing)} blocks of processed writes are not dirty, e.g. {sorted(missing)[:5]}"
assert not extra, f"{len(extra)} blocks are dirty but were never written, e.g. {sorted(extra)[:5]}"
print(f"{lst}: {len(dirty)} dirty blocks; {unacked} unacknowledged writes, {processed} of them processed", file=sys.stderr)
print(len(dirty))
PY
}
ctl dirty list --offline --state-dir "$ST" d m >"$WORK/offline.m" || die "offline list after kill -9"
ctl dirty list --offline --state-dir "$ST" d coarse >"$WORK/offline.coarse" || die "offline list (coarse) after kill -9"
check_cover "$WORK/offline.m" 4096 >/dev/null || die "offline map after kill -9 does not match the attempts"
check_cover "$WORK/offline.coarse" 1048576 >/dev/null || die "offline coarse map after kill -9 does not match the attempts"
j=$(ctl dirty list --offline --state-dir "$ST" d m --json)
[ "$(jq .consistent <<<"$j")" = true ] || die "offline map after kill -9 is not consistent: $(jq -c 'del(.extents)' <<<"$j")"

start_strata --file "$IMG" --export d --state-dir "$ST"
ctl dirty list d m >"$WORK/online.m"
ctl dirty list d coarse >"$WORK/online.coarse"
blocks=$(check_cover "$WORK/online.m" 4096) || die "map after kill -9 and restart does not match the attempts"
check_cover "$WORK/online.coarse" 1048576 >/dev/null || die "coarse map after kill -9 and restart does not match"
cmp -s "$WORK/offline.m" "$WORK/online.m" || die "offline and online lists differ after kill -9"
st=$(ctl dirty status d --json)
[ "$(jq -c 'map(.consistent)' <<<"$st")" = '[true,true]' ] || die "maps not consistent after kill -9: $st"
[ "$(jq '.[] | select(.name == "m") | .dirty_blocks' <<<"$st")" = "$blocks" ] || die "status dirty_blocks != $blocks: $st"
[ "$(ctl dirty list d m --json | jq .consistent)" = true ] || die "dirty list --json: not consistent"
# While the server runs, the offline list reads the same file.
ctl dirty list --offline --state-dir "$ST" d m >"$WORK/offline2.m"
cmp -s "$WORK/offline2.m" "$WORK/online.m" || die "offline list differs from online with the server running"

# And once more across a clean restart.
stop_strata
ctl dirty list --offline --state-dir "$ST" d m >"$WORK/offline3.m"
cmp -s "$WORK/offline3.m" "$WORK/online.m" || die "offline list after SIGTERM differs"
start_strata --file "$IMG" --export d --state-dir "$ST"
ctl dirty list d m | cmp -s - "$WORK/online.m" || die "list after the second restart differs"
stop_strata
echo PASS
