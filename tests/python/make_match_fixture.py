#!/usr/bin/python3
"""Writes tests/data/match_lcs6_val.jsonl once: the fast-decoded
reconstructions of LCS6 val by a model (coordinates rounded to 1e-6) with
pymatgen's verdicts StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10).fit
(truth, reconstruction) and get_rms_dist, so that tests/python/match_pymatgen.py
can compare nesf match with pymatgen without a decode or pymatgen.  The
truth is not stored (it is the dataset): the test reads val.jsonl.

    make_match_fixture.py VAL.jsonl RECON.jsonl OUT.jsonl
RECON.jsonl: `nesf decode --options '{"mode": "fast"}' --format jsonl` of the
val latents (`nesf encode`), one line per val structure."""
import json
import sys
import warnings

warnings.filterwarnings("ignore")
from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402


def structure(d):
    return Structure(Lattice(d["lattice"]["matrix"]), d["species"], d["cart_coords"], coords_are_cartesian=True)


def rounded(d):
    r = lambda v: [[round(x, 6) for x in row] for row in v]  # noqa: E731
    return {"lattice": {"matrix": r(d["lattice"]["matrix"])}, "species": d["species"],
            "cart_coords": r(d["cart_coords"])}


val = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rec = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert len(val) == len(rec)
sm = StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)
with open(sys.argv[3] + ".tmp", "w") as f:
    for i, (t, d) in enumerate(zip(val, rec)):
        d = rounded(d)
        a, b = structure(t), structure(d)
        fit = bool(sm.fit(a, b))
        rms = sm.get_rms_dist(a, b) if fit else None
        f.write(json.dumps({"index": i, "id": t["id"], "recon": d, "pymatgen_fit": fit,
                            "pymatgen_rms": rms[0] if rms else None}, separators=(",", ":")) + "\n")
import os  # noqa: E402
os.replace(sys.argv[3] + ".tmp", sys.argv[3])
