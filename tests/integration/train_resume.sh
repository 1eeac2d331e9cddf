#!/usr/bin/env bash
# nesf train: a run stopped mid-epoch and resumed ends with exactly the
# weights, BatchNorm statistics and Adam state of an uninterrupted run
# (which ran on another thread count: results do not depend on it).
set -euo pipefail
nesf=${NESF_BUILD_ROOT:?}/tools/nesf/nesf
src=${NESF_SOURCE_ROOT:?}
shared=${NESF_SHARED:?}
[ -f "$shared/datasets/lcs6/val.jsonl" ] || { echo "skipped: no ../shared datasets"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/data"
cp "$shared/datasets/lcs6/meta.json" "$tmp/data/"
head -n 36 "$shared/datasets/lcs6/val.jsonl" > "$tmp/data/train.jsonl"
sed -n 37,44p "$shared/datasets/lcs6/val.jsonl" > "$tmp/data/val.jsonl"
cfg=$src/tests/data/tiny-train.json
# the Python checks read safetensors headers through one helper
st_py='import json, struct, sys
def header(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return b, n, json.loads(b[8:8 + n])
def meta(path):
    return header(path)[2]["__metadata__"]
'
check() { /usr/bin/python3 -c "$st_py$(cat)" "$@"; }
run() { "$nesf" train --config "$cfg" --data "$tmp/data" --threads 1 --quiet "$@" 2>>"$tmp/log"; }

run --out "$tmp/a" --threads 2                       # 3 epochs of 5 batches, on 2 threads:
                                                     # b (1 thread, resumed twice) must match bit for bit
run --out "$tmp/b" --max-steps 7                     # stops in epoch 2
test -f "$tmp/b/checkpoint.safetensors"
run --out "$tmp/b" --resume --max-steps 4            # stops in epoch 3
run --out "$tmp/b" --resume                          # finishes
check "$tmp/a/checkpoint.safetensors" "$tmp/b/checkpoint.safetensors" <<'PY'
def tensors(path):
    b, n, h = header(path)
    meta = h.pop("__metadata__", {})
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in h.items()}, meta
a, ma = tensors(sys.argv[1])
b, mb = tensors(sys.argv[2])
assert a.keys() == b.keys(), "tensor sets differ"
diff = [k for k in a if a[k] != b[k]]
assert not diff, f"{len(diff)} tensors differ after resume, e.g. {diff[:3]}"
sa, sb = json.loads(ma["train_state"]), json.loads(mb["train_state"])
for k in ("epoch", "step", "adam_t", "best_val", "best_epoch"):
    assert sa[k] == sb[k], f"train_state {k}: {sa[k]} vs {sb[k]}"
print(f"resume: {len(a)} tensors identical, state {sa['epoch']} epochs / {sa['step']} steps")
PY
# the per-epoch log of the resumed run matches too (losses, best flags)
cut -d, -f1-5 "$tmp/a/log.jsonl" > "$tmp/la"
cut -d, -f1-5 "$tmp/b/log.jsonl" > "$tmp/lb"
diff "$tmp/la" "$tmp/lb"

# origin shifts: the same exact resumption, the setting recorded, and
# training that differs from a's (the shifted settings are trained on)
/usr/bin/python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["training"]["origin_shifts"] = "half-abc"; json.dump(c, open(sys.argv[2], "w"))' "$cfg" "$tmp/shifts.json"
"$nesf" train --config "$tmp/shifts.json" --data "$tmp/data" --threads 2 --out "$tmp/s1" 2>"$tmp/s1.err"
grep -q "origin shifts: 8 settings" "$tmp/s1.err" || { cat "$tmp/s1.err"; exit 1; }
cfg=$tmp/shifts.json run --out "$tmp/s2" --max-steps 6
cfg=$tmp/shifts.json run --out "$tmp/s2" --resume
check "$tmp/s1/checkpoint.safetensors" "$tmp/s2/checkpoint.safetensors" "$tmp/a/checkpoint.safetensors" <<'PY'
def tensors(path):
    b, n, h = header(path)
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in h.items()}
s1, s2, a = (tensors(p) for p in sys.argv[1:4])
assert s1 == s2, "a run with origin shifts resumed differs from the uninterrupted one"
assert s1 != a, "origin shifts changed nothing"
assert json.loads(meta(sys.argv[1])["training_config"])["origin_shifts"] == "half-abc"
print("origin shifts: resumed run identical, differs from the unshifted one")
PY

