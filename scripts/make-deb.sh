#!/usr/bin/env bash
# make deb: builds the Debian package (debian/) from a copy of the work tree in
# $OUT/src (default build/deb), with dpkg-buildpackage; the .deb files land in
# $OUT. STRATA_PREBUILT=DIR packages DIR/strata instead of compiling (the
# packaging test, which has just built it). Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-build/deb}")
version=$(dpkg-parsechangelog -S Version)
rm -rf "$OUT"
mkdir -p "$OUT/src/strata-${version%-*}"
src=$OUT/src/strata-${version%-*}
# The files git knows (committed or not), without build output.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || [ -L "$f" ] || continue   # deleted, not yet committed
  mkdir -p "$src/$(dirname "$f")"
  cp -a "$f" "$src/$f"
done
if [ -n "${STRATA_PREBUILT:-}" ]; then export STRATA_PREBUILT=$(realpath "$STRATA_PREBUILT"); fi
(cd "$src" && dpkg-buildpackage -us -uc -b >"$OUT/build.log" 2>&1) || {
  tail -40 "$OUT/build.log" >&2
  echo "make deb: dpkg-buildpackage failed (log: $OUT/build.log)" >&2
  exit 1
}
mv "$OUT"/src/*.deb "$OUT"/src/*.changes "$OUT"/src/*.buildinfo "$OUT"/
ls "$OUT"/strata_*.deb
