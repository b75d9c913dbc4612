#!/usr/bin/env bash
# libFuzzer harnesses (src/**/*_fuzz.cc): build, check, soak.
#
#   scripts/fuzz.sh build                 build-fuzz/fuzz/<harness> (clang-14, ASan + UBSan)
#   scripts/fuzz.sh check NAME [SECONDS]  run one harness SECONDS (default $FUZZ_SECONDS or 30) on its
#                                         seed corpus (tests/fuzz/corpus/NAME); any finding fails, its input
#                                         is kept in build-fuzz/artifacts/ and printed in base64
#   scripts/fuzz.sh all [SECONDS]         check every harness
#   scripts/fuzz.sh soak MINUTES [NAME...] every harness (or those named) MINUTES minutes of wall time, one at
#                                         a time, new inputs kept in build-fuzz/corpus/; the CPU time each got
#                                         is printed and appended to build-fuzz/soak.log (on a shared machine run
#                                         it under SCHED_IDLE: chrt -i 0 scripts/fuzz.sh soak 30). SOAK_UNTIL=EPOCH:
#                                         the harnesses share what is left until then instead (none runs past it).
#                                         SOAK_CPU=1: MINUTES of CPU time each (for a niced soak on a busy machine)
#   scripts/fuzz.sh coverage [NAME...]    build the harnesses with clang source coverage (build-fuzz-cov/), run
#                                         each once over its corpus (seeds, plus build-fuzz/corpus/NAME kept by
#                                         soaks; FUZZ_CORPUS=DIR: DIR/NAME instead) and print the line and
#                                         function coverage of the files it targets (llvm-cov report)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${FUZZ_BUILD:-$SRC/build-fuzz}
CXX=${CLANGXX:-clang++-14}
CC=${CLANGCC:-clang-14}

build() {
  command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (scripts/install-deps.sh)" >&2; exit 1; }
  mkdir -p "$BUILD"
  # One build at a time (ctest may start several checks).
  exec 9>"$BUILD/.lock"
  flock 9
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    CC=$CC CXX=$CXX cmake -S "$SRC" -B "$BUILD" -DSTRATA_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build "$BUILD" --target fuzzers -j "${JOBS:-$(nproc)}" >"$BUILD/build.log" 2>&1 ||
    { tail -40 "$BUILD/build.log" >&2; echo "fuzz: build failed ($BUILD/build.log)" >&2; exit 1; }
  flock -u 9
}

harnesses() { find "$SRC/src" -name '*_fuzz.cc' -printf '%f\n' | sed 's/\.cc$//' | sort; }

run() { # NAME SECONDS CORPUS_DIR
  local name=$1 secs=$2 corpus=$3 bin=$BUILD/fuzz/$1 seeds=$SRC/tests/fuzz/corpus/$1
  [ -x "$bin" ] || { echo "fuzz: no harness $name ($bin)" >&2; exit 1; }
  mkdir -p "$corpus" "$BUILD/artifacts" "$seeds"
  local log=$BUILD/artifacts/$name.log rc=0
  # SOAK_CPU=1: SECONDS are seconds of CPU time (user + system) the harness gets, not of wall time:
  # on a shared machine a niced soak then still gives each harness its full share. libFuzzer's own
  # limit is wall time, so a watcher interrupts it (SIGINT: final stats, exit 72) once it has had them.
  local wall=$secs
  [ -n "${SOAK_CPU:-}" ] && wall=$((secs * 50))
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    /usr/bin/time -o "$BUILD/artifacts/$name.cpu" -f "%U %S %e" "$bin" -max_total_time="$wall" -timeout=25 -rss_limit_mb=2560 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$BUILD/artifacts/$name-" "$corpus" "$seeds" >"$log" 2>&1 &
  local tpid=$! interrupted=
  if [ -n "${SOAK_CPU:-}" ]; then
    local hz fpid ticks
    hz=$(getconf CLK_TCK)
    while kill -0 "$tpid" 2>/dev/null; do
      sleep 2
      fpid=$(pgrep -P "$tpid" | head -1) || continue
      ticks=$(awk '{ print $14 + $15 }' "/proc/$fpid/stat" 2>/dev/null) || continue
      if [ -n "$ticks" ] && [ "$ticks" -ge $((secs * hz)) ]; then
        interrupted=1
        kill -INT "$fpid" 2>/dev/null || true
        break
      fi
    done
  fi
  wait "$tpid" || rc=$?
  # Interrupted by the CPU budget: libFuzzer's exit code for SIGINT, not a finding.
  [ -n "$interrupted" ] && [ "$rc" -eq 72 ] && rc=0
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov: " "$log" | tail -3
  # CPU time the harness got (user + system), wall time: under SCHED_IDLE the two differ.
  local cpu
  cpu=$(awk 'END { printf "%.1f CPU-minutes in %.1f minutes of wall time", ($1 + $2) / 60, $3 / 60 }' "$BUILD/artifacts/$name.cpu")
  echo "fuzz: $name: $cpu"
  echo "$(date -u +%FT%TZ) $name $cpu, $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions, $(grep -oE 'cov: [0-9]+' "$log" | tail -1)" >>"$BUILD/soak.log"
  if [ $rc -ne 0 ]; then
    tail -60 "$log" >&2
    local a
    for a in $(grep -oE "Test unit written to [^ ]+" "$log" | awk '{print $5}'); do
      echo "fuzz: $name: finding kept in $a (base64: $(base64 -w0 "$a" | head -c 2000))" >&2
    done
    echo "fuzz: $name: FAILED (exit $rc): add the input to $seeds once fixed" >&2
    exit 1
  fi
  echo "fuzz: $name: ${secs} s, no finding"
}

