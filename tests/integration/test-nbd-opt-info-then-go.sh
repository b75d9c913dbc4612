#!/bin/bash
# Checks NBD_OPT_INFO followed by NBD_OPT_GO on one connection: INFO describes an export without entering transmission, and a later GO (to the same or another export) starts transmission with that export's size and flags.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/a.img"
cat >"$WORK/table" <<EOT
[a]
0 8192 file $WORK/a.img 0
[b ro]
0 2048 memory
EOT
start_strata --table "$WORK/table"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

# libnbd in option mode: info on b, info on a, then go to a.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(os.environ["SOCK"])
h.set_export_name("b")
h.opt_info()
assert h.get_size() == 1 << 20, h.get_size()
assert h.is_read_only() is True
h.set_export_name("a")
h.opt_info()
assert h.get_size() == 4 << 20, h.get_size()
assert h.is_read_only() is False
assert h.aio_is_negotiating(), "NBD_OPT_INFO left option mode"
h.opt_go()
assert h.aio_is_ready(), "NBD_OPT_GO did not start transmission"
assert h.get_size() == 4 << 20
data = os.urandom(8192)
h.pwrite(data, 4096)
assert h.pread(8192, 4096) == data
h.shutdown()

# Raw: INFO replies (export info, the name asked for, block sizes) then ACK,
# the session stays in option haggling, and GO works after it.
r = Raw()
r.greet()
r.negotiate_structured()
typ, infos, _ = r.option(OPT_INFO, Raw.info_go_data("b", [INFO_NAME, INFO_BLOCK_SIZE]))
assert typ == REP_ACK, hex(typ)
i = Raw.parse_infos(infos)
size, flags = i[INFO_EXPORT]
assert size == 1 << 20, size
assert flags & TFLAG_HAS_FLAGS and flags & TFLAG_READ_ONLY, hex(flags)
assert i[INFO_NAME] == "b", i.get(INFO_NAME)
assert i[INFO_BLOCK_SIZE] == (1, 4096, 32 << 20), i[INFO_BLOCK_SIZE]
# A malformed INFO (length fields inconsistent) is ERR_INVALID, not fatal.
typ, _, _ = r.option(OPT_INFO, struct.pack(">I", 100) + b"a" + struct.pack(">H", 0))
assert typ == REP_ERR_INVALID, hex(typ)
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data("a"))
assert typ == REP_ACK, hex(typ)
size, flags = Raw.parse_infos(infos)[INFO_EXPORT]
assert size == 4 << 20 and not flags & TFLAG_READ_ONLY, (size, hex(flags))
rd = r.cmd(CMD_READ, 4096, 8192)
assert rd["error"] == 0 and rd["data"] == data, "raw client after INFO+GO read other data"
r.disconnect()
print("info then go ok")
PYEOF

finish
