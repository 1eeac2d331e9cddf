"""nesf-client: command-line client for the nesfd HTTP/JSON API.

Python 3.8+ standard library only; the command of the nesf_client package
(pip install --no-build-isolation ./clients/python, or clients/cli/nesf-client
from the source tree).

Structures are read from CIF (.cif), structure JSON (.json: one structure, a
list of them, or an API answer with "structures"/"frames") or JSON Lines
(.jsonl, one structure a line, as in the NeSF datasets).  Latents are read
from JSON (a vector, a list of vectors, or {"latents": [...]}) or from text
with one vector a line (numpy.savetxt).

Examples:
  nesf-client models
  nesf-client encode ZnS.cif CdS.cif -o latents.json
  nesf-client decode latents.json -o decoded/            # one CIF per latent
  nesf-client interpolate ZnS.cif CdS.cif --steps 8 -o path/
  nesf-client reconstruct NaCl.cif --format json
  nesf-client reconstruct NaCl.cif --symmetrize --symprec 0.3   # refined to Fm-3m

decode and reconstruct list each structure on stderr: formula, atoms, space
group, whether a reconstruction matches its input, its confidence, and any
warnings the daemon attached.
"""
import argparse
import json
import os
import re
import sys
import tempfile

from .files import read_latents, read_structures, looks_like_latent
from .transport import DEFAULT_URL, EXIT_SERVER, VERSION, Api, ClientError

# the paper's decoding algorithm (spec §5) instead of the daemon's default,
# fast decoding: the reference, about 50x slower on a CPU (the web viewer's
# "paper algorithm" sends the same)
PAPER_OPTIONS = {"mode": "paper"}


def endpoint(path):
    """One end of an interpolation: a latent or a structure."""
    if looks_like_latent(path):
        vecs = read_latents(path)
        if len(vecs) != 1:
            print("nesf-client: %s holds %d latents; using the first" % (path, len(vecs)), file=sys.stderr)
        return {"latent": vecs[0]}
    structs = read_structures(path)
    if len(structs) != 1:
        print("nesf-client: %s holds %d structures; using the first" % (path, len(structs)), file=sys.stderr)
    return structs[0]


# ---------------------------------------------------------------- outputs

def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".nesf-client-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def safe_name(s):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "empty"


def formula_of(item):
    s = item.get("structure", item)
    return item.get("formula") or s.get("formula") or s.get("reduced_formula") or ""


def verdict(conf):
    """--self-check's answer for one structure's confidence block."""
    v = conf.get("self_consistent")
    return "unchecked" if v is None else "yes" if v else "no (re-decodes to %s atoms)" % conf.get("redecoded_atoms")


def frame_label(f):
    if isinstance(f.get("error"), dict):
        return "(did not decode: %s)" % f["error"].get("code", "error")
    conf = (f.get("structure") or {}).get("confidence") or {}
    sc = ", self-consistent: %s" % verdict(conf) if "self_consistent" in conf else ""
    return (formula_of(f) or "(no atoms)") + sc


def cif_of(item):
    return item.get("cif") or item.get("structure", {}).get("cif")


def emit(answer, items, out, fmt, names):
    """Writes items (structures or frames) per the -o convention:
    none: stdout; *.json: the whole answer; *.cif: all CIF blocks in one file;
    anything else: a directory with one file per item.  Items the server
    could not decode ({"error": ...}) are reported and left out; the run then
    ends with exit code 1 after writing the others."""
    failed = [(i, it["error"]) for i, it in enumerate(items) if isinstance(it.get("error"), dict)]
    for i, e in failed:
        print("nesf-client: item %d did not decode: %s: %s" % (i, e.get("code", "?"), e.get("message", "")),
              file=sys.stderr)
    keep = [k for k, it in enumerate(items) if not isinstance(it.get("error"), dict)]
    items, names = [items[k] for k in keep], [names[k] for k in keep]
    _emit(answer, items, out, fmt, names)
    if failed:
        raise ClientError("%d of %d item(s) did not decode" % (len(failed), len(failed) + len(items)), EXIT_SERVER)


