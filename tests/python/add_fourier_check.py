#!/usr/bin/python3
"""scripts/add_fourier.py --longer keeps what a model computes.

    add_fourier_check.py ADD_FOURIER_PY NESF MODEL VAL_JSONL

Widens MODEL (one with Fourier query columns, the shipped one) by one
longer period, then decodes the first structures of VAL_JSONL with both
files (encoder latents, fast decoder): the outputs must be the same bytes,
which they are not if a column lands anywhere but where the network reads
that frequency.  Also checks the widths, the recorded config and the
refusals.  Exit 77 (skip) without the data or numpy.
"""
import json
import os
import subprocess
import sys
import tempfile


def run(*args, ok=True):
    p = subprocess.run(args, capture_output=True, text=True)
    if ok and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(args)}: exit {p.returncode}\n{p.stderr}")
    if not ok and p.returncode == 0:
        sys.exit(f"FAIL: {' '.join(args)} should have failed")
    return p


def main():
    script, nesf, model, val = sys.argv[1:5]
    if not os.path.exists(val):
        print(f"skip: {val} not found")
        return 77
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        from safetensors_io import read  # noqa: E402  (needs numpy)
    except ImportError as e:
        print(f"skip: {e}")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "v.jsonl")
        with open(val) as f, open(data, "w") as o:
            o.writelines(f.readlines()[:12])
        wide = os.path.join(tmp, "wide.safetensors")
        run("/usr/bin/python3", script, "--model", model, "--out", wide, "--longer", "1")
        h0, _ = read(model)
        h1, _ = read(wide)
        c0 = json.loads(h0["__metadata__"]["model_config"])
        c1 = json.loads(h1["__metadata__"]["model_config"])
        if c1["xyz_fourier"] != c0["xyz_fourier"] + 1 or \
                abs(c1["xyz_fourier_period"] - 2 * c0["xyz_fourier_period"]) > 1e-6:
            sys.exit(f"FAIL: config {c0} -> {c1}")
        w0 = h0["decoder.position.0.weight"]["shape"]
        w1 = h1["decoder.position.0.weight"]["shape"]
        if w1 != [w0[0], w0[1] + 6]:
            sys.exit(f"FAIL: decoder.position.0.weight {w0} -> {w1}")
        outs = []
        for m in (model, wide):
            out = os.path.join(tmp, os.path.basename(m) + ".out.jsonl")
            run(nesf, "eval", "--model", m, "--data", data, "--options", '{"mode": "fast"}',
                "--refine", "false", "--threads", "1", "--out", out)
            with open(out, "rb") as f:
                outs.append(f.read())
        if not outs[0] or outs[0] != outs[1]:
            sys.exit("FAIL: the widened model decodes differently")
        # refusals: too many frequencies, plain widening of a Fourier model
        run("/usr/bin/python3", script, "--model", model, "--out", wide, "--longer", "8", ok=False)
        run("/usr/bin/python3", script, "--model", model, "--out", wide, ok=False)
    print("ok: --longer 1 decodes the same bytes; widths, config and refusals as documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
