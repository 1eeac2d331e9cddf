#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, builds with
# -Werror, runs every test, repeats the unit tests under ASan+UBSan, and ends
# with one summary line "N passed, N failed".
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

# the libFuzzer targets (CIF, JSON, space groups at the daemon's symprec) for
# a few seconds each, on top of their corpora (NESF_FUZZ_SECS, 0 = skip;
# scripts/fuzz.sh for long runs)
fuzz_secs=${NESF_FUZZ_SECS:-10}
if [ "$fuzz_secs" != 0 ]; then
  if scripts/fuzz.sh "$fuzz_secs" > build/fuzz.log 2>&1; then echo "fuzz: ${fuzz_secs}s per target, clean"
  else echo "fuzz: FAILED (build/fuzz.log)"; tail -n 40 build/fuzz.log; fail=1; fi
fi

python3 scripts/test_summary.py build/meson-logs/testlog.json build-asan/meson-logs/testlog.json
s=$?
[ $fail -eq 0 ] && [ $s -eq 0 ]
