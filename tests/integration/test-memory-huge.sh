#!/bin/bash
# Checks that a memory device is truly sparse however large: a 1 PiB device (2^41 sectors) starts serving within 2 s and under 100 MiB RSS (under the sanitizers, whose runtime alone takes more than that: under 100 MiB over the RSS of the same build serving a 1 MiB memory device, and within 2 s times STRATA_TEST_TIME_SCALE), reads zeros at its end, keeps a write at 512 TiB; sizes it cannot hold are refused with clear errors (over the largest memory device, past 2^63 bytes), never an abort.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdsh

refused() { # TABLE-LINE MESSAGE
  echo "$1" >"$WORK/bad.table"
  local rc=0
  timeout 10 "$STRATA" serve --unix "$WORK/bad.sock" --control "$WORK/bad.ctl" --table "$WORK/bad.table" \
    >"$WORK/bad.out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || die "'$1': expected exit status 1, got $rc: $(cat "$WORK/bad.out")"
  grep -qF "$2" "$WORK/bad.out" || die "'$1': expected '$2' in: $(cat "$WORK/bad.out")"
}
refused "0 9007199254740992 memory" \
  "bad.table:1: memory: 4611686018427387904 bytes is more than the largest memory device (18014398509481984 bytes, 16384 TiB)"
refused "0 18014398509481984 memory" "bad.table:1: field 2 (num_sectors): segment end is too large (a device ends by sector 18014398509481983, 2^63 bytes)"
refused "0 18446744073709551615 zero" "segment end is too large"

rss_mib() { echo $(($(awk '/^VmRSS:/ {print $2}' "/proc/$1/status") / 1024)); }
# The RSS of this build serving a 1 MiB memory device after the same I/O: the floor (only used under the sanitizers).
FLOOR=0
if [ -n "${STRATA_SANITIZED:-}" ]; then
  echo "0 2048 memory" >"$WORK/small.table"
  start_strata --table "$WORK/small.table"
  py <<<'from nbd_raw import handle; h = handle(); h.pwrite(b"x" * 65536, 0); assert h.pread(65536, 0) == b"x" * 65536' ||
    die "small device I/O"
  FLOOR=$(rss_mib "$STRATA_PID")
  stop_strata
  echo "sanitized build: a 1 MiB memory device holds $FLOOR MiB RSS"
fi
echo "0 $((1 << 41)) memory" >"$WORK/table"
t0=$(date +%s%N)
start_strata --table "$WORK/table"
ms=$((($(date +%s%N) - t0) / 1000000))
export STRATA_PID FLOOR
py <<'PYEOF'
import os
from nbd_raw import handle
pid = os.environ["STRATA_PID"]
def rss_mib():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) // 1024
h = handle()
size = h.get_size()
assert size == 1 << 50, size
assert h.pread(4096, size - 4096) == bytes(4096), "the end of the device is not zeros"
data = os.urandom(65536)
h.pwrite(data, 1 << 49)
assert h.pread(65536, 1 << 49) == data, "a write at 512 TiB did not read back"
assert h.pread(4096, (1 << 49) + 65536) == bytes(4096)
h.shutdown()
r = rss_mib()
floor = int(os.environ["FLOOR"])
print(f"1 PiB memory device: RSS {r} MiB after a write" + (f" ({r - floor} MiB over the floor)" if floor else ""))
assert r - floor < 100, f"RSS {r} MiB (floor {floor} MiB)"
PYEOF
echo "1 PiB memory device served ${ms} ms after the start"
[ "$ms" -lt $((2000 * ${STRATA_TEST_TIME_SCALE:-1})) ] || die "a 1 PiB memory device took $ms ms to start"
finish
