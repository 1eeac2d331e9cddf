#!/usr/bin/env bash
# The training job of the library (nesf_train_run) through the tool:
# --snapshot-every keeps the weights of every N-th epoch (those of a run
# that ends there), SIGTERM checkpoints and stops, numbers are checked, and
# nesf cv trains and reconstructs every fold in its own process.
set -euo pipefail
nesf=${NESF_BUILD_ROOT:?}/tools/nesf/nesf
src=${NESF_SOURCE_ROOT:?}
shared=${NESF_SHARED:?}
[ -f "$shared/datasets/lcs6/val.jsonl" ] || { echo "skipped: no ../shared datasets"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
v=$shared/datasets/lcs6/val.jsonl
mkdir "$tmp/data"
cp "$shared/datasets/lcs6/meta.json" "$tmp/data/"
head -n 36 "$v" > "$tmp/data/train.jsonl"
sed -n 37,44p "$v" > "$tmp/data/val.jsonl"
cfg=$src/tests/data/tiny-train.json
run() { "$nesf" train --config "$cfg" --data "$tmp/data" --threads 1 --quiet "$@"; }

# snapshots: epoch 2 of 3 only, equal to the weights of a run of 2 epochs
run --out "$tmp/a" --snapshot-every 2 2> "$tmp/a.err"
[ "$(cd "$tmp/a" && ls epoch-*)" = "epoch-0002.safetensors" ] || fail "snapshots: $(ls "$tmp/a")"
ls "$tmp/a" | grep -q '\.tmp' && fail "temporary files left: $(ls "$tmp/a")"
run --out "$tmp/b" --epochs 2 2> "$tmp/b.err"
/usr/bin/python3 - "$tmp/a/epoch-0002.safetensors" "$tmp/b/checkpoint.safetensors" <<'PY'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in h.items()}, meta
snap, ms = tensors(sys.argv[1])
ckpt, mc = tensors(sys.argv[2])
ckpt = {k: v for k, v in ckpt.items() if not k.startswith("trainer.")}
assert "train_state" not in ms, "a snapshot is inference weights, not a checkpoint"
assert snap.keys() == ckpt.keys(), (sorted(snap)[:5], sorted(ckpt)[:5])
diff = [k for k in snap if snap[k] != ckpt[k]]
assert not diff, f"{len(diff)} tensors differ from the 2-epoch run, e.g. {diff[:3]}"
print(f"snapshot: {len(snap)} tensors equal to the weights after 2 epochs")
PY

# SIGTERM: checkpoint, then stop (exit 0)
"$nesf" train --config "$cfg" --data "$tmp/data" --threads 1 --quiet --out "$tmp/c" --epochs 100000 \
    2> "$tmp/c.err" &
pid=$!
for _ in $(seq 600); do [ -s "$tmp/c/log.jsonl" ] && break; sleep 0.1; done
[ -s "$tmp/c/log.jsonl" ] || fail "no epoch logged"
kill -TERM $pid
wait $pid || fail "stopped run exited $?: $(cat "$tmp/c.err")"
grep -q "nesf train: stopped after" "$tmp/c.err" || fail "no stop line: $(cat "$tmp/c.err")"
/usr/bin/python3 - "$tmp/c/checkpoint.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
st = json.loads(json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]["train_state"])
assert 1 <= st["epoch"] < 100000 and st["step"] >= 5, st
print(f"SIGTERM: checkpoint at epoch {st['epoch']}, step {st['step']}")
PY

# numbers are checked, naming the option
for bad in "--threads abc" "--max-steps -3" "--val-every 0" "--minutes 1x"; do
    set +e
    # shellcheck disable=SC2086
    run --out "$tmp/d" $bad 2> "$tmp/d.err"; rc=$?
    set -e
    [ $rc -eq 2 ] || fail "$bad: exit $rc"
    grep -q "^nesf train: ${bad%% *}: '" "$tmp/d.err" || fail "$bad: $(cat "$tmp/d.err")"
done

