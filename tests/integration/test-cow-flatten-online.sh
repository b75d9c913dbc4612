#!/bin/bash
# An online flatten (paced by --rate) is a point-in-time copy: blocks 0 and N hold 'A'; while `strata flatten` runs, 'B' is written to block 0 and acknowledged, then 'C' to block N. The file must match one moment of the device: (A,A), (B,A) or (B,C), never (A,C) (C written after B was acknowledged, B missing). The copy is the device when the command began: (A,A), and the device itself reads B and C. Then the same with TRIM and WRITE_ZEROES for the writes, and the file reads back identical to a copy made offline from a snapshot of that moment.
source "$(dirname "$0")/functions.sh"
requires jq cmp
S="$STRATA"
SIZE=$((512 << 20))
head -c $SIZE /dev/urandom >"$WORK/base.img"
"$S" layer create "$WORK/top.layer" --size $SIZE >/dev/null
cow_table "$WORK/t.conf" $SIZE "$WORK/base.img" "$WORK/top.layer"
start_strata --table "$WORK/t.conf"
for how in write zero trim; do
  rm -f "$WORK/flat.raw" "$WORK/ref.raw"
  $PYTHON - "$S" "$CTL" "$SOCK" "$WORK" "$how" <<'PY' || die "flatten ($how) is not a point-in-time copy"
import json, subprocess, sys, time
import nbd
strata, ctl, sock, work, how = sys.argv[1:]
BS, N = 4096, (512 << 20) - 4096
h = nbd.NBD()
h.connect_uri("nbd+unix:///d?socket=" + sock)
h.pwrite(b"A" * BS, 0)
h.pwrite(b"A" * BS, N)
h.flush()
# The reference: the device as it is now, read before the flatten starts.
with open(work + "/ref.raw", "wb") as f:
    for off in range(0, 512 << 20, 8 << 20):
        f.write(h.pread(8 << 20, off))
# --rate: the copier at most 256 MiB/s (2 s for the device), so that block N is still to copy when
# the writes come (as fast as it goes, the copier read the device in 0.3 s here: a slow poll of the
# job missed it).
t0 = time.monotonic()
m = subprocess.Popen([strata, "flatten", "d", "--to", work + "/flat.raw", "--json", "--rate", "256M",
                      "--control", ctl], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
# The copy's moment is when the job has taken it (its point_in_time), not when the command was
# spawned nor when the job started running (it opens the file first): wait for it.
moment = None
for _ in range(1000):
    jobs = json.loads(subprocess.check_output([strata, "jobs", "--json", "--control", ctl]))
    moment = next((j["point_in_time"] for j in jobs
                   if j.get("kind") == "flatten" and j.get("state") == "running" and j.get("point_in_time")), None)
    if moment or m.poll() is not None:
        break
    time.sleep(0.01)
if not moment:
    sys.exit("FAIL: no running flatten job showed its point_in_time: %s" % (jobs,))
def put(byte, off):
    if how == "write":
        h.pwrite(byte * BS, off)
    elif how == "zero":
        h.zero(BS, off)
    else:
        h.trim(BS, off)
put(b"B", 0)
put(b"C", N)
if m.poll() is not None:
    sys.exit("FAIL: the flatten had ended before the second write: nothing tested (%s)" % (m.communicate(),))
out, err = m.communicate(timeout=120)
if m.returncode != 0:
    sys.exit("FAIL: flatten failed: %s %s" % (out, err))
res = json.loads(out)
took = time.monotonic() - t0
if took < 1.8:
    sys.exit("FAIL: --rate 256M copied 512 MiB in %.2f s (at most 256 MiB/s: 2 s)" % took)
if res.get("point_in_time") != moment:
    sys.exit("FAIL: the result's point_in_time %r is not the job's %r" % (res.get("point_in_time"), moment))
new0 = {"write": b"B" * BS, "zero": b"\0" * BS, "trim": b"\0" * BS}[how]
newN = {"write": b"C" * BS, "zero": b"\0" * BS, "trim": b"\0" * BS}[how]
if h.pread(BS, 0) != new0 or h.pread(BS, N) != newN:
    sys.exit("FAIL: the device lost a write made during the flatten")
with open(work + "/flat.raw", "rb") as f:
    f.seek(0); b0 = f.read(BS)
    f.seek(N); bN = f.read(BS)
A = b"A" * BS
if b0 == A and bN == newN:
    sys.exit("FAIL: the file holds the second write but not the first, acknowledged before it")
if (b0, bN) != (A, A):
    sys.exit("FAIL: the file is not the device when the flatten began: block 0 %r, block N %r" % (b0[:4], bN[:4]))
if res.get("copied_before_writes", 0) < 1:
    sys.exit("FAIL: expected the write to block N to copy its block first: %s" % res)
h.shutdown()
PY
  cmp "$WORK/ref.raw" "$WORK/flat.raw" || die "flatten ($how): the file differs from the device when the flatten began"
done
# A rate that is no rate is refused before anything is copied.
for bad in 0 fast -5M; do
  rm -f "$WORK/bad.raw"
  if "$S" flatten d --to "$WORK/bad.raw" --rate "$bad" --control "$CTL" >/dev/null 2>"$WORK/err"; then
    die "flatten --rate $bad accepted"
  fi
  grep -q -- "--rate" "$WORK/err" || die "flatten --rate $bad: no clear error: $(cat "$WORK/err")"
  [ ! -e "$WORK/bad.raw" ] || die "flatten --rate $bad made the file"
done
stop_strata
echo PASS