# --from: a new stage on a's checkpoint with other loss weights keeps the
# network and Adam moments, counts epochs from 1 and steps on from a's
/usr/bin/python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["training"]["loss_weights"] = {"species": 2.5}; json.dump(c, open(sys.argv[2], "w"))' "$cfg" "$tmp/stage2.json"
"$nesf" train --config "$tmp/stage2.json" --data "$tmp/data" --threads 1 --quiet --out "$tmp/c" \
    --from "$tmp/a/checkpoint.safetensors" --epochs 1 2>>"$tmp/log"
check "$tmp/a/checkpoint.safetensors" "$tmp/c/checkpoint.safetensors" "$tmp/c/log.jsonl" <<'PY'
ma, mc = meta(sys.argv[1]), meta(sys.argv[2])
sa, sc = json.loads(ma["train_state"]), json.loads(mc["train_state"])
log = [json.loads(l) for l in open(sys.argv[3])]
assert [e["epoch"] for e in log] == [1], log
assert sc["epoch"] == 1 and sc["step"] > sa["step"] and sc["adam_t"] == sa["adam_t"] + (sc["step"] - sa["step"]), (sa, sc)
assert json.loads(mc["training_config"])["loss_weights"]["species"] == 2.5, mc["training_config"]
assert mc["model_config"] == ma["model_config"]
print(f"from: stage 2 at step {sc['step']} (stage 1 ended at {sa['step']}), species weight 2.5")
PY

# --from on another data set (fine-tuning, as nesf cv --from does): the
# network and its species list stay, the bounding box becomes the new
# training set's; an element the model lacks stops training with its name
if [ -f "$shared/datasets/ybco13/fold0/train.jsonl" ]; then
    mkdir "$tmp/ybco" "$tmp/kr"
    cp "$shared/datasets/ybco13/meta.json" "$tmp/ybco/"
    head -n 12 "$shared/datasets/ybco13/fold0/train.jsonl" > "$tmp/ybco/train.jsonl"
    cp "$shared/datasets/ybco13/fold0/val.jsonl" "$tmp/ybco/"
    "$nesf" train --config "$cfg" --data "$tmp/ybco" --threads 1 --quiet --out "$tmp/d" \
        --from "$tmp/a/best.safetensors" --epochs 1 2>>"$tmp/log"
    check "$tmp/a/best.safetensors" "$tmp/d/best.safetensors" "$tmp/ybco/train.jsonl" <<'PY'
ma, md = meta(sys.argv[1]), meta(sys.argv[2])
xyz = [c for l in open(sys.argv[3]) for c in json.loads(l)["cart_coords"]]
lo = [min(c[k] for c in xyz) for k in range(3)]
hi = [max(c[k] for c in xyz) for k in range(3)]
got_lo = [float(v) for v in md["bbox_min"].split(",")]
got_hi = [float(v) for v in md["bbox_max"].split(",")]
assert all(abs(a - b) < 1e-4 for a, b in zip(got_lo + got_hi, lo + hi)), (got_lo, got_hi, lo, hi)
assert got_hi[2] > 10 > float(ma["bbox_max"].split(",")[2]), (ma["bbox_max"], md["bbox_max"])
assert md["species"] == ma["species"] and md["model_config"] == ma["model_config"]
print(f"from another data set: box {md['bbox_min']} .. {md['bbox_max']} (was .. {ma['bbox_max']})")
PY
    cp "$tmp/ybco/meta.json" "$tmp/ybco/val.jsonl" "$tmp/kr/"
    sed '3s/"O"/"Kr"/' "$tmp/ybco/train.jsonl" > "$tmp/kr/train.jsonl"
    if "$nesf" train --config "$cfg" --data "$tmp/kr" --threads 1 --quiet --out "$tmp/e" \
        --from "$tmp/a/best.safetensors" --epochs 1 2>"$tmp/kr.err"; then
        echo "training on an element the model lacks succeeded"; exit 1
    fi
    grep -q "element Kr is not among the model's species" "$tmp/kr.err" || { cat "$tmp/kr.err"; exit 1; }
    echo "4 passed, 0 failed"
else
    echo "3 passed, 0 failed"
fi
