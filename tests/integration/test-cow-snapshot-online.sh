#!/bin/bash
# cow: `strata snapshot` twice while two libnbd writers keep writing (aligned and unaligned writes, so copy-up crosses the snapshot): no client error, the pause (pause_us) is reported, the table line is unchanged, every write reads back afterwards; each snapshot layer served alone read-only (`cow TOP.snapN ro base=base` in another server, next to the running one) holds exactly the device as it was at its snapshot (every write acknowledged before it, none started after it; a block written before snapshot 1 and rewritten between the two reads its old values there); `strata layer info` shows the snapshots read-only.
. "$(dirname "$0")/functions.sh"
requires jq

M=1048576
SIZE=$((16 * M))
B=$WORK/base.img
head -c $SIZE /dev/urandom >"$B"
TOP=$WORK/top.layer
"$STRATA" layer create "$TOP" --size $SIZE >/dev/null
cat >"$WORK/t.conf" <<CONF
[base]
0 $((SIZE / 512)) file $B 0 ro
[d]
0 $((SIZE / 512)) cow $TOP base=base
CONF
start_strata --table "$WORK/t.conf"
X=$((8 * M))   # written by the script: 0xaa, snapshot 1, 0xbb, snapshot 2, 0xcc
qio "$(uri d)" "write -P 0xaa $X 4096" "write -P 0xa1 $((X + 8192 + 100)) 1000"

