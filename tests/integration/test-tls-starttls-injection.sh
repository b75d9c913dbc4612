#!/bin/bash
# Plaintext injected after NBD_OPT_STARTTLS (sent in the same send() call) is refused: no ACK, the connection is closed (EOF), the server logs "plaintext bytes arrived after STARTTLS"; a TLS client connected meanwhile and new clients are unaffected (--tls=require and --tls=on).
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
source "$(dirname "$0")/tls-lib.sh"
requires psktool

KEYS=$WORK/keys.psk
make_psk "$KEYS" alice
truncate -s 8M "$WORK/disk.img"
export KEYS TURI="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$KEYS"

run_injection() { # mode
  start_strata --file "$WORK/disk.img" --tls="$1" --tls-psk "$KEYS"
  MODE=$1 py <<'PYEOF'
import os, socket, struct, nbd
from nbd_raw import *

REP_ERR_TLS_REQD = REP_ERR | 5
mode = os.environ["MODE"]

def tls_handle():
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(os.environ["TURI"])
    return h

def read_to_eof(r, timeout=5):
    """Everything the server sends until it closes; fails on a timeout."""
    r.s.settimeout(timeout)
    got = b""
    try:
        while True:
            c = r.s.recv(65536)
            if not c:
                return got
            got += c
    except ConnectionResetError:
        return got
    except socket.timeout:
        raise AssertionError(f"server did not close the connection (got {got!r})")

def opt(o, d=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(d)) + d

# A TLS client connected across the attacks.
other = tls_handle()
data = os.urandom(8192)
other.pwrite(data, 0)

# 1. STARTTLS and a plaintext GO in one send(): no ACK, EOF.
r = Raw()
r.greet()
r.send(opt(OPT_STARTTLS) + opt(OPT_GO, Raw.info_go_data("")))
got = read_to_eof(r)
assert got == b"", f"server answered STARTTLS followed by plaintext: {got!r}"
r.close()

# 2. Just a few injected bytes (less than an option header) are enough.
r = Raw()
r.greet()
r.send(opt(OPT_STARTTLS) + b"\x49\x48")
got = read_to_eof(r)
assert got == b"", f"server answered STARTTLS followed by 2 plaintext bytes: {got!r}"
r.close()

# 3. Options pipelined before STARTTLS are answered; STARTTLS is not ACKed.
r = Raw()
r.greet()
r.send(opt(OPT_LIST) + opt(OPT_STARTTLS) + opt(OPT_STRUCTURED_REPLY) + opt(OPT_GO, Raw.info_go_data("")))
if mode == "require":
    ropt, typ, _ = r.option_reply()
    assert ropt == OPT_LIST and typ == REP_ERR_TLS_REQD, (ropt, hex(typ))
else:
    # --tls=on: LIST is answered in plaintext (SERVER entries, then ACK).
    while True:
        ropt, typ, _ = r.option_reply()
        assert ropt == OPT_LIST, ropt
        if typ == REP_ACK:
            break
        assert typ == REP_SERVER, hex(typ)
got = read_to_eof(r)
assert got == b"", f"server answered STARTTLS followed by plaintext options: {got!r}"
r.close()

# 4. Control: STARTTLS alone is ACKed (the test above can fail for the right reason).
r = Raw()
r.greet()
r.send_option(OPT_STARTTLS)
ropt, typ, rdata = r.option_reply()
assert ropt == OPT_STARTTLS and typ == REP_ACK, (ropt, hex(typ))
r.close()

# The TLS client is unaffected, and new ones are served.
assert other.pread(8192, 0) == data
other.pwrite(data[::-1], 8192)
assert other.pread(8192, 8192) == data[::-1]
other.shutdown()
h = tls_handle()
assert h.pread(8192, 0) == data
h.shutdown()
print(mode, "injection refused")
PYEOF
  n=$(grep -cE "conn [0-9]+ .*plaintext bytes arrived after STARTTLS; closing" "$STRATA_LOG" || true)
  [ "$n" = 3 ] || die "--tls=$1: expected 3 'plaintext bytes arrived after STARTTLS' log lines, got $n"
  grep -qE "conn [0-9]+ .*2 plaintext bytes arrived after STARTTLS" "$STRATA_LOG" ||
    die "--tls=$1: the log does not say how many bytes were injected"
  finish
  : >"$STRATA_LOG"
}

run_injection require
run_injection on
