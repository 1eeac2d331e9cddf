#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, builds with
# -Werror, runs every test, repeats the unit tests under ASan+UBSan, runs
# the CUDA suites on the host emulation, and ends with one summary line
# "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test || exit 1

setup() { # dir, extra meson args...
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
  else meson setup "$dir" "$@" >/dev/null; fi
}
fail=0
setup build -Dwerror=true || exit 1
ninja -C build || exit 1
meson test -C build --print-errorlogs --num-processes 2 || fail=1

# sanitizers: unit tests only (the integration tests spawn daemons and tools
# that are exercised in the release build above)
setup build-asan -Dwerror=true -Dbuildtype=debug -Db_sanitize=address,undefined \
      -Db_lundef=false -Dcuda=disabled || exit 1
ninja -C build-asan || exit 1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 || fail=1

# the CUDA backend's own sources on the host emulation (backends/cuda/emu, a test
# harness): the emulation's self-test, then the cuda and cuda_model suites
# against the CPU backend and parity against the PyTorch fixtures, all on
# the emulated device; NESF_REQUIRE_CUDA=1 makes a skip a failure
setup build-cuemu -Dwerror=true -Demulate_cuda=true -Dcuda=disabled -Dserver=false || exit 1
ninja -C build-cuemu tests/test_cuda_emu tests/test_cuda tests/test_cuda_model tests/test_parity || exit 1
NESF_REQUIRE_CUDA=1 NESF_PARITY_BACKEND=cuda NESF_CUDA_EMULATION=1 meson test -C build-cuemu --no-rebuild --print-errorlogs \
  --num-processes 1 cuda_emu cuda cuda_model parity || fail=1

# the libFuzzer targets (CIF, JSON, space groups at the daemon's symprec) for
# a few seconds each, on top of their corpora (NESF_FUZZ_SECS, 0 = skip;
# scripts/fuzz.sh for long runs)
fuzz_secs=${NESF_FUZZ_SECS:-10}
if [ "$fuzz_secs" != 0 ]; then
  if scripts/fuzz.sh "$fuzz_secs" > build/fuzz.log 2>&1; then echo "fuzz: ${fuzz_secs}s per target, clean"
  else echo "fuzz: FAILED (build/fuzz.log)"; tail -n 40 build/fuzz.log; fail=1; fi
fi

python3 scripts/test_summary.py build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
  build-cuemu/meson-logs/testlog.json
s=$?
[ $fail -eq 0 ] && [ $s -eq 0 ]
