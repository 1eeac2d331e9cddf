#!/usr/bin/python3
"""Hard-structure oversampling for nesf train.

Builds a training folder whose train.jsonl holds every structure of the
source split once plus REPEAT-1 more copies of each structure that a model
reconstructs wrongly (a different composition: atom count or species), so
that training spends more of its steps where decoding still fails.  The
reconstructions come from `nesf eval --out` on the same train.jsonl (the
lines correspond one to one).  meta.json and val.jsonl are copied; the
val split is never changed, so val rows stay comparable.

usage: scripts/hard_examples.py --data DIR --recon RECON.jsonl --out DIR [--repeat 3]
"""
import argparse
import collections
import json
import os
import shutil
import sys
import tempfile


def composition(s):
    return collections.Counter(s.get("species") or [])


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (meta.json, train.jsonl, val.jsonl)")
    ap.add_argument("--recon", required=True, help="nesf eval --out of DATA/train.jsonl")
    ap.add_argument("--out", required=True, help="new dataset folder")
    ap.add_argument("--repeat", type=int, default=3, help="copies of each hard structure (default 3)")
    a = ap.parse_args()
    if a.repeat < 1:
        sys.exit("hard_examples.py: --repeat must be >= 1")
    lines = open(os.path.join(a.data, "train.jsonl")).read().splitlines()
    recon = {}
    for l in open(a.recon):
        r = json.loads(l)
        recon.setdefault(r.get("id"), r)
    out, hard = [], 0
    for l in lines:
        t = json.loads(l)
        r = recon.get(t.get("id"))
        bad = r is None or "error" in r or composition(r) != composition(t)
        hard += bad
        out.extend([l] * (a.repeat if bad else 1))
    os.makedirs(a.out, exist_ok=True)
    for f in ("meta.json", "val.jsonl"):
        shutil.copyfile(os.path.join(a.data, f), os.path.join(a.out, f))
    write_atomic(os.path.join(a.out, "train.jsonl"), "\n".join(out) + "\n")
    print(f"{hard} of {len(lines)} structures reconstructed wrongly ({100.0 * hard / len(lines):.2f} %), "
          f"each {a.repeat}x: {len(out)} training structures in {a.out}")


if __name__ == "__main__":
    main()
