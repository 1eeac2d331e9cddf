#!/usr/bin/env bash
# nesfd load benchmark on loopback: decodes/s and p50/p99 latency at
# concurrency 1, 8 and 64, with dynamic batching on and off, in one run.
#
#   tests/bench/load.sh [BUILD_DIR] [SECONDS] [--paper]
#
# Each client POSTs /decode with one latent, closed loop (tests/bench/
# nesfd_load.c).  The model is the integration tests' fixture (paper-size
# network, random weights, two attractor atoms: tests/integration/mkmodel.c).
# Decoding options: grid_step 1.0, 16 iterations by default (343 particles
# per structure); --paper uses the paper's 0.5 Å grid and 64 iterations
# (2744 particles, seconds per decode on a CPU).
# batching on:    --max-batch 32 --max-delay-us 2000 (the defaults; every
#                 latent in GEMMs of its own, answers bit-identical)
# batching fused: the same with --fused-batches (a batch's particles share
#                 GEMMs; answers may differ from unbatched in the last bits)
# batching off:   --no-batching (one latent per backend call)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
secs=${2:-20}
paper=${3:-}
for exe in "$build/server/nesfd" "$build/tests/mkmodel" "$build/tests/nesfd_load"; do
  [ -x "$exe" ] || { echo "load.sh: $exe missing (ninja -C $build)" >&2; exit 1; }
done
shared=${NESF_SHARED:-$PWD/../shared}
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
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

start() { # extra nesfd flags...
  "$build/server/nesfd" --listen 127.0.0.1:0 --model "fx=$tmp/fx.safetensors" --backend cpu \
    --http-threads 4 --quiet "$@" 2> "$tmp/log" &
  pid=$!
  for _ in $(seq 100); do
    port=$(grep -o '"port":[0-9]*' "$tmp/log" | cut -d: -f2 || true)
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  echo "load.sh: nesfd did not start" >&2; cat "$tmp/log" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid"; pid=; }

load0=$(cut -d' ' -f1-3 /proc/loadavg)
results=()
for mode in on fused off; do
  case $mode in
    on) start --max-batch 32 --max-delay-us 2000 ;;
    fused) start --max-batch 32 --max-delay-us 2000 --fused-batches ;;
    off) start --no-batching ;;
  esac
  for c in 1 8 64; do
    line=$("$build/tests/nesfd_load" --port "$port" --body "$tmp/body.json" --concurrency $c \
           --seconds "$secs" --warmup 4)
    results+=("$mode $c $line")
    echo "batching $mode, concurrency $c: $line" >&2
  done
  batches=$(curl -s "http://127.0.0.1:$port/metrics" | grep '^nesfd_batch_size_count{model="fx",op="decode"}' | awk '{print $2}')
  items=$(curl -s "http://127.0.0.1:$port/metrics" | grep '^nesfd_batch_size_sum{model="fx",op="decode"}' | awk '{print $2}')
  results+=("$mode calls $batches $items")
  stop
done

/usr/bin/python3 - "$label" "$(nproc)" "$load0" "${results[@]}" <<'PY'
import json, sys
label, cores, load0, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
r, calls = {}, {}
for row in rows:
    mode, c, rest = row.split(" ", 2)
    if c == "calls":
        b, i = rest.split()
        calls[mode] = (float(i) / float(b)) if float(b) else 0
    else:
        r[(mode, int(c))] = json.loads(rest)
print("nesfd /decode, one latent per request, %s; loopback, %s cores, CPU backend" % (label, cores))
print("(load average when the run started: %s; other processes share these cores)" % load0)
modes = [("on", "batching on"), ("fused", "on, --fused-batches"), ("off", "batching off")]
print("%-11s" % "" + "".join(" | %-29s" % name for _, name in modes))
print("%-11s" % "concurrency" + " | decodes/s    p50 ms    p99 ms" * len(modes))
for c in (1, 8, 64):
    print("%-11d" % c + "".join(" | %9.1f %9.0f %9.0f" % (r[(m, c)]["items_per_s"], r[(m, c)]["p50_ms"],
                                                         r[(m, c)]["p99_ms"]) for m, _ in modes))
print("mean latents per backend call: " + ", ".join("%s %.1f" % (m, calls.get(m, 0)) for m, _ in modes))
PY
