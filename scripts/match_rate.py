#!/usr/bin/python3
"""Match rate of reconstructions against their truth with pymatgen's
StructureMatcher, at the settings generative-crystal papers report
(ltol=0.3, stol=0.5, angle_tol=10; CDVAE and later).

    nesf eval --model M --data val.jsonl --out recon.jsonl
    scripts/match_rate.py --truth val.jsonl --recon recon.jsonl [--json] [--list]
or in one command (runs nesf eval, prints its table, then the match rate):
    scripts/match_rate.py --model M --data val.jsonl [--options JSON] [--refine JSON]
(nesf eval refines each latent by default, as nesfd does; --refine false
gives the encoder's own reconstructions, the paper's autoencoder.)

Both files are JSON Lines in the dataset format (nesf eval --out writes
it, keyed by the data's ids).  A reconstruction that is missing, failed
(an "error" field) or has no atoms counts as not matched, so the rate is
over every truth structure.  Needs Debian's python3-pymatgen.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path):
    """id -> record, in file order."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"match_rate: {path}:{n}: {e}")
            out[rec.get("id", f"#{n}")] = rec
    return out


def to_structure(rec):
    """A pymatgen Structure from a dataset record, or None when it has no
    cell or no atoms (a failed reconstruction)."""
    from pymatgen.core import Lattice, Structure
    if rec is None or rec.get("error") or not rec.get("species"):
        return None
    lat = rec.get("lattice") or {}
    if "matrix" not in lat:
        return None
    return Structure(Lattice(lat["matrix"]), rec["species"], rec["cart_coords"],
                     coords_are_cartesian=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--truth", help="structures (JSON Lines, with ids)")
    ap.add_argument("--recon", help="their reconstructions (nesf eval --out)")
    ap.add_argument("--model", help="run nesf eval with this model first (with --data)")
    ap.add_argument("--data", help="structures to reconstruct (JSON Lines); the truth")
    ap.add_argument("--options", help="decode options for nesf eval (JSON)")
    ap.add_argument("--refine", help="latent refinement for nesf eval (steps or JSON; default nesf eval's: "
                                             "true; false: none)")
    ap.add_argument("--limit", type=int, help="only the first N structures")
    ap.add_argument("--nesf", default=os.path.join(ROOT, "build", "tools", "nesf", "nesf"),
                    help="the nesf binary (default: build/tools/nesf/nesf)")
    ap.add_argument("--ltol", type=float, default=0.3)
    ap.add_argument("--stol", type=float, default=0.5)
    ap.add_argument("--angle-tol", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--list", action="store_true", help="list the structures that do not match")
    a = ap.parse_args()
    try:
        from pymatgen.analysis.structure_matcher import StructureMatcher
    except ImportError:
        sys.exit("match_rate: needs pymatgen (apt-get install python3-pymatgen)")
    tmp = None
    if a.model:
        if not a.data:
            sys.exit("match_rate: --model needs --data")
        tmp = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)
        tmp.close()
        cmd = [a.nesf, "eval", "--model", a.model, "--data", a.data, "--out", tmp.name]
        for flag, v in (("--options", a.options), ("--refine", a.refine), ("--limit", a.limit)):
            if v is not None:
                cmd += [flag, str(v)]
        r = subprocess.run(cmd, stdout=sys.stderr if a.json else None)
        if r.returncode:
            os.unlink(tmp.name)
            sys.exit(f"match_rate: nesf eval failed ({r.returncode})")
        a.truth, a.recon = a.data, tmp.name
    elif not (a.truth and a.recon):
        sys.exit("match_rate: give --truth and --recon, or --model and --data")
    truth, recon = load(a.truth), load(a.recon)
    if tmp:
        os.unlink(tmp.name)
    if a.limit is not None:
        truth = dict(list(truth.items())[:a.limit])
    sm = StructureMatcher(ltol=a.ltol, stol=a.stol, angle_tol=a.angle_tol)
    t0 = time.time()
    matched, rms, unmatched = 0, [], []
    for sid, trec in truth.items():
        t, r = to_structure(trec), to_structure(recon.get(sid))
        d = sm.get_rms_dist(t, r) if t is not None and r is not None else None
        if d is None:
            unmatched.append(sid)
            continue
        matched += 1
        rms.append(d[0])
    n = len(truth)
    res = {"structures": n, "matched": matched,
           "match_rate_pct": 100.0 * matched / n if n else 0.0,
           "mean_rms": sum(rms) / len(rms) if rms else None,
           "settings": {"ltol": a.ltol, "stol": a.stol, "angle_tol": a.angle_tol},
           "seconds": time.time() - t0}
    if a.list:
        res["unmatched"] = unmatched
    if a.json:
        print(json.dumps(res))
        return
    print(f"match rate {res['match_rate_pct']:.2f} % ({matched} of {n}), mean normalised rms "
          f"{res['mean_rms'] if rms else float('nan'):.4f}, StructureMatcher(ltol={a.ltol}, "
          f"stol={a.stol}, angle_tol={a.angle_tol}), {res['seconds']:.1f} s")
    for sid in unmatched if a.list else []:
        print(f"  not matched: {sid}")


if __name__ == "__main__":
    main()
