"""nesf_client.Client: nesfd from Python, with pymatgen and ASE objects.

    from nesf_client import Client
    c = Client("http://127.0.0.1:8080")          # or $NESF_URL; token: $NESF_TOKEN
    z = c.encode([structure, atoms, "NaCl.cif"])  # latents, one list of floats each
    structures = c.decode(z)                      # pymatgen Structures
    atoms = c.decode(z, as_="ase")                # ASE Atoms

Structures may be given as pymatgen Structures, ASE Atoms, CIF text, paths
of CIF/JSON/JSON Lines files, or structure dicts (the API's JSON).  Results
come back as pymatgen Structures ("pymatgen", the default), ASE Atoms
("ase"), CIF text ("cif") or the API's JSON dicts ("dict").  A latent that
does not decode (the model predicts a degenerate cell) gives None in its
place and a warning; strict=True raises instead.  self_check=True (decode,
reconstruct, interpolate) also re-decodes each answer's latent E(D(z)) on
the server (one more decode per structure) and returns, beside the
structures, whether each came back with its own composition (True/False;
None for a failed item): False flags an answer not to trust
(docs/trust.md).  pymatgen and ASE are imported only when used."""
import os
import warnings

from .files import read_structures
from .transport import DEFAULT_URL, EXIT_SERVER, EXIT_USAGE, Api, ClientError

OUTPUTS = ("pymatgen", "ase", "cif", "dict")


class NesfError(ClientError):
    """nesfd answered an error, could not be reached, or the input is bad."""