# and in the other commands, through the same parser
m=$src/models/lcs6.safetensors
for cmd in "eval --model $m --data $v --limit x" "latents --model $m --data $v --perplexity -1" \
           "interpolate --model $m --steps 0 a b" "decode --model $m --threads 1.5 x" \
           "match --ltol 0 a b" "bench decode --model $m --data $v --n 0"; do
    set +e
    # shellcheck disable=SC2086
    "$nesf" $cmd > /dev/null 2> "$tmp/d.err"; rc=$?
    set -e
    [ $rc -eq 2 ] || fail "$cmd: exit $rc"
    grep -q "^nesf [a-z ]*: --[a-z]*: '" "$tmp/d.err" || fail "$cmd: $(cat "$tmp/d.err")"
done
[ -f "$m" ] && { "$nesf" encode -m "$m" <(head -n 1 "$v") | jq -e '.latent_size == 192' > /dev/null || fail "encode -m"; }

# nesf cv: two folds trained and reconstructed, one pooled row
mkdir "$tmp/folds"
cp "$shared/datasets/lcs6/meta.json" "$tmp/folds/"
for k in 0 1; do
    mkdir "$tmp/folds/fold$k"
    s=$((k * 30 + 1))
    sed -n "$s,$((s + 15))p" "$v" > "$tmp/folds/fold$k/train.jsonl"
    sed -n "$((s + 16)),$((s + 19))p" "$v" > "$tmp/folds/fold$k/val.jsonl"
    sed -n "$((s + 20)),$((s + 21))p" "$v" > "$tmp/folds/fold$k/test.jsonl"
done
"$nesf" cv --data "$tmp/folds" --out "$tmp/cv" --config "$cfg" --epochs 2 --backend cpu --calibrate 90 \
    --options '{"grid_step": 1.5, "iterations": 4, "repair_lattice": 1}' > "$tmp/cv.out" 2> "$tmp/cv.err" \
    || fail "cv: $(tail -5 "$tmp/cv.err")"
for k in 0 1; do
    grep -q "^| fold $k " "$tmp/cv.out" || fail "no row for fold $k"
    [ "$(wc -l < "$tmp/cv/fold$k/test-recon.jsonl")" -eq 2 ] || fail "fold $k reconstructions"
    [ "$(grep -c '"epoch"' "$tmp/cv/fold$k/log.jsonl")" -eq 2 ] || fail "fold $k log"
done
grep -q "nesf, 2 folds, 4 structures" "$tmp/cv.out" || fail "pooled row: $(cat "$tmp/cv.out")"
# each fold's best weights carry the cycle distances of its 16 training
# structures (the second look's threshold), measured once: a rerun skips it
[ "$(grep -c "calibrating the cycle distance" "$tmp/cv.err")" -eq 2 ] || fail "cv calibration: $(cat "$tmp/cv.err")"
for k in 0 1; do
    /usr/bin/python3 - "$tmp/cv/fold$k/best.safetensors" <<'PY' || fail "fold $k: no cycle calibration"
import json, struct, sys
b = open(sys.argv[1], "rb").read(1 << 20)
meta = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]
assert json.loads(meta["domain"])["cycle_distance"]["sample"] == 16, meta["domain"]
PY
done
"$nesf" cv --data "$tmp/folds" --out "$tmp/cv" --config "$cfg" --epochs 2 --backend cpu --calibrate 90 \
    --options '{"grid_step": 1.5, "iterations": 4, "repair_lattice": 1}' > "$tmp/cv2.out" 2> "$tmp/cv.err" \
    || fail "cv again: $(tail -5 "$tmp/cv.err")"
grep -q "calibrating" "$tmp/cv.err" && fail "calibrated again: $(cat "$tmp/cv.err")"
cmp -s <(grep '^| fold' "$tmp/cv.out") <(grep '^| fold' "$tmp/cv2.out") || fail "rerun rows differ"
set +e
"$nesf" cv --data "$tmp/folds" --out "$tmp/cv" --folds 0-x 2> "$tmp/cv.err"; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "^nesf cv: --folds: '0-x'" "$tmp/cv.err" || fail "cv --folds 0-x: $rc $(cat "$tmp/cv.err")"
echo "5 passed, 0 failed"
