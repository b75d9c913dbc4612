#!/bin/bash
# Checks old-style NBD_OPT_EXPORT_NAME: the server answers with size + transmission flags (plus 124 zero bytes unless NO_ZEROES was negotiated), enters transmission with simple replies, and an unknown name ends the session.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/a.img"
printf 'hello export name' | dd of="$WORK/a.img" conv=notrunc status=none
cat >"$WORK/table" <<EOT
[a]
0 8192 file $WORK/a.img 0
[b ro]
0 2048 memory
EOT
start_strata --table "$WORK/table"

py <<'PYEOF'
from nbd_raw import *

# With NO_ZEROES: exactly 10 bytes, then transmission.
r = Raw()
r.greet(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
r.send_option(OPT_EXPORT_NAME, b"a")
size, flags = struct.unpack(">QH", r.recvn(10))
assert size == 4 << 20, size
assert flags & TFLAG_HAS_FLAGS and not flags & TFLAG_READ_ONLY, hex(flags)
assert flags & TFLAG_SEND_FLUSH and flags & TFLAG_SEND_TRIM, hex(flags)
assert not flags & TFLAG_SEND_DF, "DF advertised without structured replies"
rd = r.cmd(CMD_READ, 0, 17)
assert not rd["structured"], "structured reply without negotiation"
assert rd["error"] == 0 and rd["data"] == b"hello export name", rd
wr = r.cmd(CMD_WRITE, 4096, 512, payload=b"\x5a" * 512)
assert wr["error"] == 0, wr
assert r.cmd(CMD_READ, 4096, 512)["data"] == b"\x5a" * 512
r.disconnect()

# Without NO_ZEROES: 8 + 2 + 124 zero bytes; the first request still parses.
r = Raw()
r.greet(FLAG_FIXED_NEWSTYLE)
r.send_option(OPT_EXPORT_NAME, b"b")
reply = r.recvn(134)
size, flags = struct.unpack(">QH", reply[:10])
assert size == 1 << 20, size
assert flags & TFLAG_READ_ONLY, hex(flags)
assert reply[10:] == bytes(124), "the 124 reserved bytes are not zero"
rd = r.cmd(CMD_READ, 0, 512)
assert rd["error"] == 0 and rd["data"] == bytes(512), rd
r.disconnect()

# Options before EXPORT_NAME are honoured (structured replies for reads).
r = Raw()
r.greet()
r.negotiate_structured()
r.send_option(OPT_EXPORT_NAME, b"a")
size, flags = struct.unpack(">QH", r.recvn(10))
assert flags & TFLAG_SEND_DF, hex(flags)
rd = r.cmd(CMD_READ, 0, 17)
assert rd["structured"] and rd["data"] == b"hello export name", rd
r.disconnect()

# Unknown export: the server has no way to say so but to close.
r = Raw()
r.greet()
r.send_option(OPT_EXPORT_NAME, b"nosuch")
assert r.wait_closed(5), "session still open after EXPORT_NAME of an unknown export"

check_other_client("a")
print("export name ok")
PYEOF

finish
