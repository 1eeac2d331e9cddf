#!/usr/bin/env bash
# The first GPU session's checks in one run (backends/cuda/NOTES.md), sized for one
# H200 with 16 cores in under 8 minutes: build with CUDA, the CUDA suites
# with NESF_REQUIRE_CUDA=1 (fp32, tf32, bf16, the non-fused Linear), parity
# on the CUDA backend, compute-sanitizer memcheck of test_cuda, `nesf bench
# gpu` at FP32/TF32/BF16 for batches 1/64/512 (it also times a training
# step and an epoch), and one real training epoch on the GPU.
#
# Every step has a time budget (timeout), a failing step does not stop the
# run, and a summary table ends it.  All output goes under $OUT (default
# ./gpu-check-out): one log per step plus summary.txt.  Data: the LCS6 split
# under $NESF_SHARED (default ../shared).
#
#   OUT=/tmp/out scripts/gpu-check.sh            # everything
#   STEPS="build cuda" scripts/gpu-check.sh      # a subset, by step name
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export NESF_SHARED=${NESF_SHARED:-$(cd .. && pwd)/shared}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
TOTAL_BUDGET=${TOTAL_BUDGET:-470}   # seconds for the whole run
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
NESF="$BUILD/tools/nesf/nesf"
MODEL=models/lcs6.safetensors

# step NAME BUDGET_S COMMAND...: runs COMMAND with a timeout of at most
# BUDGET_S (less when the run's total budget is nearly spent), logs to
# $OUT/NAME.log and records the result; never aborts the run.
step() {
  local name=$1 budget=$2; shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return 0; fi
  local left=$((TOTAL_BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    printf '%-16s %-8s %6s  %s\n' "$name" "NOT RUN" "-" "total budget spent" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  local t0 rc verdict
  t0=$(date +%s)
  echo "=== $name (budget ${budget}s): $*" | tee "$OUT/$name.log"
  timeout --kill-after=10 "$budget" bash -c '"$@"' "$name" "$@" >>"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) verdict=OK ;;
    124|137) verdict=TIMEOUT ;;
    *) verdict="FAIL($rc)" ;;
  esac
  printf '%-16s %-8s %5ss  %s\n' "$name" "$verdict" "$(($(date +%s) - t0))" "$OUT/$name.log" \
    | tee -a "$SUMMARY"
}

env_report() {
  nvidia-smi || echo "nvidia-smi: not found"
  /usr/local/cuda/bin/nvcc --version || echo "nvcc: not found under /usr/local/cuda/bin"
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer || true
  echo "NESF_SHARED=$NESF_SHARED"; ls "$NESF_SHARED/datasets/lcs6" || echo "LCS6 data missing"
  ls -l "$MODEL" || echo "$MODEL missing (bench uses an untrained model)"
  for p in meson ninja pkg-config; do command -v $p || echo "$p: not found"; done
}

build() {
  if [ -f "$BUILD/build.ninja" ]; then meson setup --reconfigure "$BUILD" -Dcuda=enabled -Dgpu_arch=90 -Dserver=false
  else meson setup "$BUILD" -Dcuda=enabled -Dgpu_arch=90 -Dserver=false; fi || return 1
  ninja -C "$BUILD" -j "$JOBS"
}

# meson test of the given suites with the device demanded
cuda_tests() {
  NESF_REQUIRE_CUDA=1 meson test -C "$BUILD" --no-rebuild --print-errorlogs -v "$@"
}

math_modes() {
  local rc=0
  for m in tf32 bf16; do
    echo "--- NESF_CUDA_MATH=$m"
    NESF_CUDA_MATH=$m NESF_REQUIRE_CUDA=1 "$BUILD/tests/test_cuda" || rc=1
  done
  return $rc
}

memcheck() {
  local cs=/usr/local/cuda/bin/compute-sanitizer
  command -v compute-sanitizer >/dev/null && cs=compute-sanitizer
  NESF_REQUIRE_CUDA=1 "$cs" --tool memcheck --error-exitcode 99 --print-limit 50 "$BUILD/tests/test_cuda"
}

bench() {
  local m=()
  [ -f "$MODEL" ] && m=(--model "$MODEL")
  "$NESF" bench gpu "${m[@]}" --batches 1,64,512 --math fp32,tf32,bf16 --seconds 2 \
    --cpu-batches 1 --train-steps 10 --check 8
}

train_epoch() {
  local run="$OUT/train-run"
  rm -rf "$run"
  /usr/bin/time -v "$NESF" train --data "$NESF_SHARED/datasets/lcs6" --out "$run" --backend cuda \
    --epochs 1 --val-limit 64 --checkpoint-minutes 60 --quiet
  local rc=$?
  ls -l "$run" 2>/dev/null
  tail -n 3 "$run"/*.jsonl 2>/dev/null
  return $rc
}

export OUT BUILD JOBS MODEL NESF NESF_SHARED
export -f env_report build cuda_tests math_modes memcheck bench train_epoch

step env         15  env_report
step build      120  build
step cuda        75  cuda_tests cuda cuda_model
step math_modes  40  math_modes
step no_lt       45  env NESF_CUDA_LT=0 NESF_REQUIRE_CUDA=1 meson test -C "$BUILD" --no-rebuild --print-errorlogs -v cuda_model
step parity      30  env NESF_PARITY_BACKEND=cuda NESF_REQUIRE_CUDA=1 meson test -C "$BUILD" --no-rebuild --print-errorlogs -v parity
step memcheck    60  memcheck
step bench       60  bench
step train       30  train_epoch

{
  echo "----"
  echo "gpu-check: $(($(date +%s) - START)) s in all; logs under $OUT"
  grep -c ' OK ' "$SUMMARY" | sed 's/^/steps OK: /'
} | tee -a "$SUMMARY"
! grep -qE ' (FAIL|TIMEOUT|NOT RUN)' "$SUMMARY"
