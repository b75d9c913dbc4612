#!/bin/bash
# Checks NBD_OPT_LIST: nbdinfo --list (and a raw NBD_OPT_LIST) name every export of a table with [a] [b] [c ro] sections, and each is reachable with its own size.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo

truncate -s 4M "$WORK/a.img"
cat >"$WORK/table" <<EOT
[a]
0 8192 file $WORK/a.img 0
[b]
0 4096 memory
[c ro]
0 2048 pattern
EOT
start_strata --table "$WORK/table"

nbdinfo --list --json "$(uri)" >"$WORK/list.json"
nbdinfo --list "$(uri)" >"$WORK/list.txt"
for n in a b c; do
  grep -q "export=\"$n\"" "$WORK/list.txt" || die "nbdinfo --list does not show export $n"
done

py <<'PYEOF'
import json, os
from nbd_raw import *
j = json.load(open(os.environ["WORK"] + "/list.json"))
got = {e["export-name"]: e for e in j["exports"]}
assert sorted(got) == ["a", "b", "c"], sorted(got)
assert got["a"]["export-size"] == 4 << 20, got["a"]["export-size"]
assert got["b"]["export-size"] == 2 << 20, got["b"]["export-size"]
assert got["c"]["export-size"] == 1 << 20, got["c"]["export-size"]
assert got["c"]["is_read_only"] is True
assert got["a"]["is_read_only"] is False

# The same through a raw NBD_OPT_LIST; the connection goes on afterwards.
r = Raw()
r.greet()
typ, infos, _ = r.option(OPT_LIST)
assert typ == REP_ACK, hex(typ)
names = []
for t, d in infos:
    assert t == REP_SERVER, t
    n = struct.unpack(">I", d[:4])[0]
    names.append(d[4:4 + n].decode())
assert sorted(names) == ["a", "b", "c"], names
# NBD_OPT_LIST with a payload is invalid, and the session survives it.
typ, _, _ = r.option(OPT_LIST, b"x")
assert typ == REP_ERR_INVALID, hex(typ)
r.negotiate_structured()
typ, infos, _ = r.option(OPT_GO, Raw.info_go_data("b"))
assert typ == REP_ACK, hex(typ)
size, _ = Raw.parse_infos(infos)[INFO_EXPORT]
assert size == 2 << 20, size
assert r.cmd(CMD_READ, 0, 512)["error"] == 0
r.disconnect()
print("list ok")
PYEOF

finish
