"""nfs_crash_check: count (not stop at) integrity failures of one round of the
NFS crash rig (bench/nfs-crash.sh), from the records of
tests/integration/nfs_crash_client.py's "run" and the server-side file.

  nfs_crash_check.py IMAGE OFFSET DEVSIZE TOTAL RECORDS BASELINE_OR_- SAVE

The client's own "check" (used by test-nfs-crash.sh) fails at the first
problems; this one applies the same rules but counts:

  lost          blocks whose last durable write (acknowledged with FUA, or
                acknowledged before a FLUSH that then succeeded) is missing:
                the block holds its baseline or an earlier write of the round
  never-written blocks holding neither their baseline nor a write issued to
                them (torn or foreign data, a write of another block/round)

and prints one line of key=value pairs: writes, acked, durable, fua (durable
by FUA), failed (failed writes + flushes), pending (never completed), lost,
lost_writes (durable writes whose data is gone: for each lost block, the
durable writes to it later than its content), never_written, maxlat_ms
(slowest completed request), outside (bytes around the device untouched:
ok/changed), final_flush (ok/failed).  The first lost blocks are described on
stderr.  Saves the device's content in SAVE (the next round's baseline).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from nfs_crash_client import BS, init_block, parse_write  # noqa: E402


def main():
    image, offset, devsize, total, records, baseline, save = sys.argv[1:8]
    offset, devsize, total = int(offset), int(devsize), int(total)
    r = json.load(open(records))
    seed, writes, flushes = r["seed"], r["writes"], r["flushes"]

    data = open(image, "rb").read()
    outside = "ok"
    if (len(data) != total or data[:offset] != b"\x5e" * offset
            or data[offset + devsize:total] != b"\x5e" * (total - offset - devsize)):
        outside = "changed"
    dev = data[offset:offset + devsize].ljust(devsize, b"\0")
    base = open(baseline, "rb").read() if baseline != "-" else None

    issued = {}        # block -> set of seqs
    durable = {}       # block -> sorted seqs of durable writes
    for w in writes:
        issued.setdefault(w["block"], set()).add(w["seq"])
        if w["durable"]:
            durable.setdefault(w["block"], []).append(w["seq"])

    lost = lost_writes = never = 0
    shown = 0
    for b in range(devsize // BS):
        got = dev[b * BS:(b + 1) * BS]
        old = base[b * BS:(b + 1) * BS] if base is not None else init_block(b)
        pw = parse_write(got)
        if got == old:
            have = 0          # the baseline: older than any write of the round
        elif pw is not None and pw[2] == seed and pw[0] == b and pw[1] in issued.get(b, ()):
            have = pw[1]
        else:
            never += 1
            continue
        d = durable.get(b)
        if d and have < d[-1]:
            lost += 1
            lost_writes += sum(s > have for s in d)
            if shown < 5:
                shown += 1
                held = "its old content" if have == 0 else f"write #{have}"
                print(f"lost: block {b}: write #{d[-1]} was durable, the block holds {held}",
                      file=sys.stderr)

    done = [x for x in writes + flushes if x["t1"] is not None]
    maxlat = max((x["t1"] - x["t0"] for x in done), default=0)
    failed = sum(x["result"] not in ("ok", "pending") for x in writes + flushes)
    pending = sum(x["result"] == "pending" for x in writes + flushes)
    print(f"writes={len(writes)} acked={sum(w['result'] == 'ok' for w in writes)} "
          f"durable={sum(w['durable'] for w in writes)} fua={sum(w['durable'] and w['fua'] for w in writes)} "
          f"failed={failed} pending={pending} lost={lost} lost_writes={lost_writes} never_written={never} "
          f"maxlat_ms={maxlat:.0f} outside={outside} final_flush={'ok' if r['final_flush_ok'] else 'failed'}")
    with open(save, "wb") as f:
        f.write(dev)


if __name__ == "__main__":
    main()
