#!/usr/bin/python3
"""PyTorch baseline of `nesf bench field`: position-field evaluation (eval
mode, float32) of one structure's latent on the spec §5 inference grid
(per axis arange(bbmin - 0.5, bbmax + 0.5, 0.5), ~7000 points for lcs6).

    /usr/bin/python3 tests/bench/torch_field.py [--weights F] [--threads 2] [--min-time 2]

Prints one line of key=value pairs starting with "torch_field:".
flop_per_query is the dense count 2 * sum(in * out) over the field's Linear
layers (latent columns included, as PyTorch computes them for every row);
gflops = flop_per_query * queries_per_s / 1e9.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
import nesf_ref as ref  # noqa: E402


def build_model(weights, shared, seed):
    if weights:
        model, species, bbmin, bbmax = ref.load_model(weights, dtype=torch.float32)
        return model, species, np.asarray(bbmin), np.asarray(bbmax)
    ds = os.path.join(shared, "datasets", "lcs6")
    species = ref.load_species(os.path.join(ds, "meta.json"))
    x = np.concatenate([np.asarray(s["cart_coords"]) for s in ref.load_jsonl(os.path.join(ds, "train.jsonl"))])
    torch.manual_seed(seed)
    return ref.NeSF(ref.PAPER_CONFIG, len(species)), species, x.min(0), x.max(0)


def field_flops(model):
    return 2 * sum(l.weight.shape[0] * l.weight.shape[1] for l in model.dec_position.layers)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", help="safetensors weights (default: fresh paper network)")
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds to time at least")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, species, bbmin, bbmax = build_model(args.weights, args.shared, args.seed)
    model = model.float().eval()

    axes = [np.arange(bbmin[i] - 0.5, bbmax[i] + 0.5, 0.5) for i in range(3)]
    xyz = torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32))
    Q = xyz.shape[0]
    off = [0, Q]
    with torch.inference_mode():
        val = ref.load_jsonl(os.path.join(args.shared, "datasets", "lcs6", "val.jsonl"), limit=1)
        a, c, l6 = ref.structure_arrays(val[0], species)
        z = model.encode(torch.from_numpy(a), c, [0, len(a)], torch.from_numpy(l6)[None])
        for _ in range(2):   # warm-up
            model.position_field(z, off, xyz)
        reps, t0 = 0, time.perf_counter()
        while True:
            out = model.position_field(z, off, xyz)
            reps += 1
            dt = time.perf_counter() - t0
            if dt >= args.min_time and reps >= 3:
                break
    assert out.shape == (Q, 3)
    qps = Q * reps / dt
    fl = field_flops(model)
    print(f"torch_field: queries={Q} reps={reps} seconds={dt:.4f} queries_per_s={qps:.1f} "
          f"gflops={fl * qps / 1e9:.3f} flop_per_query={fl} threads={args.threads} "
          f"torch={torch.__version__}", flush=True)


if __name__ == "__main__":
    main()
