#!/usr/bin/env bash
# nesfd load benchmark on loopback: decodes/s and p50/p99 latency at
# concurrency 1, 8 and 64, with dynamic batching on and off, in one run.
#
#   tests/bench/load.sh [BUILD_DIR] [SECONDS] [ROUNDS] [--paper]
#
# Each client POSTs /decode with one latent, closed loop, one keep-alive
# connection each (tests/bench/nesfd_load.c).  The model is the integration
# tests' fixture (paper-size network, random weights, two attractor atoms:
# tests/integration/mkmodel.c).  Decoding options: grid_step 1.0 and 16
# iterations by default (343 particles per structure); --paper uses the
# paper's 0.5 Å grid and 64 iterations (2744 particles, seconds per decode
# on a CPU).  Three daemons run side by side:
#   on     --max-batch 32 --max-delay-us 2000 (the defaults; every latent in
#          GEMMs of its own inside a batch: answers bit-identical)
#   fused  the same with --fused-batches (a batch's particles share GEMMs)
#   off    --no-batching (one latent per backend call)
# each with one BLAS thread and two HTTP threads, and the measurement
# windows (SECONDS, 10 by default, twice that at concurrency 64) alternate
# between them ROUNDS times (2), so that a change in the machine's load hits
# all three alike.  Figures pool the rounds; besides wall-clock rates and
# latencies the table gives each daemon's CPU time per decode, which stays
# meaningful on a machine shared with other work.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
secs=${2:-10}
rounds=${3:-2}
paper=${4:-}
for exe in "$build/server/nesfd" "$build/tests/mkmodel" "$build/tests/nesfd_load"; do
  [ -x "$exe" ] || { echo "load.sh: $exe missing (ninja -C $build)" >&2; exit 1; }
done
shared=${NESF_SHARED:-$PWD/../shared}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
"$build/tests/mkmodel" "$tmp/fx.safetensors" "$shared/datasets/lcs6/meta.json" 7
if [ "$paper" = --paper ]; then opts='{}'; label="paper settings (0.5 A grid, 64 iterations)"
else opts='{"grid_step": 1.0, "iterations": 16}'; label="grid_step 1.0, 16 iterations"; fi
/usr/bin/python3 - "$tmp/body.json" "$opts" <<'PY'
import json, random, sys
rnd = random.Random(1)
json.dump({"latents": [[rnd.gauss(0, 1) for _ in range(192)]], "options": json.loads(sys.argv[2])},
          open(sys.argv[1], "w"))
PY

declare -A port pid
start() { # mode, extra nesfd flags...
  local mode=$1; shift
  "$build/server/nesfd" --listen 127.0.0.1:0 --model "fx=$tmp/fx.safetensors" --backend cpu \
    --compute-threads 1 --http-threads 2 --quiet "$@" 2> "$tmp/log.$mode" &
  pids+=($!)
  pid[$mode]=$!
  for _ in $(seq 100); do
    port[$mode]=$(grep -o '"port":[0-9]*' "$tmp/log.$mode" | cut -d: -f2 || true)
    [ -n "${port[$mode]}" ] && return 0
    sleep 0.1
  done
  echo "load.sh: nesfd ($mode) did not start" >&2; cat "$tmp/log.$mode" >&2; exit 1
}
tick=$(getconf CLK_TCK)
cputicks() { # mode -> user + system clock ticks of that daemon so far
  awk '{print $14 + $15}' "/proc/${pid[$1]}/stat"
}
metric() { # mode, name -> value for model fx, op decode
  curl -s "http://127.0.0.1:${port[$1]}/metrics" | awk -v n="$2{model=\"fx\",op=\"decode\"}" '$1 == n {print $2}'
}
start on --max-batch 32 --max-delay-us 2000
start fused --max-batch 32 --max-delay-us 2000 --fused-batches
start off --no-batching

load0=$(cut -d' ' -f1-3 /proc/loadavg)
for c in 1 8 64; do
  w=$secs; [ $c = 64 ] && w=$((2 * secs))
  for r in $(seq "$rounds"); do
    for mode in on fused off; do
      b0=$(metric $mode nesfd_batch_size_count); i0=$(metric $mode nesfd_batch_size_sum)
      t0=$(cputicks $mode)
      line=$("$build/tests/nesfd_load" --port "${port[$mode]}" --body "$tmp/body.json" --concurrency $c \
             --seconds "$w" --warmup 3 --latencies "$tmp/lat.$mode.$c")
      t1=$(cputicks $mode)
      b1=$(metric $mode nesfd_batch_size_count); i1=$(metric $mode nesfd_batch_size_sum)
      echo "$mode $c $w $line $((b1 - b0)) $((i1 - i0)) $((t1 - t0))" >> "$tmp/runs"
      echo "round $r, batching $mode, concurrency $c: $line" >&2
    done
  done
done

/usr/bin/python3 - "$label" "$(nproc)" "$load0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$tmp" "$tick" <<'PY'
import json, os, sys
label, cores, load0, load1, tmp, tick = sys.argv[1:]
req, secs, calls, items, cpu = {}, {}, {}, {}, {}
for line in open(os.path.join(tmp, "runs")):
    mode, c, w, rest = line.split(" ", 3)
    j, b, i, t = rest.rsplit(" ", 3)
    k = (mode, int(c))
    req[k] = req.get(k, 0) + json.loads(j)["requests"]
    secs[k] = secs.get(k, 0) + float(w)
    calls[k] = calls.get(k, 0) + int(b)
    items[k] = items.get(k, 0) + int(i)
    cpu[k] = cpu.get(k, 0) + int(t) / float(tick)
def pct(v, p):
    return v[int(p * (len(v) - 1) + 0.5)] if v else float("nan")
print("nesfd /decode, one latent per request, %s; loopback, %s cores, CPU backend" % (label, cores))
print("(load average %s at the start, %s at the end: other processes share these cores)" % (load0, load1))
modes = [("on", "batching on"), ("fused", "on, --fused-batches"), ("off", "batching off")]
print("%-11s" % "" + "".join(" | %-44s" % name for _, name in modes))
print("%-11s" % "concurrency" + " | decodes/s  p50 ms  p99 ms  cpu ms  per call" * len(modes))
for c in (1, 8, 64):
    row = "%-11d" % c
    for m, _ in modes:
        lat = sorted(float(x) for x in open(os.path.join(tmp, "lat.%s.%d" % (m, c))))
        k = (m, c)
        row += " | %9.1f %7.0f %7.0f %7.1f %9.1f" % (
            req[k] / secs[k], pct(lat, 0.5), pct(lat, 0.99),
            1e3 * cpu[k] / items[k] if items[k] else 0, items[k] / calls[k] if calls[k] else 0)
    print(row)
print("cpu ms: the daemon's CPU time (user + system, all threads) per decoded latent, which other load")
print("on the machine does not inflate; per call: mean latents per backend call (from /metrics)")
PY
