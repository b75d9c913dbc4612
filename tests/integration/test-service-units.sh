#!/usr/bin/env bash
# test-service-units.sh: the systemd units of packaging/systemd pass `systemd-analyze verify` with no output at
# all (no warning, no unknown key), offline, in a scratch root holding the units as a package installs them
# (systemd need not be PID 1); the service is hardened to an exposure of at most 2.0 by `systemd-analyze
# security`; tmpfiles.d creates /run/strata and /var/lib/strata as 0700 directories; the sockets are named as
# strata expects (nbd, control) and point at strata.service.
source "$(dirname "$0")/functions.sh"
requires systemd-analyze systemd-tmpfiles
P=$STRATA_SRC/packaging/systemd
R=$WORK/root
mkdir -p "$R/usr/bin" "$R/bin" "$R/usr/lib/systemd" "$R/etc/systemd/system" "$R/usr/lib/tmpfiles.d"
# The system's own units (targets the units name), kill for ExecReload, strata where ExecStart has it.
cp -a /usr/lib/systemd/system "$R/usr/lib/systemd/"
cp "$(type -P kill)" "$R/bin/kill"
cp "$STRATA" "$R/usr/bin/strata"
units=(strata.service strata.socket strata-control.socket)
for u in "${units[@]}"; do cp "$P/$u" "$R/usr/lib/systemd/system/$u"; done
cp "$P/strata.tmpfiles" "$R/usr/lib/tmpfiles.d/strata.conf"

paths=()
for u in "${units[@]}"; do paths+=("/usr/lib/systemd/system/$u"); done
# --man=no: the man page is checked by the package build, not here.
out=$(systemd-analyze verify --man=no --root="$R" "${paths[@]}" 2>&1) || die "verify failed: $out"
[ -z "$out" ] || die "systemd-analyze verify printed: $out"

# The check catches what it should: a unit with an unknown key is reported.
cp "$R/usr/lib/systemd/system/strata.socket" "$WORK/saved"
echo "ListenStreem=1" >>"$R/usr/lib/systemd/system/strata.socket"
out=$(systemd-analyze verify --man=no --root="$R" /usr/lib/systemd/system/strata.socket 2>&1) || true
grep -q "Unknown key" <<<"$out" || die "verify did not report an unknown key: $out"
cp "$WORK/saved" "$R/usr/lib/systemd/system/strata.socket"

sec=$(systemd-analyze security --offline=yes --root="$R" strata.service 2>&1 | grep 'Overall exposure level') ||
  die "systemd-analyze security gave no level"
level=$(sed -E 's/.*: ([0-9.]+).*/\1/' <<<"$sec")
awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || die "exposure $level > 2.0: $sec"

systemd-tmpfiles --create --root="$R"   # reads $R/usr/lib/tmpfiles.d: only strata.conf
for d in run/strata var/lib/strata; do
  [ "$(stat -c %a "$R/$d")" = 700 ] || die "/$d: mode $(stat -c %a "$R/$d")"
done

# What strata reads from the environment: the names of the sockets, and the service they start.
grep -qx 'FileDescriptorName=nbd' "$P/strata.socket" || die "strata.socket: no FileDescriptorName=nbd"
grep -qx 'FileDescriptorName=control' "$P/strata-control.socket" || die "strata-control.socket: no name control"
grep -qx 'Type=notify' "$P/strata.service" || die "strata.service is not Type=notify"
# The ExecStart of the unit parses: the same options, without a table, are accepted by this strata.
exec_start=$(sed -n 's|^ExecStart=/usr/bin/strata ||p' "$P/strata.service")
[ -n "$exec_start" ] || die "no ExecStart=/usr/bin/strata"
# shellcheck disable=SC2086
"$STRATA" ${exec_start/--table \/etc\/strata\/strata.conf/--help-targets} >/dev/null ||
  die "strata rejects the unit's options: $exec_start"
