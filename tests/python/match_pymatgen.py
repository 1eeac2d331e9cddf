#!/usr/bin/python3
"""nesf match against pymatgen's StructureMatcher(ltol=0.3, stol=0.5,
angle_tol=10) on the LCS6 val reconstruction/truth pairs of the committed
fixture (tests/data/match_lcs6_val.jsonl, made by make_match_fixture.py):
the verdicts must agree on >= 99 % of the pairs, and the RMS on >= 99 % of
the pairs both call a match (within 1e-4).  Needs neither pymatgen nor a
decode; skips (77) without ../shared's val.jsonl.

    match_pymatgen.py NESF VAL.jsonl FIXTURE.jsonl"""
import json
import os
import subprocess
import sys
import tempfile

nesf, val, fixture = sys.argv[1:4]
if not os.path.exists(val):
    print("skipped: no %s" % val)
    sys.exit(77)
truth = {json.loads(l)["id"]: l for l in open(val) if l.strip()}
pairs = [json.loads(l) for l in open(fixture) if l.strip()]
with tempfile.TemporaryDirectory() as tmp:
    a, b = os.path.join(tmp, "truth.jsonl"), os.path.join(tmp, "recon.jsonl")
    with open(a, "w") as fa, open(b, "w") as fb:
        for p in pairs:
            fa.write(truth[p["id"]].rstrip("\n") + "\n")
            fb.write(json.dumps(p["recon"]) + "\n")
    r = subprocess.run([nesf, "match", "--json", a, b], capture_output=True, text=True, timeout=300)
    if r.returncode not in (0, 1):
        print("nesf match failed (%d): %s" % (r.returncode, r.stderr))
        sys.exit(1)
    got = json.loads(r.stdout)
n = len(pairs)
agree = sum(g["match"] == p["pymatgen_fit"] for g, p in zip(got["pairs"], pairs))
both = [(g, p) for g, p in zip(got["pairs"], pairs) if g["match"] and p["pymatgen_fit"]]
rms_ok = sum(abs(g["rms"] - p["pymatgen_rms"]) < 1e-4 for g, p in both)
print("verdicts agree on %d of %d pairs (%.2f %%); nesf %d matches, pymatgen %d" % (
    agree, n, 100.0 * agree / n, got["matched"], sum(p["pymatgen_fit"] for p in pairs)))
print("RMS within 1e-4 on %d of %d pairs both match; nesf match took %.3f s" % (rms_ok, len(both), got["seconds"]))
for g, p in zip(got["pairs"], pairs):
    if g["match"] != p["pymatgen_fit"]:
        print("  differs: %s (pair %d): nesf %s (%s), pymatgen %s" % (p["id"], p["index"], g["match"], g["reason"],
                                                                     p["pymatgen_fit"]))
ok = n >= 100 and agree >= 0.99 * n and both and rms_ok >= 0.99 * len(both)
print("ok" if ok else "FAIL")
sys.exit(0 if ok else 1)
