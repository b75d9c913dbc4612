#!/usr/bin/env bash
# test-package-deb.sh: `make deb` (scripts/make-deb.sh, debhelper) makes a package holding the binary, the
# systemd units, tmpfiles.d, both man pages, the bash completion and the docs, depending on the libraries the
# binary links (libsystemd, libmicrohttpd...), with no lintian error; the binary in it runs. The package is made
# from the strata this test run built (STRATA_PREBUILT), so no second compile; `make deb` compiles from source.
source "$(dirname "$0")/functions.sh"
requires dpkg-buildpackage dh lintian dpkg-deb pandoc
deb=$(STRATA_PREBUILT=$(dirname "$STRATA") OUT=$WORK/deb bash "$STRATA_SRC/scripts/make-deb.sh") || die "make deb failed"
[ -f "$deb" ] || die "no package: $deb"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$WORK/contents"
for f in /usr/bin/strata /lib/systemd/system/strata.service /lib/systemd/system/strata.socket \
  /lib/systemd/system/strata-control.socket /usr/lib/tmpfiles.d/strata.conf /usr/share/man/man1/strata.1.gz \
  /usr/share/man/man5/strata-targets.5.gz /usr/share/bash-completion/completions/strata \
  /usr/share/doc/strata/copyright /usr/share/doc/strata/README.md.gz /usr/share/doc/strata/service.md.gz \
  /usr/share/doc/strata/metrics.md.gz; do
  grep -qx "$f" "$WORK/contents" || die "the package lacks $f: $(cat "$WORK/contents")"
done
# dh_compress compresses a doc over 4 KiB: a target page is there either way.
for f in /usr/share/doc/strata/targets/cow.md /usr/share/doc/strata/targets/file.md; do
  grep -qxE "$f(\.gz)?" "$WORK/contents" || die "the package lacks $f(.gz): $(cat "$WORK/contents")"
done
deps=$(dpkg-deb -f "$deb" Depends)
for lib in libsystemd0 libmicrohttpd12 liburing2 libgnutls30; do
  grep -q "$lib" <<<"$deps" || die "Depends lacks $lib: $deps"
done
# Units are installed, neither started nor enabled on a first install (only re-enabled on upgrade if they were):
# nothing listens before the table is written.
dpkg-deb -e "$deb" "$WORK/ctrl"
if grep -qE 'deb-systemd-invoke|systemctl .*(start|restart)' "$WORK/ctrl/postinst"; then
  die "postinst starts a unit: $(cat "$WORK/ctrl/postinst")"
fi
awk '/deb-systemd-helper enable/ && prev !~ /was-enabled/ { bad = 1 } NF && $1 !~ /^#/ { prev = $0 } END { exit bad }' \
  "$WORK/ctrl/postinst" || die "postinst enables a unit unconditionally: $(cat "$WORK/ctrl/postinst")"
lintian --no-tag-display-limit "$deb" >"$WORK/lintian" 2>&1 || true
if grep -E '^E: ' "$WORK/lintian" >&2; then die "lintian errors (above)"; fi
dpkg-deb -x "$deb" "$WORK/root"
# The license: BSD-3-Clause, in DEP-5 form with its text, as LICENSE says.
C=$WORK/root/usr/share/doc/strata/copyright
grep -qx 'License: BSD-3-Clause' "$C" || die "copyright does not name BSD-3-Clause: $(cat "$C")"
grep -q 'Neither the name of the copyright holder' "$C" || die "copyright lacks the license text"
grep -qi 'unlicensed' "$C" && die "copyright still says unlicensed"
grep -q 'Copyright (c) 2026, The strata authors' "$STRATA_SRC/LICENSE" || die "LICENSE lacks the copyright line"
"$WORK/root/usr/bin/strata" --version | grep -q '^strata 0\.' || die "the packaged binary does not run"
zcat "$WORK/root/usr/share/man/man1/strata.1.gz" | grep -q '^\.SH SYNOPSIS' || die "strata.1 is not a man page"
