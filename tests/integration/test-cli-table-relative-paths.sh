#!/bin/bash
# strata create/reload --table FILE: the table's relative paths name files beside the table, wherever the CLI and
# the server run (the server here runs in another directory, and both working directories hold decoys of the same
# names); --table - (stdin): relative to the CLI's working directory, not the server's.
source "$(dirname "$0")/functions.sh"
requires jq
T=$WORK/tables SRV=$WORK/srv CLI=$WORK/cli
mkdir -p "$T/img" "$SRV/img" "$CLI/img"
for d in "$T" "$SRV" "$CLI"; do
  for f in a b; do head -c 1048576 /dev/urandom >"$d/img/$f.img"; done
done
echo "0 2048 file img/a.img 0" >"$T/one.conf"
echo "0 2048 file img/b.img 0" >"$T/two.conf"

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

cd "$SRV"
start_strata --empty
cd "$CLI"
ctl create a --table ../tables/one.conf
[ "$(ctl table a)" = "0 2048 file $T/img/a.img 0" ] || die "create: $(ctl table a)"
same_as a "$T/img/a.img"

ctl reload a --table ../tables/two.conf
ctl resume a
[ "$(ctl table a)" = "0 2048 file $T/img/b.img 0" ] || die "reload: $(ctl table a)"
same_as a "$T/img/b.img"

# stdin: the CLI's working directory.
echo "0 2048 file img/a.img 0" | ctl create s --table -
[ "$(ctl table s)" = "0 2048 file $CLI/img/a.img 0" ] || die "stdin create: $(ctl table s)"
same_as s "$CLI/img/a.img"
echo "0 2048 file ./img/b.img 0" | ctl reload s --table -
ctl resume s
[ "$(ctl table s)" = "0 2048 file $CLI/img/b.img 0" ] || die "stdin reload: $(ctl table s)"
same_as s "$CLI/img/b.img"

# An absolute path is kept as it is.
echo "0 2048 file $SRV/img/a.img 0" | ctl create abs --table -
[ "$(ctl table abs)" = "0 2048 file $SRV/img/a.img 0" ] || die "absolute: $(ctl table abs)"
same_as abs "$SRV/img/a.img"
cd "$WORK"
stop_strata
echo PASS