def _emit(answer, items, out, fmt, names):
    if fmt == "cif" and any(cif_of(it) is None for it in items):
        raise ClientError("the server sent no CIF text; try --format json", EXIT_SERVER)
    if out is None:
        if fmt == "json":
            sys.stdout.write(json.dumps(answer, indent=1) + "\n")
        else:
            sys.stdout.write("".join(cif_of(it).rstrip("\n") + "\n\n" for it in items))
        return
    try:
        if out.lower().endswith(".json"):
            write_atomic(out, json.dumps(answer, indent=1) + "\n")
            written = [out]
        elif out.lower().endswith(".cif"):
            write_atomic(out, "".join(cif_of(it).rstrip("\n") + "\n\n" for it in items))
            written = [out]
        else:
            os.makedirs(out, exist_ok=True)
            written = []
            for it, name in zip(items, names):
                p = os.path.join(out, name + "." + fmt)
                body = json.dumps(it.get("structure", it), indent=1) + "\n" if fmt == "json" else cif_of(it)
                write_atomic(p, body)
                written.append(p)
    except OSError as e:
        raise ClientError("cannot write %s: %s" % (e.filename or out, e.strerror or e)) from None
    for p in written:
        print(p, file=sys.stderr)


def formats(fmt):
    return ["json", "cif"] if fmt == "cif" else ["json"]


def decode_options(args, body):
    """--paper and --option KEY=VALUE (repeatable) become the request's "options"."""
    opts = {}
    if getattr(args, "paper", False):
        opts.update(PAPER_OPTIONS)
    if getattr(args, "symmetrize", None):
        opts.update(symmetrize=True, cell=args.symmetrize)
        if args.symprec is not None:
            opts["symprec"] = args.symprec
    elif getattr(args, "symprec", None) is not None:
        raise ClientError("--symprec goes with --symmetrize")
    for kv in getattr(args, "option", None) or []:
        key, eq, val = kv.partition("=")
        if not eq or not key:
            raise ClientError("--option wants KEY=VALUE, got %r" % kv)
        if re.fullmatch(r"[-+]?\d+", val):
            opts[key] = int(val)
        elif re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", val):
            opts[key] = float(val)
        elif val in ("true", "false"):
            opts[key] = val == "true"
        else:  # e.g. mode=paper; the daemon names a bad value
            opts[key] = val
    if opts:
        body["options"] = opts
    if getattr(args, "self_check", False):
        body["self_check"] = True
    return body


# ---------------------------------------------------------------- commands

def with_model(args, body):
    if args.model:
        body["model"] = args.model
    if getattr(args, "refine", None) is not None:
        body["refine"] = args.refine
    return body


def refine_flag(s):
    g = s.add_mutually_exclusive_group()
    g.add_argument("--refine", nargs="?", type=int, const=40, metavar="STEPS",
                   help="refinement steps of each structure's latent on the structure itself "
                        "(the daemon refines by default, 40 steps; docs/training.md)")
    g.add_argument("--no-refine", dest="refine", action="store_const", const=0,
                   help="the encoder's latent alone: faster, less accurate")


def cmd_health(api, args):
    ans = api.call("GET", "/health")
    print(json.dumps(ans, indent=1))


def cmd_models(api, args):
    ans = api.call("GET", "/models")
    models = ans.get("models", ans) if isinstance(ans, dict) else ans
    if args.json or not isinstance(models, list):
        print(json.dumps(ans, indent=1))
        return
    for m in models:
        if isinstance(m, str):
            print(m)
            continue
        extra = ["%s=%s" % (k, m[k]) for k in ("latent_size", "species", "backend", "parameters") if k in m
                 and not isinstance(m[k], (list, dict))]
        print("%s%s  %s" % (m.get("name", "?"), " (default)" if m.get("default") else "", " ".join(extra)))


def cmd_encode(api, args):
    structs, names = [], []
    for p in args.files:
        s = read_structures(p)
        structs += s
        names += [p] * len(s)
    ans = api.call("POST", "/encode", with_model(args, {"structures": structs}))
    lat = ans.get("latents")
    if not isinstance(lat, list) or len(lat) != len(structs):
        raise ClientError("/encode answered %s latents for %d structures" % (
            len(lat) if isinstance(lat, list) else "no", len(structs)), EXIT_SERVER)
    for i, ws in enumerate(ans.get("warnings") or []):  # the daemon's domain check of each input
        for w in ws or []:
            print("nesf-client: structure %d (%s): warning %s: %s" % (i, names[i], w.get("code", "?"), w.get("message", "")),
                  file=sys.stderr)
    if args.output and args.output.lower().endswith(".txt"):
        text = "".join(" ".join(repr(float(x)) for x in z) + "\n" for z in lat)
    else:
        text = json.dumps(ans, indent=None if args.compact else 1) + "\n"
    if args.output:
        try:
            write_atomic(args.output, text)
        except OSError as e:
            raise ClientError("cannot write %s: %s" % (args.output, e.strerror or e)) from None
        print("%s: %d latent(s) of size %d" % (args.output, len(lat), len(lat[0]) if lat else 0), file=sys.stderr)
    else:
        sys.stdout.write(text)


