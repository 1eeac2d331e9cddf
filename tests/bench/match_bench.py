#!/usr/bin/python3
"""Speed of nesf match beside pymatgen's StructureMatcher(ltol=0.3, stol=0.5,
angle_tol=10) on the same reconstruction/truth pairs (the LCS6 val fixture
of tests/data/match_lcs6_val.jsonl): StructureMatcher.fit plus get_rms_dist
for the matches (what nesf match reports), against `nesf match`'s own timing
of the same work (parsing excluded on both sides).

    match_bench.py NESF VAL.jsonl FIXTURE.jsonl [REPEATS]"""
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

nesf, val, fixture = sys.argv[1:4]
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
truth = {json.loads(l)["id"]: json.loads(l) for l in open(val) if l.strip()}
pairs = [json.loads(l) for l in open(fixture) if l.strip()]
st = lambda d: Structure(Lattice(d["lattice"]["matrix"]), d["species"], d["cart_coords"], coords_are_cartesian=True)  # noqa: E731
A = [st(truth[p["id"]]) for p in pairs]
B = [st(p["recon"]) for p in pairs]
sm = StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)
best_fit = best_all = float("inf")
for _ in range(reps):
    t0 = time.perf_counter()
    fits = [sm.fit(a, b) for a, b in zip(A, B)]
    t1 = time.perf_counter()
    [sm.get_rms_dist(a, b) for a, b, f in zip(A, B, fits) if f]
    t2 = time.perf_counter()
    best_fit, best_all = min(best_fit, t1 - t0), min(best_all, t2 - t0)
with tempfile.TemporaryDirectory() as tmp:
    a, b = os.path.join(tmp, "a.jsonl"), os.path.join(tmp, "b.jsonl")
    with open(a, "w") as fa, open(b, "w") as fb:
        for p in pairs:
            fa.write(json.dumps(truth[p["id"]]) + "\n")
            fb.write(json.dumps(p["recon"]) + "\n")
    secs = min(json.loads(subprocess.run([nesf, "match", "--json", a, b], capture_output=True, text=True).stdout)["seconds"]
               for _ in range(reps))
print("%d pairs: pymatgen fit %.3f s, fit + rms %.3f s; nesf match (fit + rms) %.4f s" % (len(pairs), best_fit, best_all, secs))
print("speed-up: %.0fx over pymatgen's fit alone, %.0fx over fit + rms" % (best_fit / secs, best_all / secs))
