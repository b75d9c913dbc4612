#!/bin/bash
# Checks NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: listing offers base:allocation (all, by "base:", none for an unknown namespace), SET selects it so block status works, and SET is refused without structured replies, tied to its export, and (even when it fails) replaces the earlier selection.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-lib.sh"

truncate -s 4M "$WORK/a.img"
cat >"$WORK/table" <<EOT
[a]
0 8192 file $WORK/a.img 0
[b]
0 2048 memory
EOT
start_strata --table "$WORK/table"

py <<'PYEOF'
import os, nbd
from nbd_raw import *

def listed(queries):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_export_name("a")
    for q in queries:
        h.add_meta_context(q)
    h.connect_unix(os.environ["SOCK"])
    got = []
    n = h.opt_list_meta_context(lambda name: got.append(name))
    assert n == len(got), (n, got)
    h.opt_abort()
    return got

assert listed([]) == ["base:allocation"], listed([])
assert listed(["base:"]) == ["base:allocation"], listed(["base:"])
assert listed(["base:allocation"]) == ["base:allocation"]
assert listed(["x-nosuch:thing"]) == [], listed(["x-nosuch:thing"])

# libnbd: with the context requested, block status works; without, the
# context is not negotiated.
h = handle("a", meta=True)
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
seen = []
h.block_status(1 << 20, 0, lambda ctx, off, ents, err: seen.append((ctx, off, list(ents))))
assert seen and seen[0][0] == "base:allocation", seen
assert sum(seen[0][2][0::2]) == 1 << 20, seen
h.shutdown()
h = handle("a", meta=False)
assert not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.shutdown()

# Raw: the reply to SET carries an id, and block status replies use it.
r = Raw()
r.greet()
typ, _, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", ["base:allocation"]))
assert typ == REP_ERR_INVALID, f"SET_META_CONTEXT before structured replies: {typ:#x}"
r.negotiate_structured()
typ, infos, _ = r.option(OPT_LIST_META_CONTEXT, Raw.meta_data("nosuch", []))
assert typ & REP_ERR, f"LIST_META_CONTEXT on an unknown export: {typ:#x}"
# Truncated query: syntactically invalid -> ERR_INVALID, session goes on.
bad = Raw.meta_data("a", ["base:allocation"])[:-3]
typ, _, _ = r.option(OPT_LIST_META_CONTEXT, bad)
assert typ == REP_ERR_INVALID, hex(typ)
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", ["x-foo:bar", "base:allocation"]))
assert typ == REP_ACK, hex(typ)
assert len(infos) == 1 and infos[0][0] == REP_META_CONTEXT, infos
ctx_id = struct.unpack(">I", infos[0][1][:4])[0]
assert infos[0][1][4:] == b"base:allocation", infos
typ, _, _ = r.option(OPT_GO, Raw.info_go_data("a"))
assert typ == REP_ACK
bs = r.cmd(CMD_BLOCK_STATUS, 0, 1 << 20)
assert bs["error"] == 0, bs
assert bs["context"] == ctx_id, (bs["context"], ctx_id)
assert sum(l for l, f in bs["extents"]) == 1 << 20, bs["extents"]
r.disconnect()

# SET for export a, then GO to export b: the context is not valid for b.
r = Raw()
r.greet()
r.negotiate_structured()
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", ["base:allocation"]))
assert typ == REP_ACK and len(infos) == 1
typ, _, _ = r.option(OPT_GO, Raw.info_go_data("b"))
assert typ == REP_ACK
bs = r.cmd(CMD_BLOCK_STATUS, 0, 4096)
assert bs["error"] == EINVAL, f"block status with a context set for another export: {bs}"
assert r.cmd(CMD_READ, 0, 512)["error"] == 0
r.disconnect()

# A later SET that selects nothing replaces the earlier selection.
r = Raw()
r.greet()
r.negotiate_structured()
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", ["base:allocation"]))
assert typ == REP_ACK and len(infos) == 1
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", []))
assert typ == REP_ACK and infos == [], (hex(typ), infos)
typ, _, _ = r.option(OPT_GO, Raw.info_go_data("a"))
bs = r.cmd(CMD_BLOCK_STATUS, 0, 4096)
assert bs["error"] == EINVAL, f"block status after SET selected nothing: {bs}"
r.disconnect()

# A SET that fails also replaces the earlier selection (proto.md: "including
# when this command fails").
r = Raw()
r.greet()
r.negotiate_structured()
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", ["base:allocation"]))
assert typ == REP_ACK and len(infos) == 1
typ, infos, _ = r.option(OPT_SET_META_CONTEXT, Raw.meta_data("a", ["base:allocation"])[:-2])
assert typ == REP_ERR_INVALID, hex(typ)
typ, _, _ = r.option(OPT_GO, Raw.info_go_data("a"))
bs = r.cmd(CMD_BLOCK_STATUS, 0, 4096)
assert bs["error"] == EINVAL, f"block status after a failed SET_META_CONTEXT: {bs}"
r.disconnect()
print("meta context ok")
PYEOF

finish
