#!/usr/bin/python3
"""nesf-client against a real nesfd: every command, its file formats, and its
errors (server down, error answers, bad input, missing token).
Env: NESFD (binary), NESF_SOURCE_ROOT; NESF_TEST_MODEL optional."""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nesfd_proc import ROOT, TEST_OPTIONS, Nesfd, free_port  # noqa: E402

CLIENT = os.path.join(ROOT, "clients", "cli", "nesf-client")
EXAMPLES = {e["name"]: e["structure"] for e in
            json.load(open(os.path.join(ROOT, "clients", "web", "examples", "examples.json")))["examples"]}
results = []


def check(fn):
    t0 = time.time()
    try:
        fn()
        results.append(True)
        print("ok   %s (%.1f s)" % (fn.__name__, time.time() - t0))
    except Exception as e:  # noqa: BLE001
        results.append(False)
        print("FAIL %s: %s: %s" % (fn.__name__, type(e).__name__, e))
    return fn


def need(cond, msg):
    if not cond:
        raise AssertionError(msg)


def client(*args, url=None, env=None, stdin=None):
    """Runs nesf-client; decoding commands get TEST_OPTIONS (--option) to stay quick."""
    if args and args[0] in ("decode", "interpolate", "reconstruct"):
        for k, v in TEST_OPTIONS.items():
            args = args + ("--option", "%s=%s" % (k, v))
    e = {k: v for k, v in os.environ.items() if k not in ("NESF_URL", "NESF_TOKEN")}
    e.update(env or {})
    return subprocess.run([sys.executable, CLIENT] + (["--url", url] if url else []) + list(args),
                          capture_output=True, text=True, env=e, input=stdin, timeout=300)