# A writer: synchronous writes into its own range, logged as
# "seq off len seed t_start t_end" (time.time()).
cat >"$WORK/writer.py" <<'PY'
import nbd, os, random, sys, time
uri, lo, hi, log, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
h = nbd.NBD(); h.connect_uri(uri)
rng = random.Random(lo)
out, seq = [], 0
while not os.path.exists(stop) or seq < 200:
    if rng.random() < 0.7:
        off, ln = lo + rng.randrange((hi - lo) // 4096) * 4096, 4096 * rng.choice((1, 1, 2, 4))
    else:
        off = lo + rng.randrange(hi - lo - 20000); ln = rng.randrange(1, 12000)
    ln = min(ln, hi - off)
    seed = rng.getrandbits(32)
    t0 = time.time()
    h.pwrite(random.Random(seed).randbytes(ln), off)
    out.append(f'{seq} {off} {ln} {seed} {t0:.6f} {time.time():.6f}')
    seq += 1
    if seq % 50 == 0: h.flush()
h.flush()
open(log, 'w').write('\n'.join(out) + '\n')
print('ok', seq)
PY
$PYTHON "$WORK/writer.py" "$(uri d)" 0 $((2 * M)) "$WORK/w1.log" "$WORK/stop" >"$WORK/w1.out" 2>&1 &
W1=$!
$PYTHON "$WORK/writer.py" "$(uri d)" $((4 * M)) $((6 * M)) "$WORK/w2.log" "$WORK/stop" >"$WORK/w2.out" 2>&1 &
W2=$!
sleep 0.7
snap() {
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(ctl snapshot d --json) || die "strata snapshot failed: $out"
  t1=$(date +%s.%N)
  echo "$t0 $t1" >"$WORK/snap$1.time"
  printf '%s\n' "$out" >"$WORK/snap$1.json"
  [ "$(jq -r '.[0].snapshot' <<<"$out")" = "$TOP.snap$1" ] || die "snapshot $1 is not $TOP.snap$1: $out"
  local us
  us=$(jq '.[0].pause_us' <<<"$out")
  [[ $us =~ ^[0-9]+$ ]] && [ "$us" -gt 0 ] && [ "$us" -lt 5000000 ] || die "snapshot $1: pause_us missing or absurd: $out"
  # pause_us is the hold alone; total_us adds the flushes done with writes
  # flowing before it (1 to 4 rounds).
  local total rounds
  total=$(jq '.[0].total_us' <<<"$out") rounds=$(jq '.[0].flush_rounds' <<<"$out")
  [[ $total =~ ^[0-9]+$ ]] && [ "$total" -ge "$us" ] || die "snapshot $1: total_us missing or below pause_us: $out"
  [[ $rounds =~ ^[1-4]$ ]] || die "snapshot $1: flush_rounds not 1-4: $out"
  [ "$(jq '.[0].layers | length' <<<"$out")" = $(($1 + 1)) ] || die "snapshot $1: wrong layer list: $out"
  echo "snapshot $1: writes held $us us" >&2
}
snap 1
qio "$(uri d)" "write -P 0xbb $X 4096" "write -P 0xb1 $((X + 8192 + 600)) 1000"
sleep 0.7
snap 2
qio "$(uri d)" "write -P 0xcc $X 4096"
sleep 0.5
touch "$WORK/stop"
wait $W1 || die "writer 1 failed: $(cat "$WORK/w1.out")"
wait $W2 || die "writer 2 failed: $(cat "$WORK/w2.out")"
grep -q '^ok' "$WORK/w1.out" && grep -q '^ok' "$WORK/w2.out" || die "a writer saw an error: $(cat "$WORK/w1.out" "$WORK/w2.out")"
for s in 1 2; do
  read -r t0 t1 <"$WORK/snap$s.time"
  # Both writers were writing across the snapshot.
  for w in 1 2; do
    awk -v t="$t0" '$6 < t {f = 1} END {exit !f}' "$WORK/w$w.log" || die "writer $w wrote nothing before snapshot $s"
    awk -v t="$t1" '$5 > t {f = 1} END {exit !f}' "$WORK/w$w.log" || die "writer $w wrote nothing after snapshot $s"
  done
done
[ "$(ctl table d)" = "0 $((SIZE / 512)) cow $TOP base=base" ] || die "the table line changed: $(ctl table d)"

# The snapshots, served alone by a second server beside the first.
cat >"$WORK/t2.conf" <<CONF
[base]
0 $((SIZE / 512)) file $B 0 ro
[s1]
0 $((SIZE / 512)) cow $TOP.snap1 base=base ro
[s2]
0 $((SIZE / 512)) cow $TOP.snap2 base=base ro
CONF
S2=$WORK/s2.sock
"$STRATA" serve --unix "$S2" --control "$WORK/c2.sock" --table "$WORK/t2.conf" >>"$STRATA_LOG" 2>&1 &
SRV2=$!
for _ in $(seq 100); do [ -S "$S2" ] && "$STRATA" list --control "$WORK/c2.sock" >/dev/null 2>&1 && break; sleep 0.05; done
kill -0 $SRV2 2>/dev/null || die "a second server could not serve the snapshot layers"

out=$($PYTHON - "$B" "$(uri d)" "nbd+unix:///s1?socket=$S2" "nbd+unix:///s2?socket=$S2" "$WORK" $X <<'PY' 2>&1
import nbd, random, sys
base, live, s1, s2, work, X = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
M = 1 << 20
img = open(base, 'rb').read()
logs = {w: [tuple(l.split()) for l in open(f'{work}/w{w}.log')] for w in (1, 2)}
ranges = {1: (0, 2 * M), 2: (4 * M, 6 * M)}
def apply(buf, lo, wr):
    _, off, ln, seed = int(wr[0]), int(wr[1]), int(wr[2]), int(wr[3])
    buf[off - lo:off - lo + ln] = random.Random(seed).randbytes(ln)
def read(uri, off, ln):
    h = nbd.NBD(); h.connect_uri(uri)
    return h.pread(ln, off)
bad = []
# Live device: every write, in order.
for w, (lo, hi) in ranges.items():
    buf = bytearray(img[lo:hi])
    for wr in logs[w]: apply(buf, lo, wr)
    if read(live, lo, hi - lo) != bytes(buf): bad.append(f'live device: writer {w} range differs')
# Snapshots: the writes done before it, plus maybe a prefix of those that overlapped it.
for s, uri in ((1, s1), (2, s2)):
    t0, t1 = map(float, open(f'{work}/snap{s}.time').read().split())
    for w, (lo, hi) in ranges.items():
        got = read(uri, lo, hi - lo)
        buf = bytearray(img[lo:hi])
        ok, applied, before, during = False, 0, 0, 0
        for wr in logs[w]:
            ts, te = float(wr[4]), float(wr[5])
            if te < t0:
                apply(buf, lo, wr); before += 1
            elif ts < t1:
                if bytes(buf) == got: ok = True; break
                apply(buf, lo, wr); during += 1
            else:
                break
        if not ok and bytes(buf) == got: ok = True
        if not ok:
            bad.append(f'snap{s}: writer {w} range is not the state at the snapshot ({before} writes before, {during} during)')
    # The block written by the script around the snapshots.
    want = {1: b'\xaa', 2: b'\xbb'}[s] * 4096
    if read(uri, X, 4096) != want: bad.append(f'snap{s}: block X does not read its value at snapshot {s}')
if read(live, X, 4096) != b'\xcc' * 4096: bad.append('live: block X')
# Unaligned writes around X + 8192 (copy-up of a chunk held by a snapshot).
a1 = bytearray(img[X + 8192:X + 8192 + 4096]); a1[100:1100] = b'\xa1' * 1000
b1 = bytearray(a1); b1[600:1600] = b'\xb1' * 1000
for uri, want, name in ((s1, a1, 'snap1'), (s2, b1, 'snap2'), (live, b1, 'live')):
    if read(uri, X + 8192, 4096) != bytes(want): bad.append(f'{name}: the partly written chunk after X differs')
print('\n'.join(bad) if bad else 'ok')
PY
)
[ "$out" = ok ] || die "$out"

for s in 1 2; do
  info=$("$STRATA" layer info "$TOP.snap$s" --json)
  [ "$(jq .read_only <<<"$info")" = true ] || die "snap$s is not read-only: $info"
  [ "$(jq .in_use <<<"$info")" = false ] || die "snap$s is marked in use: $info"
done
info=$("$STRATA" layer info "$TOP" --json)
[ "$(jq .read_only <<<"$info")" = false ] || die "the new top is read-only: $info"
[ "$(jq -r .parent_path <<<"$info")" = top.layer.snap2 ] || die "the new top's parent is not snap2: $info"
[ "$(jq -r .parent_path <<<"$("$STRATA" layer info "$TOP.snap2" --json)")" = top.layer.snap1 ] || die "snap2's parent is not snap1"
kill $SRV2 && wait $SRV2 || true
stop_strata
# A snapshot cannot be served writable (no other server holds it now).
echo "0 $((SIZE / 512)) cow $TOP.snap1" >"$WORK/rw.conf"
if "$STRATA" serve --unix "$WORK/s3.sock" --control "$WORK/c3.sock" --table "$WORK/rw.conf" >"$WORK/rw.out" 2>&1; then
  die "a snapshot layer was served writable"
fi
grep -q "read-only (snapshot) layer" "$WORK/rw.out" || die "no clear message for a writable snapshot: $(cat "$WORK/rw.out")"

# After a restart: the same stack, same data.
start_strata --table "$WORK/t.conf"
[ "$(ctl status d --json | jq '.[0].segments[0].info.layers')" = 3 ] || die "the stack does not have 3 layers after a restart"
qio -r "$(uri d)" "read -P 0xcc $X 4096"
stop_strata
echo PASS
