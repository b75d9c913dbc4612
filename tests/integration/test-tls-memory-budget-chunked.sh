#!/bin/bash
# Checks that a read larger than the memory budget's pool is still served, under TLS, a chunk at a time: with --max-connections 1 --max-memory 33M (a 30 MiB pool), 32 MiB reads return the right data with structured and with simple replies, and a 32 MiB write lands.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/tls-lib.sh"
requires psktool

make_psk "$WORK/keys.psk" alice
chmod 600 "$WORK/keys.psk"
cat >"$WORK/table" <<CONF
[p]
0 $((1 << 21)) pattern
[m]
0 $((64 << 11)) memory
CONF
start_strata --table "$WORK/table" --tls=require --tls-psk "$WORK/keys.psk" --max-connections 1 --max-memory 33M
export KEYS=$WORK/keys.psk SOCK
$PYTHON - <<'PYEOF'
import os, struct, nbd
def connect(name, structured):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(os.environ["KEYS"])
    h.set_tls_username("alice")
    h.set_request_structured_replies(structured)
    h.set_export_name(name)
    h.connect_unix(os.environ["SOCK"])
    return h
for structured in (True, False):
    h = connect("p", structured)
    off = 12345 * 4096
    d = h.pread(32 << 20, off)
    assert len(d) == 32 << 20
    bad = [i for i in range(0, len(d), 4096) if d[i:i + 8] != struct.pack(">Q", off + i)]
    assert not bad, f"structured={structured}: wrong data at {bad[:3]}"
    h.shutdown()
    print(f"32 MiB read over TLS, structured={structured}: ok")
h = connect("m", True)
data = os.urandom(32 << 20)
h.pwrite(data, 0)
assert h.pread(32 << 20, 0) == data, "32 MiB write did not read back"
h.shutdown()
print("32 MiB write + read over TLS: ok")
PYEOF
stop_strata
echo "PASS: $(basename "$0")"
