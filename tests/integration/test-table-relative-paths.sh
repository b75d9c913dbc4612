#!/bin/bash
# Relative paths in a --table file name files beside the table (as config formats do), not in strata's working
# directory: file paths (plain, ./sub, ../up) and a cow stack's top layer, the table itself named relatively, the
# server started from another directory that holds decoys of the same names; the SIGHUP re-read and an offline
# strata flatten --table resolve the same way; strata table and dump print the resolved (absolute) paths.
source "$(dirname "$0")/functions.sh"
requires jq
C=$WORK/conf RUN=$WORK/run/x
mkdir -p "$C/data" "$C/layers" "$RUN/data" "$RUN/layers"
for f in "$C/disk.img" "$C/data/sub.img" "$WORK/up.img" "$C/base.img" "$C/disk2.img" "$C/new.img"; do
  head -c 1048576 /dev/urandom >"$f"
done
# Decoys where the old rule (the working directory) would look.
for f in "$RUN/disk.img" "$RUN/data/sub.img" "$WORK/run/up.img" "$RUN/base.img" "$RUN/disk2.img" "$RUN/new.img"; do
  head -c 1048576 /dev/urandom >"$f"
done
"$STRATA" layer create "$C/layers/top.layer" --size 1M >/dev/null
"$STRATA" layer create "$RUN/layers/top.layer" --size 1M >/dev/null
cat >"$C/t.conf" <<EOT
[plain]
0 2048 file disk.img 0
[sub]
0 2048 file ./data/sub.img 0
[up]
0 2048 file ../up.img 0
[base]
0 2048 file base.img 0 ro
[c]
0 2048 cow layers/top.layer base=base
EOT

# same_as EXPORT FILE: the export reads as the file.
same_as() {
  $PYTHON - "$(uri "$1")" "$2" <<'PY' || die "export $1 does not read as $2"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
want = open(sys.argv[2], "rb").read()
assert h.get_size() == len(want)
assert h.pread(len(want), 0) == want
PY
}

cd "$RUN"
start_strata --table ../../conf/t.conf
cd "$WORK"
[ "$(ctl table plain)" = "0 2048 file $C/disk.img 0" ] || die "plain: $(ctl table plain)"
[ "$(ctl table sub)" = "0 2048 file $C/data/sub.img 0" ] || die "sub: $(ctl table sub)"
[ "$(ctl table up)" = "0 2048 file $C/../up.img 0" ] || die "up: $(ctl table up)"
[ "$(ctl table c)" = "0 2048 cow $C/layers/top.layer base=base" ] || die "c: $(ctl table c)"
same_as plain "$C/disk.img"
same_as sub "$C/data/sub.img"
same_as up "$WORK/up.img"
same_as c "$C/base.img"
[ "$(ctl status c --json | jq -r '.[0].segments[0].layers[0].path')" = "$C/layers/top.layer" ] ||
  die "status c: $(ctl status c --json)"

# SIGHUP re-reads the table: its new relative paths resolve beside it too.
cat >"$C/t.conf" <<EOT
[plain]
0 2048 file disk2.img 0
[sub]
0 2048 file ./data/sub.img 0
[up]
0 2048 file ../up.img 0
[base]
0 2048 file base.img 0 ro
[c]
0 2048 cow layers/top.layer base=base
[new]
0 2048 file new.img 0
EOT
n=$(grep -c "SIGHUP" "$STRATA_LOG" || true)
kill -HUP "$STRATA_PID"
for i in $(seq 1 100); do
  [ "$(grep -c "SIGHUP" "$STRATA_LOG" || true)" -gt "$n" ] && break
  sleep 0.05
done
tail -1 "$STRATA_LOG" | grep -q '"created":\["new"\].*"reloaded":\["plain"\]' || die "SIGHUP: $(tail -3 "$STRATA_LOG")"
[ "$(ctl table plain)" = "0 2048 file $C/disk2.img 0" ] || die "plain after SIGHUP: $(ctl table plain)"
[ "$(ctl table new)" = "0 2048 file $C/new.img 0" ] || die "new after SIGHUP: $(ctl table new)"
same_as plain "$C/disk2.img"
same_as new "$C/new.img"
same_as sub "$C/data/sub.img"

# strata dump prints absolute paths: the dump loads from anywhere.
ctl dump >"$WORK/run/dump.conf"
grep -q "file $C/disk2.img 0" "$WORK/run/dump.conf" || die "dump: $(cat "$WORK/run/dump.conf")"
stop_strata

# strata flatten --table (offline, no server) reads the table the same way.
cd "$RUN"
"$STRATA" flatten plain --to "$WORK/flat.raw" --table ../../conf/t.conf >/dev/null
cd "$WORK"
cmp "$WORK/flat.raw" "$C/disk2.img" || die "offline flatten did not read the file beside the table"
echo PASS