def _structures_answer(ans, want, what):
    items = ans.get("structures")
    if not isinstance(items, list) or len(items) != want:
        raise ClientError("%s answered %s structures for %d inputs" % (
            what, len(items) if isinstance(items, list) else "no", want), EXIT_SERVER)
    return items


def summary(items):
    """One stderr line per decoded structure: formula, atoms, space group, warnings."""
    for i, it in enumerate(items):
        if isinstance(it.get("error"), dict):
            continue
        sg = it.get("spacegroup") or {}
        line = "%d: %s, %s atoms, %s" % (i, formula_of(it) or "(no atoms)", it.get("num_atoms", "?"),
                                        sg.get("symbol", "no space group"))
        m = it.get("match")
        if isinstance(m, dict) and "match" in m:
            line += ", %s the input" % ("matches (rms %.3f)" % m["rms"] if m["match"] and m.get("rms") is not None
                                        else "matches" if m["match"] else "does not match (%s)" % m.get("reason", "?"))
        conf = it.get("confidence")
        if isinstance(conf, dict) and "percentile" in conf:
            line += ", cycle distance %.2f (percentile %.0f of training)" % (conf.get("cycle_distance") or float("inf"),
                                                                            conf["percentile"])
        if isinstance(conf, dict) and "self_consistent" in conf:
            line += ", self-consistent: %s" % verdict(conf)
        print(line, file=sys.stderr)
        for w in it.get("warnings") or []:
            print("   warning %s: %s" % (w.get("code", "?"), w.get("message", "")), file=sys.stderr)


def cmd_decode(api, args):
    lat = read_latents(args.latents)
    body = decode_options(args, with_model(args, {"latents": lat, "format": formats(args.format)}))
    ans = api.call("POST", "/decode", body)
    items = _structures_answer(ans, len(lat), "/decode")
    summary(items)
    names = ["%03d_%s" % (i, safe_name(formula_of(s))) for i, s in enumerate(items)]
    emit(ans, items, args.output, args.format, names)


def cmd_reconstruct(api, args):
    structs = []
    for p in args.files:
        structs += read_structures(p)
    body = decode_options(args, with_model(args, {"structures": structs, "format": formats(args.format)}))
    ans = api.call("POST", "/reconstruct", body)
    items = _structures_answer(ans, len(structs), "/reconstruct")
    summary(items)
    names = ["%03d_%s" % (i, safe_name(formula_of(s))) for i, s in enumerate(items)]
    emit(ans, items, args.output, args.format, names)


def cmd_interpolate(api, args):
    if args.steps < 2:
        raise ClientError("--steps must be at least 2")
    body = decode_options(args, with_model(args, {"from": endpoint(args.start), "to": endpoint(args.end),
                                                  "steps": args.steps, "format": formats(args.format)}))
    ans = api.call("POST", "/interpolate", body)
    frames = ans.get("frames")
    if not isinstance(frames, list) or len(frames) != args.steps:
        raise ClientError("/interpolate answered %s frames for %d steps" % (
            len(frames) if isinstance(frames, list) else "no", args.steps), EXIT_SERVER)
    names = ["%03d_t%.3f_%s" % (i, f.get("t", 0.0), safe_name(formula_of(f))) for i, f in enumerate(frames)]
    if not args.quiet:
        for f in frames:
            print("t=%.3f  %s" % (f.get("t", float("nan")), frame_label(f)), file=sys.stderr)
    emit(ans, frames, args.output, args.format, names)


# ---------------------------------------------------------------- main

def decode_flags(s):
    s.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="decoding option sent as \"options\" (repeatable), e.g. iterations=96, mode=paper, "
                        "repair_lattice=1")
    s.add_argument("--symmetrize", nargs="?", const="conventional", choices=["conventional", "primitive"],
                   help="refine each decoded structure to its space group (spglib) and return its "
                        "conventional (default) or primitive standardized cell")
    s.add_argument("--symprec", type=float, metavar="ANGSTROM",
                   help="tolerance of --symmetrize (the daemon's default 0.1 A)")
    s.add_argument("--paper", action="store_true",
                   help="decode with the paper's algorithm (spec section 5) instead of the daemon's default "
                        "(fast decoding, the same structures at ~2%% of the cost)")
    s.add_argument("--self-check", action="store_true",
                   help="also decode each answer's latent E(D(z)) again and say whether it comes back with "
                        "the same composition (\"self-consistent: no\" flags an answer not to trust; one more "
                        "decode per structure)")