def _is_latent(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _latents(latents):
    """A list of latent vectors from one vector, a list of them or an array."""
    if hasattr(latents, "tolist"):  # numpy, torch
        latents = latents.tolist()
    latents = list(latents)
    if _is_latent(latents):
        latents = [latents]
    latents = [list(v.tolist() if hasattr(v, "tolist") else v) for v in latents]
    if not latents or not all(_is_latent(v) for v in latents):
        raise NesfError("latents must be a vector or a list of vectors of numbers", EXIT_USAGE)
    return latents


def _atoms_json(atoms):
    """An ASE Atoms as the API's structure JSON (periodic cells only)."""
    if not all(atoms.get_pbc()):
        raise NesfError("ASE Atoms must be periodic in all three directions (pbc=True)", EXIT_USAGE)
    return {"lattice": {"matrix": atoms.get_cell()[:].tolist()},
            "species": atoms.get_chemical_symbols(),
            "frac_coords": atoms.get_scaled_positions(wrap=True).tolist()}


def _structure_json(s):
    """One structure-like input as the API takes it (a list for files)."""
    if hasattr(s, "as_dict") and hasattr(s, "lattice") and hasattr(s, "sites"):  # pymatgen
        return [s.as_dict()]
    if hasattr(s, "get_cell") and hasattr(s, "get_chemical_symbols"):  # ASE
        return [_atoms_json(s)]
    if isinstance(s, dict):
        return [s]
    if isinstance(s, os.PathLike):
        return read_structures(os.fspath(s))
    if isinstance(s, str):
        if "\n" in s or s.lstrip().startswith(("data_", "#")):
            return [{"cif": s} if s.lstrip().startswith(("data_", "#")) else s]
        if os.path.exists(s):
            return read_structures(s)
        raise NesfError("%r is neither CIF text nor an existing file" % s[:80], EXIT_USAGE)
    raise NesfError("cannot send a %s as a structure (want a pymatgen Structure, ASE Atoms, CIF "
                    "text, a file path or a structure dict)" % type(s).__name__, EXIT_USAGE)


def _endpoint(x):
    """One end of an interpolation: a latent vector or one structure."""
    v = x.tolist() if hasattr(x, "tolist") else x
    if _is_latent(v):
        return {"latent": list(v)}
    s = _structure_json(x)
    if len(s) != 1:
        raise NesfError("an interpolation end must be one structure; %r holds %d" % (x, len(s)), EXIT_USAGE)
    return s[0]


def _structures(structures):
    single = not isinstance(structures, (list, tuple))
    out = []
    for s in [structures] if single else structures:
        out += _structure_json(s)
    if not out:
        raise NesfError("no structures given", EXIT_USAGE)
    return out


def _convert(item, as_):
    """The API's structure JSON as the caller asked; None for a failed item."""
    if item is None or isinstance(item.get("error"), dict):
        return None
    if as_ == "dict":
        return item
    if as_ == "cif":
        return item["cif"]
    if as_ == "pymatgen":
        from pymatgen.core import Structure
        return Structure.from_dict(item["pymatgen"])
    from ase import Atoms
    return Atoms(symbols=item["species"], cell=item["lattice"]["matrix"],
                 scaled_positions=item["frac_coords"], pbc=True)


class Client:
    """A connection to one nesfd (url, else $NESF_URL, else 127.0.0.1:8080).

    model: the default model for every call (None: the server's default);
    options: default decoding options, as the API's "options"."""

    def __init__(self, url=None, token=None, timeout=300.0, model=None, options=None):
        self.api = Api(url or os.environ.get("NESF_URL") or DEFAULT_URL,
                       token if token is not None else os.environ.get("NESF_TOKEN"), timeout)
        self.model = model
        self.options = dict(options or {})

    @property
    def url(self):
        return self.api.url

    def _call(self, method, path, body=None):
        try:
            return self.api.call(method, path, body)
        except NesfError:
            raise
        except ClientError as e:
            raise NesfError(str(e), e.code) from None

    @staticmethod
    def _self_check(body, self_check):
        if not isinstance(self_check, bool):
            raise NesfError("self_check must be True or False, not %r" % (self_check,), EXIT_USAGE)
        if self_check:
            body["self_check"] = True
        return body

    @staticmethod
    def _verdicts(items):
        """Each item's confidence.self_consistent (None: failed or unchecked)."""
        return [(it.get("confidence") or {}).get("self_consistent") if isinstance(it, dict) else None for it in items]

    def _body(self, body, model, options, as_=None, decodes=True):
        if as_ is not None and as_ not in OUTPUTS:
            raise NesfError("as_ must be one of %s, not %r" % (", ".join(OUTPUTS), as_), EXIT_USAGE)
        if model or self.model:
            body["model"] = model or self.model
        opts = dict(self.options, **(options or {}))
        if opts and decodes:
            body["options"] = opts
        if as_ is not None:
            body["format"] = ["json"] + ([as_] if as_ in ("cif", "pymatgen") else [])
        return body

    def _results(self, items, as_, strict, what):
        failed = [(i, it["error"]) for i, it in enumerate(items) if isinstance(it, dict) and
                  isinstance(it.get("error"), dict)]
        if failed:
            text = "; ".join("%s %d: %s" % (what, i, e.get("message", e.get("code"))) for i, e in failed)
            if strict:
                raise NesfError("%d of %d did not decode: %s" % (len(failed), len(items), text), EXIT_SERVER)
            warnings.warn("%d of %d did not decode (None in their place): %s" % (len(failed), len(items), text),
                          stacklevel=3)
        return [_convert(it, as_) for it in items]

    # ------------------------------------------------------------ routes

    def health(self):
        """{"status": "ok", "version"}; needs no token."""
        return self._call("GET", "/health")

    def models(self):
        """The served models (name, latent_size, species, backend, ...), default first."""
        return self._call("GET", "/models")["models"]

    def decode(self, latents, as_="pymatgen", options=None, model=None, strict=False, self_check=False):
        """Latent vectors (a list of them, one vector, or an array) -> structures;
        with self_check, (structures, self-consistent verdicts)."""
        z = _latents(latents)
        body = self._self_check(self._body({"latents": z}, model, options, as_), self_check)
        ans = self._call("POST", "/decode", body)
        out = self._results(ans["structures"], as_, strict, "latent")
        return (out, self._verdicts(ans["structures"])) if self_check else out

    @staticmethod
    def _refine(body, refine):
        """refine: None (the encoder's latents), True (40 steps), a step count
        or a dict of options (the API's "refine", docs/training.md)."""
        if refine is not None and refine is not False:
            body["refine"] = refine
        return body

    def encode(self, structures, model=None, refine=None):
        """Structures (one or a list; files may hold several) -> latents (lists of floats).
        refine=True refines each latent on its structure (slower, closer species)."""
        body = self._body({"structures": _structures(structures)}, model, None, decodes=False)
        ans = self._call("POST", "/encode", self._refine(body, refine))
        return ans["latents"]

    def reconstruct(self, structures, as_="pymatgen", options=None, model=None, strict=False,
                    return_latents=False, refine=None, self_check=False):
        """Encode then decode (the autoencoder's round trip); with
        return_latents, (structures, latents); with self_check the verdicts
        come last: (structures[, latents], verdicts); refine as for encode."""
        body = self._refine(self._body({"structures": _structures(structures)}, model, options, as_), refine)
        ans = self._call("POST", "/reconstruct", self._self_check(body, self_check))
        out = (self._results(ans["structures"], as_, strict, "structure"),)
        out += (ans["latents"],) if return_latents else ()
        out += (self._verdicts(ans["structures"]),) if self_check else ()
        return out if len(out) > 1 else out[0]

    def interpolate(self, start, end, steps=8, as_="pymatgen", options=None, model=None, strict=False,
                    refine=None, self_check=False):
        """The straight latent path from start to end (each a structure-like
        input or a latent vector), decoded at steps points including both
        ends -> [(t, structure), ...]; with self_check [(t, structure, verdict), ...]."""
        body = self._body({"from": _endpoint(start), "to": _endpoint(end), "steps": int(steps)}, model, options, as_)
        body = self._self_check(self._refine(body, refine), self_check)  # refine: structure ends only
        frames = self._call("POST", "/interpolate", body)["frames"]
        items = [f if isinstance(f.get("error"), dict) else f["structure"] for f in frames]
        cols = [[f["t"] for f in frames], self._results(items, as_, strict, "frame")]
        return list(zip(*cols + ([self._verdicts(items)] if self_check else [])))
