#!/usr/bin/env bash
# The tests under AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer
# at every exit): build-asan/ (-DSTRATA_SANITIZE=ON, Debug), then ctest.
#
#   scripts/asan.sh all    every test (make asan)
#   scripts/asan.sh ci     the unit tests and the integration tests of $ASAN_CI_TESTS:
#                          those that drive the parsers and the NBD server and take little
#                          time (make asan-ci, run by CI; docs/fuzzing.md)
#   scripts/asan.sh only REGEX   the tests whose names match REGEX
#
# A finding fails: the first error stops the process (halt_on_error) with
# exit code 86, and every report is also written under
# build-asan/sanitizer-reports/, so a finding in a server that a test kills,
# or whose exit status it does not look at, still fails the run.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
B=${ASAN_BUILD:-$SRC/build-asan}

# Chosen for what they drive and their time under ASan (docs/fuzzing.md):
# option haggling and hostile options, export names, request parsing, reply
# modes, STARTTLS and TLS, PSK files, table and control-request parsing, the
# memory budget.
ASAN_CI_TESTS=(
  unit_tests
  test-nbd-hostile-options
  test-nbd-option-too-big
  test-nbd-export-name-option
  test-nbd-handshake-info
  test-nbd-opt-info-then-go
  test-nbd-meta-context
  test-nbd-bad-request-magic
  test-nbd-unknown-command
  test-nbd-unknown-flags
  test-nbd-read-too-large
  test-nbd-write-too-large
  test-nbd-zero-length-requests
  test-nbd-out-of-range
  test-nbd-reply-modes
  test-nbd-abrupt-disconnect
  test-nbd-unread-replies-bounded
  test-tls-psk-data
  test-tls-psk-file-errors
  test-tls-starttls-injection
  test-tls-state-reset
  test-table-errors-targets
  test-table-errors-layout
  test-control-table
  test-control-hostile-strings
  test-control-unknown-device
  test-control-pipelined-flood
)

cmd=${1:-all}
cmake -S "$SRC" -B "$B" -DCMAKE_BUILD_TYPE=Debug -DSTRATA_SANITIZE=ON >/dev/null
cmake --build "$B" -j "${JOBS:-$(nproc)}"

reports=$B/sanitizer-reports
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="halt_on_error=1:exitcode=86:detect_leaks=1:log_path=$reports/asan:log_exe_name=1"
export UBSAN_OPTIONS="halt_on_error=1:exitcode=86:print_stacktrace=1:log_path=$reports/ubsan:log_exe_name=1"
export LSAN_OPTIONS="exitcode=86"
# Tests that bound time or RSS read these: the runtime of the sanitizers takes ~130 MiB of RSS
# before the first request and runs everything several times slower. Their bounds hold as written
# in the plain build (CI's `make test`); here they look for memory errors on the same paths
# (docs/fuzzing.md).
export STRATA_SANITIZED=1 STRATA_TEST_TIME_SCALE=10

rc=0
case $cmd in
  all) (cd "$B" && ctest --output-on-failure -LE fuzz) || rc=$? ;;
  ci)
    regex="^($(IFS='|'; echo "${ASAN_CI_TESTS[*]}"))\$"
    (cd "$B" && ctest --output-on-failure -R "$regex") || rc=$?
    ;;
  only) (cd "$B" && ctest --output-on-failure -R "${2:?REGEX}") || rc=$? ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
if [ -n "$(ls -A "$reports")" ]; then
  for f in "$reports"/*; do
    echo "==== $f" >&2
    cat "$f" >&2
  done
  echo "asan: sanitizer findings (above; $reports)" >&2
  exit 1
fi
[ $rc -eq 0 ] || { echo "asan: tests failed" >&2; exit 1; }
echo "asan: $cmd: no sanitizer finding"