def parser():
    p = argparse.ArgumentParser(
        prog="nesf-client",
        description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Output (-o): none = stdout; FILE.json = the whole API answer; FILE.cif = all "
               "structures as one multi-block CIF; anything else = a directory with one file per "
               "structure.  Exit codes: 0 ok, 1 the server answered an error, 2 bad usage or input "
               "file, 3 the server could not be reached.")
    p.add_argument("--version", action="version", version="nesf-client " + VERSION)

    def common(q, top):
        # accepted before and after the command; the subcommand's copy only
        # overrides when given (SUPPRESS keeps its default out)
        d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
        q.add_argument("--url", default=d(os.environ.get("NESF_URL", DEFAULT_URL)),
                       help="nesfd base URL (env NESF_URL; default %s)" % DEFAULT_URL)
        q.add_argument("--token", default=d(os.environ.get("NESF_TOKEN")),
                       help="bearer token, when nesfd requires one (env NESF_TOKEN)")
        q.add_argument("--model", default=d(None), help="model name (see `models`; default: the server's)")
        q.add_argument("--timeout", type=float, default=d(300.0), help="seconds to wait for an answer (default 300)")
        q.add_argument("-v", "--verbose", action="store_true", default=d(False), help="print request ids")
    common(p, True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add = sub.add_parser

    def add_parser(name, **kw):
        q = _add(name, **kw)
        common(q, False)
        return q
    sub.add_parser = add_parser

    s = sub.add_parser("health", help="server health")
    s.set_defaults(func=cmd_health)
    s = sub.add_parser("models", help="list the models the server has loaded")
    s.add_argument("--json", action="store_true", help="print the raw answer")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("encode", help="structures -> latent vectors")
    s.add_argument("files", nargs="+", metavar="FILE", help="CIF, JSON or JSON Lines structure files")
    s.add_argument("-o", "--output", help="latents file: .json (API answer) or .txt (one vector a line)")
    s.add_argument("--compact", action="store_true", help="one-line JSON")
    refine_flag(s)
    s.set_defaults(func=cmd_encode)

    fmt_help = "cif (default) or json"
    s = sub.add_parser("decode", help="latent vectors -> structures")
    s.add_argument("latents", metavar="LATENTS", help="JSON or text file of latent vectors ('-' = stdin)")
    s.add_argument("-o", "--output", help="FILE.json, FILE.cif or a directory")
    s.add_argument("--format", choices=["cif", "json"], default="cif", help=fmt_help)
    decode_flags(s)
    s.set_defaults(func=cmd_decode)

    s = sub.add_parser("interpolate", help="decode the straight latent path between two structures")
    s.add_argument("start", metavar="A", help="start: structure file (CIF/JSON) or latent file")
    s.add_argument("end", metavar="B", help="end: structure file (CIF/JSON) or latent file")
    s.add_argument("--steps", type=int, default=8, help="frames including both ends (default 8)")
    s.add_argument("-o", "--output", help="FILE.json, FILE.cif or a directory")
    s.add_argument("--format", choices=["cif", "json"], default="cif", help=fmt_help)
    decode_flags(s)
    refine_flag(s)
    s.add_argument("-q", "--quiet", action="store_true", help="do not list the formulas on stderr")
    s.set_defaults(func=cmd_interpolate)

    s = sub.add_parser("reconstruct", help="encode then decode structures (autoencoder round trip)")
    s.add_argument("files", nargs="+", metavar="FILE", help="CIF, JSON or JSON Lines structure files")
    s.add_argument("-o", "--output", help="FILE.json, FILE.cif or a directory")
    s.add_argument("--format", choices=["cif", "json"], default="cif", help=fmt_help)
    decode_flags(s)
    refine_flag(s)
    s.set_defaults(func=cmd_reconstruct)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    api = Api(args.url, args.token, args.timeout, args.verbose)
    try:
        args.func(api, args)
    except ClientError as e:
        print("nesf-client: %s" % e, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

