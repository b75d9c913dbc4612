#!/usr/bin/env python3
"""Turns peers.sh's Markdown rows into a side-by-side table with ratios to nbdkit.

CPU per million I/Os = server CPU seconds (utime+stime over the whole fio run:
ramp + runtime, ~runtime+2.3 s) / (IOPS * (runtime + ramp)) * 1e6, so the
ramp's I/O is counted too. Lower is better.
"""
import argparse
import re
import sys

ap = argparse.ArgumentParser()
ap.add_argument("table")
ap.add_argument("--runtime", type=float, default=8)
ap.add_argument("--ramp", type=float, default=2)
ap.add_argument("--reference", default="nbdkit-file")
args = ap.parse_args()

rows = {}
for line in open(args.table):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 10 or cells[0] in ("peer", "---") or cells[2] in ("IOPS", "---:"):
        continue
    peer, job = cells[0], re.sub(r" \(run \d+ of \d+\)", "", cells[1])
    def num(s):
        try:
            return float(s)
        except ValueError:
            return None
    iops, mibs, p99, cpu = num(cells[2]), num(cells[3]), num(cells[5]), num(cells[6])
    if iops is None:
        continue
    rows.setdefault(job, {}).setdefault(peer, (iops, mibs, p99, cpu))

peers = []
for j in rows.values():
    for p in j:
        if p not in peers:
            peers.append(p)

secs = args.runtime + args.ramp
print(f"| job | peer | IOPS | MiB/s | p99 µs | srv CPU s/M I/O | IOPS vs {args.reference} | CPU/IO vs {args.reference} |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for job, by_peer in rows.items():
    ref = by_peer.get(args.reference)
    for p in peers:
        if p not in by_peer:
            continue
        iops, mibs, p99, cpu = by_peer[p]
        cpu_mio = cpu / (iops * secs) * 1e6 if cpu is not None and iops else None
        r_iops = f"{iops / ref[0]:.2f}x" if ref and ref[0] else "-"
        if ref and cpu_mio is not None and ref[3] is not None and ref[0]:
            ref_mio = ref[3] / (ref[0] * secs) * 1e6
            r_cpu = f"{cpu_mio / ref_mio:.2f}x"
        else:
            r_cpu = "-"
        cm = f"{cpu_mio:.2f}" if cpu_mio is not None else "-"
        print(f"| {job} | {p} | {iops:.0f} | {mibs:.1f} | {p99:.0f} | {cm} | {r_iops} | {r_cpu} |")