# The files each harness is there to exercise (its coverage is reported on them).
targets_of() {
  case $1 in
    connection_fuzz) echo src/exports/nbd/connection.cc src/exports/nbd/stream.cc src/exports/nbd/handshake.cc src/exports/nbd/transmission.cc src/exports/nbd/reply_queue.cc src/exports/nbd/server.cc src/exports/nbd/tls.cc ;;
    dirty_map_fuzz) echo src/targets/dirty/dirty_map.cc ;;
    dispatch_fuzz) echo src/control/commands.cc src/control/device_commands.cc src/control/devices.cc ;;
    layer_fuzz) echo src/targets/cow/layer.cc ;;
    nfs_wire_fuzz) echo src/targets/nfs/nfs_wire.cc ;;
    psk_fuzz) echo src/exports/nbd/tls.cc ;;
    table_fuzz) echo src/table/table.cc src/core/params.cc ;;
    *) echo "fuzz: no target files for $1 (scripts/fuzz.sh targets_of)" >&2; exit 1 ;;
  esac
}

coverage() {
  local cov=${FUZZ_COV_BUILD:-$SRC/build-fuzz-cov} profdata=${PROFDATA:-llvm-profdata-14} llvmcov=${LLVMCOV:-llvm-cov-14}
  command -v "$llvmcov" >/dev/null || { echo "fuzz: $llvmcov not found" >&2; exit 1; }
  mkdir -p "$cov/prof"
  if [ ! -f "$cov/CMakeCache.txt" ]; then
    CC=$CC CXX=$CXX cmake -S "$SRC" -B "$cov" -DSTRATA_FUZZ=ON -DSTRATA_FUZZ_COVERAGE=ON \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build "$cov" --target fuzzers -j "${JOBS:-$(nproc)}" >"$cov/build.log" 2>&1 ||
    { tail -40 "$cov/build.log" >&2; echo "fuzz: coverage build failed ($cov/build.log)" >&2; exit 1; }
  local list=${*:-$(harnesses)} h
  printf '| harness | inputs | files | lines | functions | regions |\n|---|---|---|---|---|---|\n'
  for h in $list; do
    local dirs=("$SRC/tests/fuzz/corpus/$h") extra=${FUZZ_CORPUS:-$BUILD/corpus}/$h
    [ -d "$extra" ] && dirs+=("$extra")
    local n
    n=$(find "${dirs[@]}" -type f | wc -l)
    rm -f "$cov/prof/$h".*
    # -runs=0: every input of the corpus once, nothing new.
    (cd "$cov" && LLVM_PROFILE_FILE="$cov/prof/$h.%p.profraw" timeout 1800 "$cov/fuzz/$h" -runs=0 -timeout=25 \
      -rss_limit_mb=2560 -max_len=65536 "${dirs[@]}" >"$cov/prof/$h.log" 2>&1) ||
      { tail -20 "$cov/prof/$h.log" >&2; echo "fuzz: $h failed over its corpus" >&2; exit 1; }
    "$profdata" merge -sparse "$cov/prof/$h".*.profraw -o "$cov/prof/$h.profdata"
    local files=() f
    for f in $(targets_of "$h"); do files+=("$SRC/$f"); done
    "$llvmcov" report "$cov/fuzz/$h" -instr-profile="$cov/prof/$h.profdata" "${files[@]}" >"$cov/prof/$h.report"
    "$llvmcov" report --show-functions "$cov/fuzz/$h" -instr-profile="$cov/prof/$h.profdata" "${files[@]}" |
      "${CXXFILT:-c++filt}" >"$cov/prof/$h.functions"
    # TOTAL: regions missed cover functions missed executed lines missed cover (branches...)
    awk -v h="$h" -v n="$n" -v f="$(targets_of "$h" | sed 's|src/||g')" '
      $1 == "TOTAL" { printf "| %s | %d | %s | %s of %d | %s of %d | %s |\n", h, n, f, $10, $8, $7, $5, $4 }' \
      "$cov/prof/$h.report"
  done
  echo
  echo "Per file: $cov/prof/NAME.report; per function: $cov/prof/NAME.functions."
}

cmd=${1:-}
case $cmd in
  build) build ;;
  check)
    name=${2:?harness name}
    secs=${3:-${FUZZ_SECONDS:-30}}
    build
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    run "$name" "$secs" "$tmp"
    ;;
  all)
    secs=${2:-${FUZZ_SECONDS:-30}}
    build
    for h in $(harnesses); do
      tmp=$(mktemp -d)
      run "$h" "$secs" "$tmp"
      rm -rf "$tmp"
    done
    ;;
  soak)
    mins=${2:?minutes}
    shift 2
    build
    list=${*:-$(harnesses)}
    set -- $list
    for h in "$@"; do
      secs=$((mins * 60))
      if [ -n "${SOAK_UNTIL:-}" ]; then
        left=$(( (SOAK_UNTIL - $(date +%s)) / $# ))
        [ "$left" -lt "$secs" ] && secs=$left
        [ "$secs" -ge 10 ] || { echo "fuzz: $h: no time left before SOAK_UNTIL" >&2; shift; continue; }
      fi
      # A finding stops this harness, not the soak.
      (run "$h" "$secs" "$BUILD/corpus/$h") || failed="${failed:-} $h"
      shift
    done
    [ -z "${failed:-}" ] || { echo "fuzz: soak: findings in:$failed" >&2; exit 1; }
    ;;
  coverage)
    shift
    coverage "$@"
    ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac
