"""Structure and latent files as the nesfd API takes them: CIF (.cif),
structure JSON (.json: one structure, a list, or an API answer), JSON Lines
(.jsonl) for structures; JSON or text rows (numpy.savetxt) for latents."""
import json
import math
import re
import sys

from .transport import ClientError

def read_text(path):
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ClientError("%s: %s" % (path, e.strerror or e)) from None
    except UnicodeDecodeError:
        raise ClientError("%s: not a text file (expected CIF, JSON or numbers)" % path) from None


def _is_structure(obj):
    return isinstance(obj, dict) and ("lattice" in obj or "cif" in obj)


def structures_from_json(obj, name):
    """Structure objects in obj, which may be one structure, a list, or an API answer."""
    if _is_structure(obj):
        return [obj]
    if isinstance(obj, dict):
        for key in ("structures", "frames"):
            if isinstance(obj.get(key), list):
                return [s.get("structure", s) if isinstance(s, dict) else s for s in obj[key]]
    if isinstance(obj, list) and obj and all(_is_structure(s) for s in obj):
        return obj
    raise ClientError("%s: no structure found (want a structure object with \"lattice\", "
                      "a list of them, or a CIF file)" % name)


def read_structures(path):
    text = read_text(path)
    low = path.lower()
    if low.endswith(".cif") or (not low.endswith((".json", ".jsonl")) and re.match(r"\s*(data_|#)", text)):
        return [{"cif": text}]
    if low.endswith(".jsonl"):
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise ClientError("%s:%d: bad JSON (%s)" % (path, i, e)) from None
        return structures_from_json(out, path)
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ClientError("%s: neither CIF nor valid JSON (%s)" % (path, e)) from None
    return structures_from_json(obj, path)


def _check_vectors(vecs, name):
    if not vecs:
        raise ClientError("%s: no latent vectors" % name)
    for i, v in enumerate(vecs):
        if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ClientError("%s: latent %d is not a list of numbers" % (name, i))
        if not all(math.isfinite(x) for x in v):
            raise ClientError("%s: latent %d has NaN or infinite values" % (name, i))
        if len(v) != len(vecs[0]):
            raise ClientError("%s: latents have different lengths (%d and %d)" % (name, len(vecs[0]), len(v)))
    return vecs


def read_latents(path):
    """A list of latent vectors from JSON or whitespace/comma separated text."""
    text = read_text(path)
    if text.lstrip().startswith(("[", "{")):
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ClientError("%s: bad JSON (%s)" % (path, e)) from None
        if isinstance(obj, dict):
            obj = obj.get("latents", [obj["latent"]] if "latent" in obj else None)
        if isinstance(obj, list) and obj and all(isinstance(x, (int, float)) for x in obj):
            obj = [obj]
        if not isinstance(obj, list):
            raise ClientError("%s: want a latent vector, a list of them or {\"latents\": [...]}" % path)
        return _check_vectors(obj, path)
    vecs = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            vecs.append([float(x) for x in re.split(r"[\s,]+", line)])
        except ValueError:
            raise ClientError("%s:%d: not a row of numbers" % (path, i)) from None
    return _check_vectors(vecs, path)


def looks_like_latent(path):
    low = path.lower()
    if low.endswith((".cif", ".jsonl")):
        return False
    text = read_text(path).lstrip()
    if low.endswith(".json") or text.startswith(("[", "{")):
        try:
            obj = json.loads(text)
        except ValueError:
            return False
        if isinstance(obj, dict):
            return "latent" in obj or "latents" in obj
        return isinstance(obj, list) and bool(obj) and (
            isinstance(obj[0], (int, float)) or (isinstance(obj[0], list) and obj[0] and isinstance(obj[0][0], (int, float))))
    return bool(re.match(r"[-+0-9.]", text))

