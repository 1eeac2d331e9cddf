#!/usr/bin/python3
"""The nesf_client Python package against a real nesfd.

1. `pip install --no-build-isolation --no-index` of a copy of clients/python
   into a fresh venv made with --system-site-packages (Debian's pip,
   setuptools, pymatgen and ASE; nothing downloaded), as docs/clients.md
   tells users;
2. in that venv's Python, the installed package (not the source tree):
   Client.models/health, encode() of a pymatgen Structure, ASE Atoms, CIF
   text and CIF/JSON paths (the same crystal must give the same latent every
   way), decode() to pymatgen Structures, ASE Atoms, CIF and dicts, agreeing
   with the raw /decode answer, numpy and single-vector latents,
   reconstruct, interpolate, and errors (bad latent length, bad input type,
   server down);
3. the installed `nesf-client` entry point.
Env: NESFD, NESF_SOURCE_ROOT (NESF_TEST_MODEL optional)."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nesfd_proc import ROOT, Nesfd  # noqa: E402

CHECKS = r'''
import json, math, os, sys, warnings
import numpy as np
import nesf_client
from nesf_client import Client, NesfError
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
import ase
from ase.io import write as ase_write

url, tmp, options, examples = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
assert os.path.realpath(nesf_client.__file__).startswith(os.path.realpath(sys.prefix)), nesf_client.__file__
c = Client(url, options=options)
ok = []

def check(name, cond, detail=""):
    assert cond, "%s: %s" % (name, detail)
    ok.append(name)

check("health", c.health()["status"] == "ok")
models = c.models()
check("models", models[0]["name"] == "test" and models[0]["latent_size"] == 192, models)
L = models[0]["latent_size"]

ex = {e["name"]: e["structure"] for e in json.load(open(examples))["examples"]}
first = next(iter(ex.values()))
pmg = Structure(Lattice(first["lattice"]["matrix"]), first["species"], first["frac_coords"])
atoms = ase.Atoms(symbols=[str(s) for s in first["species"]], cell=first["lattice"]["matrix"],
                  scaled_positions=first["frac_coords"], pbc=True)
cif = str(CifWriter(pmg))
cif_path = os.path.join(tmp, "x.cif")
open(cif_path, "w").write(cif)
json_path = os.path.join(tmp, "x.json")
json.dump(first, open(json_path, "w"))

z = c.encode([pmg, atoms, cif, cif_path, json_path, first])
check("encode kinds", len(z) == 6 and all(len(v) == L for v in z))
def near(a, b, tol):
    return max(abs(x - y) for x, y in zip(a, b)) < tol
# a CIF rounds coordinates; Structure, Atoms, JSON file and dict are exact
check("encode agrees", all(near(z[0], v, 1e-4) for v in z[1:]) and near(z[0], z[4], 1e-6), [max(abs(x - y) for x, y in zip(z[0], v)) for v in z])
check("encode one", near(c.encode(pmg)[0], z[0], 1e-5))

raw = c._call("POST", "/decode", {"latents": z[:2], "options": options})["structures"]
out = c.decode(z[:2])
check("decode pymatgen", all(isinstance(s, Structure) for s in out), out)
for s, r in zip(out, raw):
    check("pymatgen species", [str(x.specie) for x in s] == r["species"], (s, r["species"]))
    check("pymatgen lattice", near(sum(s.lattice.matrix.tolist(), []), sum(r["lattice"]["matrix"], []), 1e-6))
a = c.decode(z[:2], as_="ase")
check("decode ase", all(isinstance(x, ase.Atoms) for x in a))
for x, r in zip(a, raw):
    check("ase species", x.get_chemical_symbols() == r["species"])
    check("ase positions", near(x.get_positions().ravel().tolist(), sum(r["cart_coords"], []), 1e-6))
cifs = c.decode(z[:1], as_="cif")
check("decode cif", "_cell_length_a" in cifs[0])
check("decode cif parses", len(Structure.from_str(cifs[0], fmt="cif")) == len(out[0]))
d = c.decode(z[:1], as_="dict")
check("decode dict", d[0]["species"] == raw[0]["species"])
check("decode numpy", [str(x.specie) for x in c.decode(np.array(z[:1]))[0]] == raw[0]["species"])
check("decode one vector", len(c.decode(z[0])) == 1)

rec, lat = c.reconstruct([pmg, atoms], return_latents=True)
check("reconstruct", all(isinstance(s, Structure) for s in rec) and len(lat) == 2 and near(lat[0], z[0], 1e-5))
zr = c.encode([pmg], refine={"steps": 2, "global_fraction": 0.05, "species_fraction": 0.05})
check("encode refine", len(zr) == 1 and not near(zr[0], z[0], 1e-7))
check("encode refine=False", near(c.encode([pmg], refine=False)[0], z[0], 1e-5))
frames = c.interpolate(pmg, z[0], steps=3, as_="ase")
check("interpolate", [round(t, 6) for t, _ in frames] == [0.0, 0.5, 1.0] and isinstance(frames[0][1], ase.Atoms), frames)

# self_check: the verdicts of the raw API, the same for the same latents through every call
raw_sc = c._call("POST", "/reconstruct", {"structures": [first, first], "options": options, "self_check": True})
want_sc = [x["confidence"]["self_consistent"] for x in raw_sc["structures"]]
rec_sc, lat_sc, ver = c.reconstruct([pmg, first], return_latents=True, self_check=True)
check("reconstruct self_check", ver == want_sc and all(isinstance(v, bool) for v in ver) and len(rec_sc) == 2, ver)
check("reconstruct self_check alone", len(c.reconstruct(pmg, self_check=True)) == 2)
dec_sc, ver_d = c.decode(raw_sc["latents"], as_="dict", self_check=True)
check("decode self_check", ver_d == want_sc and "redecoded_atoms" in dec_sc[0]["confidence"], ver_d)
check("decode without self_check", "self_consistent" not in c.decode(z[:1], as_="dict")[0]["confidence"])
fr = c.interpolate(raw_sc["latents"][0], raw_sc["latents"][1], steps=2, self_check=True)
check("interpolate self_check", [v for _, _, v in fr] == want_sc and isinstance(fr[0][1], Structure), fr)

def raises(fn, want):
    try:
        fn()
    except NesfError as e:
        check("raises " + want, want in str(e), str(e))
        return e
    raise AssertionError("no NesfError for " + want)
raises(lambda: c.decode([[0.1] * (L - 1)]), "latent size")
raises(lambda: c.encode(42), "cannot send a int")
raises(lambda: c.encode("no-such-file.cif"), "neither CIF text nor an existing file")
raises(lambda: c.decode(z[:1], as_="xyz"), "as_ must be one of")
raises(lambda: c.decode(z[:1], self_check="yes"), "self_check must be True or False")
e = raises(lambda: Client("http://127.0.0.1:9", timeout=5).models(), "cannot reach nesfd")
check("unreachable code", e.code == 3)
print("python checks: %d passed" % len(ok))
'''


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if r.returncode:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), r.returncode, r.stdout[-3000:], r.stderr[-3000:]))
    return r


def main():
    tmp = tempfile.mkdtemp(prefix="nesf-py-")
    try:
        t0 = time.time()
        src = os.path.join(tmp, "src")
        shutil.copytree(os.path.join(ROOT, "clients", "python"), src,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        venv = os.path.join(tmp, "venv")
        run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv])
        py = os.path.join(venv, "bin", "python")
        run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-cache-dir", "-q", src])
        print("ok   pip install --no-build-isolation --no-index (%.1f s)" % (time.time() - t0))
        from nesfd_proc import TEST_OPTIONS
        import json
        with Nesfd() as d:
            t0 = time.time()
            r = run([py, "-c", CHECKS, d.url, tmp, json.dumps(TEST_OPTIONS),
                     os.path.join(ROOT, "clients", "web", "examples", "examples.json")], cwd=tmp)
            print("ok   %s (%.1f s)" % (r.stdout.strip().splitlines()[-1], time.time() - t0))
            exe = os.path.join(venv, "bin", "nesf-client")
            r = run([exe, "--url", d.url, "models"], cwd=tmp)
            if not r.stdout.startswith("test (default)"):
                raise AssertionError("nesf-client models: %r" % r.stdout)
            r = run([exe, "--version"], cwd=tmp)
            print("ok   the installed nesf-client entry point (%s)" % r.stdout.strip())
        print("1 passed, 0 failed")
        return 0
    except AssertionError as e:
        print("FAIL %s" % e)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
