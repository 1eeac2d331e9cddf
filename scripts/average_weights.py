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
import struct
import sys
import tempfile

import numpy as np


def read(path):
    """Returns (header dict, raw data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        return header, f.read()


def tensors(header, data):
    """Yields (name, float32 array) of every tensor, in file order."""
    for name, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                          key=lambda kv: kv[1]["data_offsets"][0]):
        if t["dtype"] != "F32":
            sys.exit(f"average_weights: {name}: dtype {t['dtype']} (only F32)")
        lo, hi = t["data_offsets"]
        yield name, np.frombuffer(data[lo:hi], dtype="<f4").reshape(t["shape"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("inputs", nargs="+")
    a = ap.parse_args()
    total, names, header = None, None, None
    for path in a.inputs:
        header, data = read(path)
        cur = dict(tensors(header, data))
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
    out_header, blobs, off = {"__metadata__": meta}, [], 0
    for k in names:
        b = (total[k] / len(a.inputs)).astype("<f4").tobytes()
        out_header[k] = {"dtype": "F32", "shape": list(total[k].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(out_header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    d = os.path.dirname(os.path.abspath(a.out))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".avg-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hj)) + hj)
            for b in blobs:
                f.write(b)
        os.replace(tmp, a.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"average_weights: {len(a.inputs)} files, {len(names)} tensors -> {a.out}")


if __name__ == "__main__":
    main()
