#!/usr/bin/python3
"""Gives a trained model Fourier query columns (model config xyz_fourier,
include/mlp.h) without changing what it computes, so training can go on
from it instead of from scratch.

    scripts/add_fourier.py --model M.safetensors --out M-fourier.safetensors [--fourier 4] [--period 8]
    scripts/add_fourier.py --model M.safetensors --out M-long.safetensors --longer 1

The second form is for a model that has Fourier columns already: --longer N
adds N frequencies below its lowest (the longest period doubles N times,
e.g. 8 -> 16 Å), so cells longer than the old period no longer alias (the
columns of z and z + 8 Å were equal).  The old columns keep their weights
at their new place, the new ones start at zero: again the same fields.

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
    ap.add_argument("--longer", type=int, default=0,
                    help="on a Fourier model: frequencies to add below its lowest")
    a = ap.parse_args()
    if not 1 <= a.fourier <= 8 or not 0.5 <= a.period <= 1000:
        sys.exit("add_fourier: --fourier must be in 1..8 and --period in 0.5..1000 Å")
    header, data = read(a.model)
    meta = dict(header.get("__metadata__", {}))
    cfg = json.loads(meta.get("model_config", "{}"))
    old = cfg.get("xyz_fourier", 0)
    if a.longer:
        if not old:
            sys.exit(f"add_fourier: --longer needs a model with Fourier columns; {a.model} has none")
        if not 1 <= old + a.longer <= 8:
            sys.exit(f"add_fourier: {old} + {a.longer} frequencies: at most 8")
        a.fourier, a.period = old + a.longer, cfg.get("xyz_fourier_period", 8.0) * 2 ** a.longer
    elif old:
        sys.exit(f"add_fourier: {a.model} has Fourier columns already ({old}); see --longer")
    added = 6 * (a.fourier - old)
    # Linear layers of each field (the paper's 9 and 3 without a config, spec §3);
    # all but the last take the query columns
    layers = {"decoder.position": len(cfg.get("pos_hidden", [0] * 8)) + 1,
              "decoder.species": len(cfg.get("spec_hidden", [0] * 2)) + 1}
    arrays, widened = {}, 0
    for name, t in tensors(header, data, "add_fourier"):
        parts = name.split(".")
        field = ".".join(parts[:2])
        if field in layers and parts[3:] == ["weight"] and int(parts[2]) < layers[field] - 1:
            # columns [features, x, y, z, w_0 pairs, w_1 pairs, ...]: the new
            # lowest frequencies go right after x, y, z
            at = t.shape[1] - 6 * old
            z = np.zeros((t.shape[0], added), np.float32)
            t = np.concatenate([t[:, :at], z, t[:, at:]], axis=1)
            widened += 1
        arrays[name] = t
    if widened != sum(n - 1 for n in layers.values()):
        sys.exit(f"add_fourier: {a.model}: found {widened} field layers with query columns, "
                 f"expected {sum(n - 1 for n in layers.values())}")
    cfg.update(xyz_fourier=a.fourier, xyz_fourier_period=a.period)
    meta["model_config"] = json.dumps(cfg)
    meta["fourier_added_to"] = os.path.basename(a.model)
    write(a.out, meta, arrays)
    print(f"add_fourier: {widened} layers widened by {added} zero columns "
          f"(periods {', '.join(f'{a.period / 2 ** k:g}' for k in range(a.fourier))} Å) -> {a.out}")


if __name__ == "__main__":
    main()
