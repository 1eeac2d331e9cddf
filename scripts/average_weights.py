#!/usr/bin/python3
"""Averages the weights of several snapshots of one training run (stochastic
weight averaging, done after the fact on `nesf train --snapshot-every`
files).

    scripts/average_weights.py --out AVG.safetensors RUN/epoch-0006.safetensors RUN/epoch-0007.safetensors ...

Why: from one epoch to the next the decoded atom count wanders by two
points while the val loss falls (docs/training.md, stage 7); the mean of
neighbouring snapshots sits nearer the middle of that valley than any one
of them. Every tensor, BatchNorm running statistics included, is the plain
mean; the metadata (config, species, bounding box, domain) is the last
file's, plus "averaged_from". The inputs must share names, shapes and
dtypes (F32 only). The output is written to a temp file, then renamed.
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
    ap.add_argument("--out", required=True)
    ap.add_argument("inputs", nargs="+")
    a = ap.parse_args()
    total, names, header = None, None, None
    for path in a.inputs:
        header, data = read(path)
        cur = dict(tensors(header, data, "average_weights"))
        if total is None:
            total = {k: v.astype(np.float64) for k, v in cur.items()}
            names = list(cur)
            continue
        if set(cur) != set(total) or any(cur[k].shape != total[k].shape for k in cur):
            sys.exit(f"average_weights: {path}: tensors differ from {a.inputs[0]}")
        for k in cur:
            total[k] += cur[k]
    meta = dict(header.get("__metadata__", {}))
    meta["averaged_from"] = json.dumps([os.path.basename(p) for p in a.inputs])
    write(a.out, meta, {k: total[k] / len(a.inputs) for k in names})
    print(f"average_weights: {len(a.inputs)} files, {len(names)} tensors -> {a.out}")


if __name__ == "__main__":
    main()
