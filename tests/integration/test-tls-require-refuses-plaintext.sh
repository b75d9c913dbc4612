#!/bin/bash
# --tls=require refuses plaintext: a plaintext libnbd client cannot connect; raw INFO, GO, LIST, STRUCTURED_REPLY, SET_META_CONTEXT (and an unknown option) each get NBD_REP_ERR_TLS_REQD with nothing leaked and their payloads consumed; EXPORT_NAME before STARTTLS closes the connection with nothing sent; the file target saw zero reads/writes; a TLS client still works.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
source "$(dirname "$0")/tls-lib.sh"
requires jq nbdinfo psktool

KEYS=$WORK/keys.psk
make_psk "$KEYS" alice
truncate -s 8M "$WORK/disk.img"
start_strata --file "$WORK/disk.img" --tls=require --tls-psk "$KEYS"
export KEYS TURI="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$KEYS"

counter() { ctl status --json | jq ".[0].segments[0].info.$1"; }

# A plaintext nbdinfo gets nothing.
if out=$(nbdinfo "$(uri)" 2>&1); then die "plaintext nbdinfo succeeded against --tls=require: $out"; fi
if grep -q "export-size" <<<"$out"; then die "plaintext nbdinfo learned the export size: $out"; fi

py <<'PYEOF'
import os, socket, struct, nbd
from nbd_raw import *

REP_ERR_TLS_REQD = REP_ERR | 5
assert REP_ERR_TLS_REQD == 0x80000005

# 1. plaintext libnbd: connecting fails, no read happens.
h = nbd.NBD()
try:
    h.connect_unix(os.environ["SOCK"])
    raise AssertionError("plaintext libnbd connected to a --tls=require server")
except nbd.Error as e:
    print("plaintext libnbd refused:", e.string)
del h

# 2. raw: every option except STARTTLS/ABORT gets ERR_TLS_REQD, and its payload
# is consumed, so the option after it is parsed. All of them go in ONE send:
# a payload left unread would be taken for the next option's header.
meta = Raw.meta_data("", ["base:allocation"])
opts = [
    (OPT_INFO, Raw.info_go_data("", [INFO_NAME, INFO_BLOCK_SIZE])),
    (OPT_GO, Raw.info_go_data("")),
    (OPT_LIST, b""),
    (OPT_STRUCTURED_REPLY, b""),
    (OPT_SET_META_CONTEXT, meta),
    (OPT_LIST_META_CONTEXT, meta),
    (0x1234, b"x" * 300),  # unknown option with a payload
    (OPT_GO, Raw.info_go_data("")),
]
r = Raw()
r.greet()
r.send(b"".join(struct.pack(">QII", IHAVEOPT, o, len(d)) + d for o, d in opts))
for o, d in opts:
    ropt, typ, rdata = r.option_reply()
    assert ropt == o, f"reply for option {ropt} while expecting {o}: a payload was not consumed"
    assert typ == REP_ERR_TLS_REQD, f"option {o}: reply {typ:#x}, want NBD_REP_ERR_TLS_REQD"
    print(f"option {o}: ERR_TLS_REQD ({rdata!r})")
# Still in option haggling and in sync: one more, sent on its own.
typ, infos, _ = r.option(OPT_INFO, Raw.info_go_data(""))
assert typ == REP_ERR_TLS_REQD and infos == [], (hex(typ), infos)
# ABORT is allowed without TLS: ACK, then the server closes.
typ, infos, _ = r.option(OPT_ABORT)
assert typ == REP_ACK, hex(typ)
assert r.wait_closed(5), "server did not close after ABORT"
r.close()

# 3. EXPORT_NAME before STARTTLS: the connection is closed, nothing sent
# (no export size / flags reach a plaintext client).
r = Raw()
r.greet()
r.send_option(OPT_EXPORT_NAME, b"")
r.s.settimeout(5)
got = b""
try:
    while True:
        c = r.s.recv(65536)
        if not c:
            break
        got += c
except ConnectionResetError:
    pass
except socket.timeout:
    raise AssertionError("server kept the connection open after EXPORT_NAME before STARTTLS")
assert got == b"", f"server sent {len(got)} bytes after EXPORT_NAME without TLS: {got!r}"
r.close()

# An EXPORT_NAME carrying a name, after a refused option, is closed too.
r = Raw()
r.greet()
typ, _, _ = r.option(OPT_LIST)
assert typ == REP_ERR_TLS_REQD, hex(typ)
r.send_option(OPT_EXPORT_NAME, b"some-export")
assert r.wait_closed(5)
r.close()
print("plaintext refused")
PYEOF

# No request reached the target.
for k in reads writes read_bytes write_bytes; do
  [ "$(counter $k)" = 0 ] || die "file target counter $k is $(counter $k) after plaintext clients only"
done
grep -qE "conn [0-9]+ .*EXPORT_NAME before STARTTLS" "$STRATA_LOG" || die "no log line for EXPORT_NAME before STARTTLS"

# A TLS client is served.
info=$(nbdinfo "$TURI") || die "TLS nbdinfo failed after the plaintext attempts: $info"
grep -q "with TLS" <<<"$info" || die "nbdinfo: $info"
py <<'PYEOF'
import os, nbd
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["TURI"])
d = os.urandom(65536)
h.pwrite(d, 4096)
assert h.pread(65536, 4096) == d
h.shutdown()
print("tls client ok")
PYEOF
[ "$(counter writes)" -ge 1 ] || die "TLS client's write not counted: writes=$(counter writes)"
[ "$(counter reads)" -ge 1 ] || die "TLS client's read not counted: reads=$(counter reads)"
finish
