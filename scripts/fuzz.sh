#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in
# build-fuzz and runs each for a bounded time.
#   scripts/fuzz.sh [SECONDS per target, default 60] [target...]   (targets: cif json symmetry)
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 0 cif   # a fixed number of executions instead of a time
# New inputs go to build-fuzz/corpus/<target> (seeded from tests/fuzz/corpus_<target>);
# a crash leaves build-fuzz/crash-* and a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(cif json symmetry)
command -v clang >/dev/null || { echo "fuzz: clang missing (scripts/deps.sh test installs it)" >&2; exit 1; }

args=(-Dfuzz=true -Dtests=false -Dserver=false -Dcuda=disabled -Dbuildtype=debugoptimized
      -Db_sanitize=address,undefined -Db_lundef=false
      "-Dc_args=-fsanitize=fuzzer-no-link -fno-sanitize-recover=all")
if [ -f build-fuzz/build.ninja ]; then meson setup --reconfigure build-fuzz "${args[@]}" >/dev/null
else CC=clang meson setup build-fuzz "${args[@]}" >/dev/null; fi
ninja -C build-fuzz $(printf 'tests/fuzz/fuzz_%s ' "${targets[@]}")

limit=(-max_total_time="$secs")
[ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  if [ -n "${FUZZ_RUNS:-}" ]; then echo "fuzz: $t for $FUZZ_RUNS runs"; else echo "fuzz: $t for ${secs}s"; fi
  (cd build-fuzz && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     "./tests/fuzz/fuzz_$t" "${limit[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
     -dict="../tests/fuzz/$t.dict" -print_final_stats=1 \
     "corpus/$t" "../tests/fuzz/corpus_$t" 2>&1 | tail -n 25) || status=1
done
exit $status
