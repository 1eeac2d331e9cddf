#!/usr/bin/python3
"""Gives a trained model Fourier query columns (model config xyz_fourier,
include/mlp.h) without changing what it computes, so training can go on
from it instead of from scratch.

    scripts/add_fourier.py --model M.safetensors --out M-fourier.safetensors [--fourier 4] [--period 8]

Every field layer that takes the query xyz gets 6 x fourier more input
columns, [sin(w_k x_d), cos(w_k x_d)] for w_k = 2 pi 2^k / period, with zero
weights: the widened network's fields equal the old ones exactly (the new
columns contribute 0), and the first
training steps start using the new columns where the loss gradient says so
(`nesf train --from M-fourier.safetensors --config C`, fresh Adam moments).
Metadata (species, bounding box, domain) is kept; model_config records the
columns. The output is written to a temp file, then renamed.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import read, tensors, write  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fourier", type=int, default=4, help="frequencies (1..8)")
    ap.add_argument("--period", type=float, default=8.0, help="longest period, Å")
    a = ap.parse_args()
    if not 1 <= a.fourier <= 8 or not 0.5 <= a.period <= 1000:
        sys.exit("add_fourier: --fourier must be in 1..8 and --period in 0.5..1000 Å")
    header, data = read(a.model)
    meta = dict(header.get("__metadata__", {}))
    cfg = json.loads(meta.get("model_config", "{}"))
    if cfg.get("xyz_fourier"):
        sys.exit(f"add_fourier: {a.model} has Fourier columns already ({cfg['xyz_fourier']})")
    # Linear layers of each field (the paper's 9 and 3 without a config, spec §3);
    # all but the last take the query columns
    layers = {"decoder.position": len(cfg.get("pos_hidden", [0] * 8)) + 1,
              "decoder.species": len(cfg.get("spec_hidden", [0] * 2)) + 1}
    arrays, widened = {}, 0
    for name, t in tensors(header, data, "add_fourier"):
        parts = name.split(".")
        field = ".".join(parts[:2])
        if field in layers and parts[3:] == ["weight"] and int(parts[2]) < layers[field] - 1:
            t = np.concatenate([t, np.zeros((t.shape[0], 6 * a.fourier), np.float32)], axis=1)
            widened += 1
        arrays[name] = t
    if widened != sum(n - 1 for n in layers.values()):
        sys.exit(f"add_fourier: {a.model}: found {widened} field layers with query columns, "
                 f"expected {sum(n - 1 for n in layers.values())}")
    cfg.update(xyz_fourier=a.fourier, xyz_fourier_period=a.period)
    meta["model_config"] = json.dumps(cfg)
    meta["fourier_added_to"] = os.path.basename(a.model)
    write(a.out, meta, arrays)
    print(f"add_fourier: {widened} layers widened by {6 * a.fourier} zero columns "
          f"(periods {', '.join(f'{a.period / 2 ** k:g}' for k in range(a.fourier))} Å) -> {a.out}")


if __name__ == "__main__":
    main()
