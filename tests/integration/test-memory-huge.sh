#!/bin/bash
# Checks that a memory device is truly sparse however large: a 1 PiB device (2^41 sectors) starts serving within 2 s and under 100 MiB RSS, reads zeros at its end, keeps a write at 512 TiB; sizes it cannot hold are refused with clear errors (over the largest memory device, past 2^63 bytes), never an abort.
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

echo "0 $((1 << 41)) memory" >"$WORK/table"
t0=$(date +%s%N)
start_strata --table "$WORK/table"
ms=$((($(date +%s%N) - t0) / 1000000))
export STRATA_PID
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
print(f"1 PiB memory device: RSS {r} MiB after a write")
assert r < 100, f"RSS {r} MiB"
PYEOF
echo "1 PiB memory device served ${ms} ms after the start"
[ "$ms" -lt 2000 ] || die "a 1 PiB memory device took $ms ms to start"
finish
