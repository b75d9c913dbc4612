#!/bin/bash
# STARTTLS forgets what was negotiated in plaintext: after STRUCTURED_REPLY and SET_META_CONTEXT base:allocation, then STARTTLS (python ssl, X.509), GO gives no DF flag, a READ gets a SIMPLE reply and BLOCK_STATUS fails with EINVAL; renegotiated inside TLS they work; a second STARTTLS gets ERR_INVALID and the session goes on.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
source "$(dirname "$0")/tls-lib.sh"
requires certtool

PKI=$WORK/pki
make_pki "$PKI"
truncate -s 4M "$WORK/disk.img"
fill "$WORK/disk.img" 65536 4096 0x77
start_strata --file "$WORK/disk.img" --tls=on --tls-certificates "$PKI"
export PKI

py <<'PYEOF'
import os, ssl, struct
from nbd_raw import *

ctx = ssl.create_default_context(cafile=os.environ["PKI"] + "/ca-cert.pem")

def starttls(r):
    typ, infos, _ = r.option(OPT_STARTTLS)
    assert typ == REP_ACK and infos == [], hex(typ)
    r.s = ctx.wrap_socket(r.s, server_hostname="localhost")
    assert r.s.version() in ("TLSv1.2", "TLSv1.3"), r.s.version()

def plaintext_state(r):
    r.greet()
    r.negotiate_structured()
    typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("", ["base:allocation"]))
    assert typ == REP_ACK, hex(typ)
    assert len(infos) == 1 and infos[0][0] == REP_META_CONTEXT and infos[0][1][4:] == b"base:allocation", infos
    # Control: in plaintext (--tls=on) the state is live: GO would advertise DF.
    typ, infos, _ = r.option(OPT_INFO, Raw.info_go_data(""))
    assert typ == REP_ACK, hex(typ)
    assert Raw.parse_infos(infos)[INFO_EXPORT][1] & TFLAG_SEND_DF, "plaintext INFO after STRUCTURED_REPLY lacks DF"

# 1. Negotiated in plaintext, then STARTTLS: all forgotten.
r = Raw()
plaintext_state(r)
starttls(r)
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
assert typ == REP_ACK, hex(typ)
size, tflags = Raw.parse_infos(infos)[INFO_EXPORT]
assert size == 4 << 20, size
assert not tflags & TFLAG_SEND_DF, f"DF still advertised after STARTTLS: {tflags:#x}"
rd = r.cmd(CMD_READ, 65536, 4096)
assert not rd["structured"], "READ got a structured reply: STRUCTURED_REPLY survived STARTTLS"
assert rd["error"] == 0 and rd["data"] == b"\x77" * 4096, rd["error"]
bs = r.cmd(CMD_BLOCK_STATUS, 0, 65536)
assert not bs["structured"], "BLOCK_STATUS got a structured reply"
assert bs["error"] == EINVAL, f"BLOCK_STATUS after STARTTLS: error {bs['error']}, want EINVAL (no meta context)"
# The session still works after the refused command.
wr = r.cmd(CMD_WRITE, 8192, 512, payload=b"\x12" * 512)
assert wr["error"] == 0 and not wr["structured"], wr
assert r.cmd(CMD_READ, 8192, 512)["data"] == b"\x12" * 512
r.disconnect()

# 2. Renegotiated inside TLS, structured replies and block status work
# (so the checks above can fail), and a second STARTTLS gets ERR_INVALID.
r = Raw()
plaintext_state(r)
starttls(r)
typ, infos, _ = r.option(OPT_STARTTLS)
assert typ == REP_ERR_INVALID and infos == [], f"second STARTTLS: {typ:#x}, want ERR_INVALID"
r.negotiate_structured()
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("", ["base:allocation"]))
assert typ == REP_ACK and len(infos) == 1, (hex(typ), infos)
ctx_id = struct.unpack(">I", infos[0][1][:4])[0]
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
assert typ == REP_ACK, hex(typ)
assert Raw.parse_infos(infos)[INFO_EXPORT][1] & TFLAG_SEND_DF
rd = r.cmd(CMD_READ, 65536, 4096)
assert rd["structured"] and rd["error"] == 0 and rd["data"] == b"\x77" * 4096
bs = r.cmd(CMD_BLOCK_STATUS, 0, 65536)
assert bs["structured"] and bs["error"] == 0 and bs["context"] == ctx_id and bs["extents"], bs
assert sum(l for l, _ in bs["extents"]) <= 65536
r.disconnect()

# 3. STARTTLS twice on a session that negotiated nothing before: the second
# is refused with ERR_INVALID, and the client can still GO and do I/O.
r = Raw()
r.greet()
starttls(r)
typ, infos, _ = r.option(OPT_STARTTLS)
assert typ == REP_ERR_INVALID, f"second STARTTLS: {typ:#x}"
typ, infos, _ = r.option(OPT_STARTTLS)
assert typ == REP_ERR_INVALID, f"third STARTTLS: {typ:#x}"
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data(""))
assert typ == REP_ACK, hex(typ)
assert r.cmd(CMD_READ, 65536, 512)["data"] == b"\x77" * 512
r.disconnect()
print("state reset ok")
PYEOF

n=$(grep -cE "conn [0-9]+ .*TLS established: TLS1\.[23] X\.509" "$STRATA_LOG" || true)
[ "$n" = 3 ] || die "expected 3 'TLS established' log lines, got $n"
finish
