#!/usr/bin/env bash
# The lock contracts (GUARDED_BY, REQUIRES, EXCLUDES: src/core/thread_annotations.h)
# checked by clang's -Wthread-safety on every source file; any warning fails.
# g++ builds the product; clang only reads it here (-fsyntax-only), using the
# std::expected subset of src/core/result.h that clang 14 needs.
#
#   scripts/check-thread-safety.sh [BUILD_DIR]   (default build/: its generated/ headers)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build}" && pwd)
CXX=${CLANGXX:-clang++-14}
command -v "$CXX" >/dev/null || { echo "check-thread-safety: $CXX not found (scripts/install-deps.sh)" >&2; exit 1; }
cd "$SRC"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
find src -name '*.cc' -print0 | sort -z |
  xargs -0 -P "$(nproc)" -n 4 "$CXX" -std=c++2b -fsyntax-only -D_GNU_SOURCE -I src -I "$BUILD/generated" \
    -Wthread-safety -Werror=thread-safety -Wno-unknown-warning-option >"$log" 2>&1 || rc=$?
cat "$log"
n=$(find src -name '*.cc' | wc -l)
if [ $rc -ne 0 ] || grep -q 'warning:\|error:' "$log"; then
  echo "check-thread-safety: FAILED ($n files)" >&2
  exit 1
fi
echo "check-thread-safety: $n files, no warning"