def cif_text(structure):
    """A CIF written independently of nesf (pymatgen), so the server parses a foreign file."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter
    s = Structure(Lattice(structure["lattice"]["matrix"]), structure["species"], structure["frac_coords"])
    return str(CifWriter(s))


def frames_formulas(answer):
    return [(round(f["t"], 9), f.get("formula"), f.get("error", {}).get("code")) for f in answer["frames"]]


def read_rows(path):
    return [[float(x) for x in line.split()] for line in open(path) if line.strip()]


def same_structure(a, b, tol=1e-3):
    """Equal up to float noise: the latents of lat.txt and lat.json come from
    encode batches of different sizes, whose GEMMs round differently."""
    if "error" in a or "error" in b:
        return ("error" in a) == ("error" in b)
    if (a.get("formula"), a.get("num_atoms"), a.get("species")) != (b.get("formula"), b.get("num_atoms"), b.get("species")):
        return False
    ma, mb = a["lattice"]["matrix"], b["lattice"]["matrix"]
    return all(abs(x - y) < tol for ra, rb in zip(ma, mb) for x, y in zip(ra, rb))


def fast(body, options=TEST_OPTIONS):
    return dict(body, options=options)


work = tempfile.mkdtemp(prefix="nesf-client-")
W = lambda *p: os.path.join(work, *p)  # noqa: E731
for name in ("ZnS", "CdS", "NaCl"):
    with open(W(name + ".cif"), "w") as f:
        f.write(cif_text(EXAMPLES[name]))
    with open(W(name + ".json"), "w") as f:
        json.dump(EXAMPLES[name], f)
with open(W("two.jsonl"), "w") as f:
    f.write(json.dumps(EXAMPLES["MgO"]) + "\n\n" + json.dumps(EXAMPLES["BaTiO3"]) + "\n")

daemon = Nesfd().start()
URL = daemon.url
state = {}


@check
def help_explains_install():
    r = client("--help")
    need(r.returncode == 0, r.stderr)
    need("standard library" in r.stdout and "NESF_URL" in r.stdout, "--help does not say how to install/point it")


@check
def models_lists_the_model():
    r = client("models", url=URL)
    need(r.returncode == 0, r.stderr)
    need(r.stdout.startswith("test"), "models printed %r" % r.stdout)
    raw = json.loads(client("models", "--json", url=URL).stdout)
    need(raw == daemon.get("/models"), "models --json differs from GET /models")
    r = client("health", env={"NESF_URL": URL})
    need(r.returncode == 0 and json.loads(r.stdout), "health via NESF_URL: %s" % r.stderr)


@check
def server_down_is_explained():
    r = client("models", url="http://127.0.0.1:%d" % free_port())
    need(r.returncode == 3, "exit %d" % r.returncode)
    need("cannot reach nesfd" in r.stderr and "running" in r.stderr, r.stderr)
    r = client("decode", W("nothing.json"), url=URL)
    need(r.returncode == 2 and "nothing.json" in r.stderr, "missing file: %d %s" % (r.returncode, r.stderr))


@check
def encode_cif_json_jsonl():
    r = client("encode", W("ZnS.cif"), W("CdS.json"), W("two.jsonl"), "-o", W("lat.json"), url=URL)
    need(r.returncode == 0, r.stderr)
    lat = json.load(open(W("lat.json")))["latents"]
    need(len(lat) == 4, "%d latents" % len(lat))
    size = len(lat[0])
    need(size > 0 and all(len(z) == size and all(math.isfinite(x) for x in z) for z in lat), "bad latents")
    # the CIF and the JSON of the same structure encode alike
    want = daemon.post("/encode", {"structures": [EXAMPLES["ZnS"], EXAMPLES["CdS"], EXAMPLES["MgO"], EXAMPLES["BaTiO3"]]})
    for a, b in zip(lat, want["latents"]):
        need(max(abs(x - y) for x, y in zip(a, b)) < 1e-4, "client latents differ from /encode's")
    r = client("encode", W("ZnS.cif"), W("CdS.json"), "-o", W("lat.txt"), url=URL)
    need(r.returncode == 0, r.stderr)
    rows = [l.split() for l in open(W("lat.txt")) if l.strip()]
    need(len(rows) == 2 and len(rows[0]) == size, "text latents: %d rows" % len(rows))
    state["size"] = size


@check
def decode_to_directory_and_stdout():
    lat = json.load(open(W("lat.json")))
    lat["latents"] = lat["latents"][:2]  # ZnS.cif and CdS.json, as in lat.txt
    with open(W("lat2.json"), "w") as f:
        json.dump(lat, f)
    want = daemon.post("/decode", fast({"latents": lat["latents"], "format": ["json", "cif"]}))
    ok = [(i, s) for i, s in enumerate(want["structures"]) if "error" not in s]
    need(ok, "the test model decodes none of the latents: %s" % want)
    # items that did not decode are reported and skipped, and the exit code says so
    code = 0 if len(ok) == 2 else 1
    r = client("decode", W("lat2.json"), "-o", W("dec"), url=URL)
    need(r.returncode == code, "exit %d, want %d: %s" % (r.returncode, code, r.stderr))
    need(r.stderr.count("did not decode:") == 2 - len(ok), "failed items not reported: %s" % r.stderr)
    files = sorted(os.listdir(W("dec")))
    need(len(files) == len(ok) and all(f.endswith(".cif") for f in files), files)
    for f, (i, s) in zip(files, ok):
        text = open(W("dec", f)).read()
        need(text.strip() == s["cif"].strip(), "%s differs from the API's CIF" % f)
        need(f == "%03d_%s.cif" % (i, s.get("formula") or "empty"), "%s not named by index and formula %r" % (f, s.get("formula")))
    # text latents from stdin, JSON to stdout: the same structures
    r = client("decode", "-", "--format", "json", url=URL, stdin=open(W("lat.txt")).read())
    got = json.loads(r.stdout)["structures"]
    need(len(got) == 2 and all(same_structure(a, b) for a, b in zip(got, want["structures"][:2])),
         "stdin decode differs: %s" % r.stderr)
    # one multi-block CIF
    r = client("decode", W("lat2.json"), "-o", W("all.cif"), url=URL)
    need(r.returncode == code and open(W("all.cif")).read().count("data_") >= len(ok), "multi-block CIF")
    # --paper asks for the paper's algorithm; --option keeps words and booleans
    one = W("one.txt")
    with open(one, "w") as f:
        f.write(open(W("lat.txt")).readline())
    want = daemon.post("/decode", fast({"latents": read_rows(one)}, dict(TEST_OPTIONS, mode="paper")))
    for flags in (("--paper",), ("--option", "mode=paper", "--option", "repair_lattice=1")):
        r = client("decode", one, *flags, "--format", "json", url=URL)
        need(r.returncode == 0, "%s: %s" % (flags, r.stderr))
        need(same_structure(json.loads(r.stdout)["structures"][0], want["structures"][0]), "%s: %s" % (flags, r.stderr))
    r = client("decode", one, "--option", "mode=slow", url=URL)
    need(r.returncode == 1 and "mode" in r.stderr, "a bad option value is the daemon's error: %r" % r.stderr)


@check
def interpolate_structures_and_latents():
    want = daemon.post("/interpolate", fast({"from": {"cif": open(W("ZnS.cif")).read()}, "to": EXAMPLES["NaCl"], "steps": 4}))
    failed = sum("error" in f for f in want["frames"])
    r = client("interpolate", W("ZnS.cif"), W("NaCl.json"), "--steps", "4", "-o", W("path.json"), "--format", "json", url=URL)
    need(r.returncode == (1 if failed else 0), r.stderr)
    got = json.load(open(W("path.json")))
    need(frames_formulas(got) == frames_formulas(want), "%s != %s" % (frames_formulas(got), frames_formulas(want)))
    listed = [l.split(None, 1) for l in r.stderr.splitlines() if l.startswith("t=")]
    label = lambda f: "(did not decode: %s)" % f["error"]["code"] if "error" in f else f["formula"] or "(no atoms)"  # noqa: E731
    need([(t[2:], f) for t, f in listed] == [("%.3f" % f["t"], label(f)) for f in want["frames"]],
         "formula list on stderr: %r" % r.stderr)
    need("path.json\n" in r.stderr, "written file not named: %r" % r.stderr)
    # ends given as latents (encode's text output) decode along the same path
    client("encode", W("ZnS.cif"), "-o", W("a.txt"), url=URL)
    client("encode", W("NaCl.json"), "-o", W("b.json"), url=URL)
    r = client("interpolate", W("a.txt"), W("b.json"), "--steps", "4", "-o", W("path2.json"), "--format", "json", "-q", url=URL)
    need(r.returncode == (1 if failed else 0), r.stderr)
    need(frames_formulas(json.load(open(W("path2.json")))) == frames_formulas(want), "latent ends give another path")
    names = ["%03d_t%.3f_%s.cif" % (i, f["t"], f.get("formula") or "empty")
             for i, f in enumerate(want["frames"]) if "error" not in f]
    r = client("interpolate", W("ZnS.cif"), W("NaCl.json"), "--steps", "4", "-o", W("frames"), "-q", url=URL)
    need(sorted(os.listdir(W("frames"))) == names, "%s != %s (%s)" % (sorted(os.listdir(W("frames"))), names, r.stderr))


@check
def reconstruct():
    r = client("reconstruct", W("NaCl.cif"), "--format", "json", url=URL)
    ans = json.loads(r.stdout)
    need(len(ans["structures"]) == 1, "structures: %d" % len(ans["structures"]))
    need(r.returncode == (1 if "error" in ans["structures"][0] else 0), r.stderr)
    want = daemon.post("/reconstruct", fast({"structures": [EXAMPLES["NaCl"]]}))
    strip = lambda l: [{k: v for k, v in x.items() if k != "cif"} for x in l]  # noqa: E731
    need(strip(ans["structures"]) == strip(want["structures"]), "client and API reconstruct differently")


@check
def self_check():
    """--self-check: the daemon's verdict of each structure on stderr, for
    reconstruct, decode and interpolate; the API answer carries it."""
    r = client("reconstruct", W("two.jsonl"), "--format", "json", "--self-check", url=URL)
    need(r.returncode == 0, r.stderr)
    want = daemon.post("/reconstruct", fast({"structures": [EXAMPLES["MgO"], EXAMPLES["BaTiO3"]], "self_check": True}))
    got = json.loads(r.stdout)["structures"]
    need([s["confidence"] for s in got] == [s["confidence"] for s in want["structures"]], "verdicts differ")
    yes = ["self-consistent: %s" % {True: "yes", False: "no", None: "unchecked"}[s["confidence"]["self_consistent"]]
           for s in got]
    lines = [line for line in r.stderr.splitlines() if line[:1].isdigit()]  # "i: formula, ..."
    need(len(lines) == 2 and all(y in line for y, line in zip(yes, lines)), "summary lines: %r" % r.stderr)
    with open(W("sc-lat.json"), "w") as f:
        json.dump({"latents": want["latents"]}, f)
    r = client("decode", W("sc-lat.json"), "--format", "json", "--self-check", url=URL)
    need(r.returncode == 0 and r.stderr.count("self-consistent: ") == 2, r.stderr)
    r = client("interpolate", W("sc-lat.json"), W("NaCl.json"), "--steps", "2", "--format", "json",
               "--self-check", url=URL)
    need(r.returncode == 0 and r.stderr.count("self-consistent: ") == 2, r.stderr)
    r = client("reconstruct", W("NaCl.cif"), "--format", "json", url=URL)
    need("self-consistent" not in r.stderr and "self_consistent" not in r.stdout, "without --self-check: %r" % r.stderr)


@check
def reconstruct_symmetrized():
    """--symmetrize: the bundled NaCl and ZnS come back as Fm-3m and F-43m at
    the daemon's default decoding (not TEST_OPTIONS' coarse grid) and the
    default symprec (0.1 Å: no atom moves farther), given the model
    reconstructs their atom count (docs/trust.md)."""
    with open(W("ZnS-NaCl.jsonl"), "w") as f:
        f.write(json.dumps(EXAMPLES["NaCl"]) + "\n" + json.dumps(EXAMPLES["ZnS"]) + "\n")
    e = {k: v for k, v in os.environ.items() if k not in ("NESF_URL", "NESF_TOKEN")}
    r = subprocess.run([sys.executable, CLIENT, "--url", URL, "reconstruct", W("ZnS-NaCl.jsonl"), "--format",
                        "json", "--symmetrize"], capture_output=True, text=True, env=e,
                       timeout=300)
    need(r.returncode == 0, r.stderr)
    got = json.loads(r.stdout)["structures"]
    plain = daemon.post("/reconstruct", {"structures": [EXAMPLES["NaCl"], EXAMPLES["ZnS"]]})["structures"]
    for name, sym, s, p in zip(("NaCl", "ZnS"), ("Fm-3m", "F-43m"), got, plain):
        need(p["num_atoms"] == len(EXAMPLES[name]["species"]),
             "%s: the model reconstructs %d atoms of %d" % (name, p["num_atoms"], len(EXAMPLES[name]["species"])))
        need(s["spacegroup"]["symbol"] == sym and s["num_atoms"] == 8, "%s: %s" % (name, s["spacegroup"]))
        need("%s, 8 atoms, %s" % (s["formula"], sym) in r.stderr, "summary line: %r" % r.stderr)
    r = client("reconstruct", W("NaCl.cif"), "--symprec", "0.2", url=URL)
    need(r.returncode == 2 and "--symmetrize" in r.stderr, r.stderr)


@check
def domain_warnings_on_stderr():
    """A structure far outside the model's training domain: the daemon's warnings reach stderr."""
    big = dict(EXAMPLES["NaCl"])
    big["lattice"] = {"matrix": [[3 * x for x in row] for row in EXAMPLES["NaCl"]["lattice"]["matrix"]]}
    big.pop("cart_coords", None)
    with open(W("big.json"), "w") as f:
        json.dump(big, f)
    r = client("encode", W("big.json"), "-o", W("big-lat.json"), url=URL)
    need(r.returncode == 0, r.stderr)
    want = daemon.post("/encode", {"structures": [big]})["warnings"][0]
    need(want, "the daemon found nothing outside the domain: %s" % want)
    for w in want:
        need("warning %s: %s" % (w["code"], w["message"]) in r.stderr, "%s not on stderr: %r" % (w["code"], r.stderr))


@check
def server_errors_are_reported():
    with open(W("broken.cif"), "w") as f:
        f.write("data_x\n_cell_length_a 4\n_cell_length_b nope\n")
    r = client("encode", W("broken.cif"), url=URL)
    need(r.returncode == 1, "exit %d: %s" % (r.returncode, r.stderr))
    need("nesfd answered 4" in r.stderr and "request id" in r.stderr, r.stderr)
    with open(W("wrong_size.json"), "w") as f:
        json.dump([[0.5] * (state.get("size", 3) + 1)], f)
    r = client("decode", W("wrong_size.json"), url=URL)
    need(r.returncode == 1 and "request id" in r.stderr, "wrong latent size: %d %s" % (r.returncode, r.stderr))
    r = client("decode", W("lat.json"), "--model", "no-such-model", url=URL)
    need(r.returncode == 1 and "no-such-model" in r.stderr, "unknown model after the command: %s" % r.stderr)
    r = client("--model", "no-such-model", "decode", W("lat.json"), url=URL)
    need(r.returncode == 1 and "no-such-model" in r.stderr, "unknown model: %s" % r.stderr)


@check
def bad_input_stays_local():
    with open(W("nan.txt"), "w") as f:
        f.write("0.1 nan 0.3\n")
    r = client("decode", W("nan.txt"), url=URL)
    need(r.returncode == 2 and "NaN" in r.stderr, "NaN latent: %d %s" % (r.returncode, r.stderr))
    with open(W("ragged.txt"), "w") as f:
        f.write("1 2 3\n1 2\n")
    r = client("decode", W("ragged.txt"), url=URL)
    need(r.returncode == 2 and "different lengths" in r.stderr, r.stderr)
    r = client("interpolate", W("ZnS.cif"), W("NaCl.cif"), "--steps", "1", url=URL)
    need(r.returncode == 2, "steps 1 accepted")
    # a failed run leaves no half-written output
    r = client("encode", W("broken.cif"), "-o", W("never.json"), url=URL)
    need(not os.path.exists(W("never.json")), "output written on failure")
    need(not [f for f in os.listdir(work) if f.startswith(".nesf-client-")], "temp files left behind")


@check
def bearer_token():
    tok = W("token")
    with open(tok, "w") as f:
        f.write("s3cret-token\n")
    with Nesfd(extra=["--token-file", tok], token="s3cret-token") as d:
        r = client("models", url=d.url)
        need(r.returncode == 1 and "401" in r.stderr and "--token" in r.stderr, "no token: %s" % r.stderr)
        r = client("models", "--token", "s3cret-token", url=d.url)
        need(r.returncode == 0, r.stderr)
        r = client("models", url=d.url, env={"NESF_TOKEN": "s3cret-token"})
        need(r.returncode == 0, "NESF_TOKEN: %s" % r.stderr)


rc = daemon.stop()
if rc not in (0, None):
    results.append(False)
    print("FAIL nesfd exit status %s on SIGTERM:\n%s" % (rc, daemon.output()))
passed = sum(results)
print("%d passed, %d failed" % (passed, len(results) - passed))
sys.exit(0 if passed == len(results) else 1)
