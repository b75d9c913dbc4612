#!/bin/bash
# Checks that the handshake advertises what nbdinfo expects: size, every transmission flag (flush, fua, trim, zero, fast zero, multi-conn, cache, df), the base:allocation context and the block sizes (4096 minimum for an O_DIRECT file).
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

truncate -s 64M "$WORK/disk.img"
truncate -s 8M "$WORK/direct.img"
cat >"$WORK/table" <<EOT
[plain]
0 131072 file $WORK/disk.img 0
[direct]
0 16384 file $WORK/direct.img 0 direct=on
EOT
start_strata --table "$WORK/table"

nbdinfo --json "$(uri plain)" >"$WORK/plain.json"
nbdinfo --json "$(uri direct)" >"$WORK/direct.json"
nbdinfo "$(uri plain)" >"$WORK/plain.txt"
grep -q 'base:allocation' "$WORK/plain.txt" || die "nbdinfo text output lacks base:allocation"

py <<'PYEOF'
import json, os
w = os.environ["WORK"]
j = json.load(open(f"{w}/plain.json"))
assert j["protocol"] == "newstyle-fixed", j["protocol"]
assert j["structured"] is True, "structured replies not negotiated"
assert j["TLS"] is False
(e,) = j["exports"]
assert e["export-name"] == "plain", e["export-name"]
assert e["export-size"] == 64 << 20, e["export-size"]
for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
             "can_multi_conn", "can_cache", "can_df"]:
    assert e[flag] is True, f"{flag} is {e[flag]}"
assert e["is_read_only"] is False
assert "base:allocation" in e["contexts"], e["contexts"]
assert e["block_size_minimum"] == 1, e["block_size_minimum"]
assert e["block_size_preferred"] == 4096, e["block_size_preferred"]
assert e["block_size_maximum"] == 32 << 20, e["block_size_maximum"]

(d,) = json.load(open(f"{w}/direct.json"))["exports"]
assert d["export-size"] == 8 << 20, d["export-size"]
assert d["block_size_minimum"] == 4096, f"O_DIRECT export: minimum block size {d['block_size_minimum']}"
assert d["block_size_preferred"] >= 4096
assert d["block_size_maximum"] == 32 << 20
print("handshake info ok")
PYEOF

finish
