#!/bin/bash
# Hostile handshakes: an option announcing 4 GiB closes the connection at once (not read to the end); 1,100 options in one handshake are answered up to 1,024, then the connection is closed; an unknown 4,096-byte export name gets an error message of at most 4,096 bytes; an export name with a newline, a forged log prefix, escape codes, NUL and invalid UTF-8 reaches the log escaped (no forged line, no raw control or invalid byte). Another client is served throughout.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"

py <<'PYEOF'
import struct, time
from nbd_raw import *

# 1. A 4 GiB option: closed at once, not read until the handshake deadline.
r = Raw()
r.greet()
r.send_option(0x4242, b"x" * 100, length=0xFFFFFFFF)
t0 = time.monotonic()
assert r.wait_closed(3), "the server kept reading a 4 GiB option"
assert time.monotonic() - t0 < 3
r.close()
check_other_client()

# 2. Too many options: the first 1,024 answered, then the connection closed.
r = Raw()
r.greet()
try:
    r.send(struct.pack(">QII", IHAVEOPT, 0x4242, 0) * 1100)
except (BrokenPipeError, ConnectionResetError):
    pass  # closed while the last ones were still being sent
answered = 0
try:
    while True:
        opt, typ, _ = r.option_reply()
        assert typ == REP_ERR_UNSUP, hex(typ)
        answered += 1
except (Closed, ConnectionResetError):
    pass
assert answered == 1024, f"{answered} options answered"
r.close()
check_other_client()

# 3. An unknown 4,096-byte name: the error message is at most 4,096 bytes.
r = Raw()
r.greet()
for opt in (OPT_INFO, OPT_GO):
    typ, infos, msg = r.option(opt, Raw.info_go_data("n" * 4096))
    assert typ == REP_ERR_UNKNOWN, hex(typ)
    assert len(msg) <= 4096, f"error message of {len(msg)} bytes"
r.close()

# 4. A name that would forge a log line and drive a terminal.
evil = b"x\nstrata: error: forged\x1b[31mred\x00nul\xff\xfe"
r = Raw()
r.greet()
r.send_option(OPT_GO, struct.pack(">I", len(evil)) + evil + struct.pack(">H", 0))
opt, typ, _ = r.option_reply()
assert typ == REP_ERR_UNKNOWN, hex(typ)
r.send_option(OPT_EXPORT_NAME, evil)
assert r.wait_closed(5)
r.close()
check_other_client()
print("hostile options ok")
PYEOF

sleep 0.2
grep -a -q '^strata: error: forged' "$STRATA_LOG" && die "an export name forged a log line"
grep -a -q 'forged' "$STRATA_LOG" || die "the unknown export name was not logged at all"
LC_ALL=C grep -a -q -P '[\x00-\x08\x0b-\x1f\x7f]' "$STRATA_LOG" && die "a raw control byte reached the log"
iconv -f UTF-8 -t UTF-8 "$STRATA_LOG" >/dev/null 2>&1 || die "invalid UTF-8 reached the log"
grep -a -q 'x\\nstrata: error: forged\\x1b\[31mred\\x00nul\\xff\\xfe' "$STRATA_LOG" ||
  die "the export name is not in the log in escaped form: $(grep -a forged "$STRATA_LOG")"
LOG_ALLOW="unknown export .x\\\\nstrata: error: forged" # the escaped name itself
finish
