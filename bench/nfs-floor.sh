#!/usr/bin/env bash
# bench/nfs-floor.sh: the CPU floor of a 1 MiB write through any user-space
# NBD-to-NFS server on this machine (bench/relay-floor.c: Unix socket in,
# loopback TCP out, nothing else), each mode ROUNDS times, as a Markdown
# table. Compare with the per-write CPU bench/nfs.sh reports for strata and
# qemu-nbd on seqwrite-1m-qd8 (bench/RESULTS.md, section 8).
#
#   bench/nfs-floor.sh [--rounds N] [--mib N]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=3
MIB=4096
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --mib) MIB=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BIN=$(mktemp -d)/relay-floor
trap 'rm -rf "$(dirname "$BIN")"' EXIT
cc -O2 -Wall -Werror -o "$BIN" "$HERE/relay-floor.c"
echo "| mode | MiB | relay CPU ms per MiB | MiB/s |"
echo "|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  for m in copy copy+retain copy+stream splice splice+tee; do "$BIN" "$m" "$MIB"; done
done
