#!/usr/bin/python3
"""scripts/match_rate.py on hand-made pairs of LCS6 val structures: one
reconstruction with an atom removed, one with an atom's element changed,
one shifted rigidly (a match: StructureMatcher is translation invariant),
one identical, one failed (an error record) and one missing: 2 of 6 match.
Skips (77) without pymatgen."""
import json
import os
import subprocess
import sys
import tempfile

try:
    import pymatgen  # noqa: F401
except ImportError:
    sys.exit(77)

script, data = sys.argv[1], sys.argv[2]
truth = [json.loads(l) for l, _ in zip(open(data), range(20))]
multi = [s for s in truth if len(s["species"]) >= 4 and len(set(s["species"])) >= 2][:3]
assert len(multi) == 3, "need three multi-element val structures"
a, b, c = (json.loads(json.dumps(s)) for s in multi)
a["species"], a["cart_coords"] = a["species"][:-1], a["cart_coords"][:-1]   # an atom fewer
assert "Xe" not in b["species"]
b["species"][0] = "Xe"                                                     # an element changed
shift = [0.37, -0.21, 0.15]
c["cart_coords"] = [[x + d for x, d in zip(p, shift)] for p in c["cart_coords"]]  # rigid shift
ids = [s["id"] for s in multi]
with tempfile.TemporaryDirectory() as d:
    t, r = os.path.join(d, "t.jsonl"), os.path.join(d, "r.jsonl")
    extra = next(s for s in truth if s["id"] not in ids)
    fail = {"id": "failed-one", "error": "failed to decode"}
    with open(t, "w") as f:
        for s in multi + [extra, dict(extra, id="failed-one"), dict(extra, id="missing-one")]:
            f.write(json.dumps(s) + "\n")
    with open(r, "w") as f:
        for s in (a, b, c, extra, fail):
            f.write(json.dumps(s) + "\n")
    out = subprocess.run([sys.executable, script, "--truth", t, "--recon", r, "--json", "--list"],
                         capture_output=True, text=True, check=True)
res = json.loads(out.stdout)
print(res)
assert res["structures"] == 6 and res["matched"] == 2, res
assert sorted(res["unmatched"]) == sorted([ids[0], ids[1], "failed-one", "missing-one"]), res
assert abs(res["match_rate_pct"] - 100 * 2 / 6) < 1e-9
print("match_rate: ok")
