#!/usr/bin/env bash
# test-service-journal-log.sh: when stderr is the journal (JOURNAL_STREAM names the device and inode of stderr,
# as systemd sets it), every log line starts with its sd-daemon priority (<6> info, <4> warning, <3> error) and
# has no timestamp; otherwise lines start with a UTC timestamp. Either way a client's export name is escaped: a
# newline in it cannot start a line (nor a priority) of its own.
source "$(dirname "$0")/functions.sh"
requires stat
head -c 1M /dev/zero >"$WORK/disk.img"
cat >"$WORK/t.conf" <<EOT
[disk]
0 2048 file $WORK/disk.img 0
EOT
# A client asks for an export whose name forges a line: "nope\n<0>forged".
forge() {
  PYTHONPATH=$STRATA_SRC/tests/integration SOCK=$SOCK $PYTHON -c 'from nbd_raw import *
r = Raw()
r.greet()
r.send_option(OPT_EXPORT_NAME, b"nope\n<0>forged\n2026-01-01T00:00:00.000Z strata: error: forged")
assert r.wait_closed(5)
r.close()'
}

# Journal: stderr is $STRATA_LOG and JOURNAL_STREAM names it.
: >"$STRATA_LOG"
JOURNAL_STREAM=$(stat -c '%d:%i' "$STRATA_LOG") start_strata --table "$WORK/t.conf" --tcp "0.0.0.0:$((20000 + RANDOM % 20000))"
forge
stop_strata
# The warning for a non-loopback listener, the info lines, the refused export.
grep -q '^<4>--tcp 0.0.0.0:' "$STRATA_LOG" || die "no <4> warning: $(cat "$STRATA_LOG")"
grep -q '^<6>' "$STRATA_LOG" || die "no <6> info line: $(cat "$STRATA_LOG")"
grep -q 'nope\\n<0>forged' "$STRATA_LOG" || die "the export name is not in the log, escaped: $(cat "$STRATA_LOG")"
# Every line the logger wrote has a priority; only the server's own stdout lines (strata: export ...) do not.
if grep -vE '^<[3467]>' "$STRATA_LOG" | grep -v '^strata: ' >&2; then die "log lines without a priority (above)"; fi
if grep -E '^<[0-7]>.*forged' "$STRATA_LOG" | grep -vq 'nope\\n'; then die "a forged line"; fi
if grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$STRATA_LOG"; then die "a timestamp in journal mode"; fi

# Not the journal: JOURNAL_STREAM names another file (stderr redirected since).
: >"$STRATA_LOG"
JOURNAL_STREAM=$(stat -c '%d:%i' "$WORK/disk.img") start_strata --table "$WORK/t.conf"
forge
stop_strata
grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z strata: info: ' "$STRATA_LOG" ||
  die "no timestamped info line: $(cat "$STRATA_LOG")"
if grep -qE '^<[0-7]>' "$STRATA_LOG"; then die "a priority prefix outside the journal"; fi
if grep -E '^(<0>|2026-01-01T).*forged' "$STRATA_LOG" >&2; then die "a forged line (above)"; fi
