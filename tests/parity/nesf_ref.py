"""Independent PyTorch reference of the NeSF network (../shared/spec/NESF.md §3, §4).

Written from the spec text alone, as the yardstick for the C implementation:
the parity fixtures (make_fixtures.py) and the PyTorch sides of the
benchmarks (tests/bench/) are built on it.  Run with /usr/bin/python3
(Debian's python3-torch and python3-numpy; no PyPI packages).

Parameter names are those of the weight file (spec §3):
  {module}.{layer}.weight [out, in], {module}.{layer}.bias,
  {module}.{layer}.bn.weight|bias|running_mean|running_var,
with layers numbered from 0 within each MLP.  Safetensors files are read and
written here with struct + json (the `safetensors` package is not in Debian).
"""
import json
import math
import struct

import numpy as np
import torch
from torch import nn

NESF_VERSION = "0.1.0"

# Hidden widths of the paper's network; same keys as nesf_model_config
# (include/model.h) and config/models/*.json.
PAPER_CONFIG = {
    "name": "nesf-paper",
    "latent": 192,
    "enc_pos_hidden": [64, 128],
    "enc_pos_out": 128,
    "enc_species_hidden": [128],
    "enc_species_out": 128,
    "enc_mix_out": 512,
    "enc_head_hidden": [256, 256],
    "lattice_hidden": [128],
    "pos_hidden": [256, 128, 128, 128, 128, 128, 128, 128],
    "spec_hidden": [256, 128],
    "dropout": 0.3,
    "bn_momentum": 0.1,
    "bn_eps": 1e-5,
}

LOSS_WEIGHTS = {"position": 10.0, "species": 0.1, "length": 1.0, "angle": 1.0}

# ---------------------------------------------------------------------------
# deterministic dropout mask (include/backend.h nesf_hash_uniform)

_M64 = (1 << 64) - 1


def hash_uniform(seed, idx):
    """nesf_hash_uniform(seed, i) for an array of indices, bit-exact:
    splitmix64-style mixing mod 2^64, top 24 bits scaled to [0, 1) in float32."""
    with np.errstate(over="ignore"):
        i = np.asarray(idx, dtype=np.uint64)
        x = np.uint64(seed & _M64) ^ (i * np.uint64(0x9E3779B97F4A7C15))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def hash_uniform_scalar(seed, i):
    """Pure-integer version of the same (cross-checks the numpy one)."""
    x = (seed ^ (i * 0x9E3779B97F4A7C15)) & _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return float(np.float32(x >> 40) * np.float32(1.0 / 16777216.0))


def dropout_mask(rows, cols, p, seed):
    """Inverted-dropout mask of backend.h: element (r, c) dropped iff
    hash_uniform(seed, r*cols + c) < p (p compared as float32), kept ones
    scaled by 1/(1-p) (float32)."""
    u = hash_uniform(seed, np.arange(rows * cols, dtype=np.uint64)).reshape(rows, cols)
    keep = np.float32(1.0) / (np.float32(1.0) - np.float32(p))
    return np.where(u < np.float32(p), np.float32(0.0), keep).astype(np.float32)


# ---------------------------------------------------------------------------
# network


class Layer(nn.Module):
    """One Linear, optionally followed by ReLU, BatchNorm1d and dropout.
    Holds weight/bias itself so that names are {layer}.weight, {layer}.bn.*."""

    def __init__(self, n_in, n_out, act, bn, cfg):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.empty(n_out))
        # PyTorch's nn.Linear default initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(n_in)
        nn.init.uniform_(self.bias, -bound, bound)
        self.act = act
        self.bn = nn.BatchNorm1d(n_out, eps=cfg["bn_eps"], momentum=cfg["bn_momentum"]) if bn else None

    def forward(self, x, mask=None):
        y = x @ self.weight.t() + self.bias
        if self.act:
            y = torch.relu(y)
            if self.bn is not None:
                y = self.bn(y)
            if mask is not None:
                y = y * mask
        return y


class MLP(nn.Module):
    """widths [in, h1, ..., out]; ReLU (+BN) (+dropout) after all but the last
    Linear.  The first n_xyz layers also take the query xyz: their input is
    [features, x, y, z]."""

    def __init__(self, widths, cfg, bn=False, dropout=False, n_xyz=0, xyz_width=3):
        super().__init__()
        self.n_xyz = n_xyz
        self.dropout = dropout
        n = len(widths) - 1
        self.layers = nn.ModuleList(
            Layer(widths[i] + (xyz_width if i < n_xyz else 0), widths[i + 1], i < n - 1, bn, cfg)
            for i in range(n))

    def forward(self, x, xyz=None, drop_seed=None, p=0.0):
        for i, layer in enumerate(self.layers):
            if i < self.n_xyz:
                x = torch.cat([x, xyz], dim=1)
            mask = None
            if self.dropout and self.training and layer.act and p > 0:
                if drop_seed is None:
                    raise ValueError("train-mode dropout needs a seed")
                m = dropout_mask(x.shape[0], layer.weight.shape[0], p, drop_seed + i)
                mask = torch.from_numpy(m).to(x.dtype)
            x = layer(x, mask)
        return x

    # name the layers 0, 1, ... (not layers.0) in the state dict
    def named_tensors(self, prefix):
        for i, layer in enumerate(self.layers):
            yield f"{prefix}.{i}.weight", layer.weight
            yield f"{prefix}.{i}.bias", layer.bias
            if layer.bn is not None and layer.act:
                for k in ("weight", "bias", "running_mean", "running_var"):
                    yield f"{prefix}.{i}.bn.{k}", getattr(layer.bn, k)


class NeSF(nn.Module):
    def __init__(self, cfg, num_species):
        super().__init__()
        self.cfg = dict(cfg)
        A, L = num_species, cfg["latent"]
        self.num_species = A
        pos_out, spec_out = cfg["enc_pos_out"], cfg["enc_species_out"]
        self.enc_pos = MLP([3] + cfg["enc_pos_hidden"] + [pos_out], cfg, bn=True)
        self.enc_species = MLP([A] + cfg["enc_species_hidden"] + [spec_out], cfg, bn=True)
        self.enc_mix = MLP([pos_out + spec_out, cfg["enc_mix_out"]], cfg)
        self.enc_head = MLP([cfg["enc_mix_out"] + 6] + cfg["enc_head_hidden"] + [L], cfg, bn=True,
                            dropout=True)
        self.dec_length = MLP([L] + cfg["lattice_hidden"] + [3], cfg)
        self.dec_angle = MLP([L] + cfg["lattice_hidden"] + [3], cfg)
        # the fields' query columns: xyz, or xyz and its Fourier features
        # (model config xyz_fourier, an extension of the spec: include/mlp.h)
        self.fourier = int(cfg.get("xyz_fourier", 0))
        self.period = float(cfg.get("xyz_fourier_period", 8.0))
        xw = 3 + 6 * self.fourier
        pw = [L] + cfg["pos_hidden"] + [3]
        self.dec_position = MLP(pw, cfg, bn=True, n_xyz=len(pw) - 2, xyz_width=xw)
        sw = [L] + cfg["spec_hidden"] + [A]
        self.dec_species = MLP(sw, cfg, bn=True, n_xyz=len(sw) - 2, xyz_width=xw)
        # BN layers of the last Linear of an MLP never run; drop them so the
        # module tree matches the weight file exactly
        for mlp in self.mlps().values():
            mlp.layers[-1].bn = None
        # what nesf_model_create does: gamma 1, beta 0, mean 0, var 1 (defaults)

    def mlps(self):
        return {
            "encoder.pos": self.enc_pos, "encoder.species": self.enc_species,
            "encoder.mix": self.enc_mix, "encoder.head": self.enc_head,
            "decoder.length": self.dec_length, "decoder.angle": self.dec_angle,
            "decoder.position": self.dec_position, "decoder.species": self.dec_species,
        }

    def named_tensors(self):
        """(name, tensor) in weight-file naming, parameters and BN buffers."""
        for prefix, mlp in self.mlps().items():
            yield from mlp.named_tensors(prefix)

    def param_names(self):
        """Trainable tensors (everything but BN running statistics)."""
        return [n for n, _ in self.named_tensors() if not n.endswith(("running_mean", "running_var"))]

    def encode(self, atom_xyz, atom_cls, atom_off, lat6, drop_seed=None):
        """atom_xyz (N x 3, Å), atom_cls (N) class indices, atom_off (S+1)
        group offsets, lat6 (S x 6): a, b, c (Å), alpha, beta, gamma (rad).
        Per-atom BN statistics run over all atoms of the batch."""
        onehot = torch.nn.functional.one_hot(torch.as_tensor(atom_cls, dtype=torch.long),
                                             self.num_species).to(atom_xyz.dtype)
        h = torch.cat([self.enc_pos(atom_xyz), self.enc_species(onehot)], dim=1)
        h = self.enc_mix(h)
        pooled = torch.stack([h[atom_off[s]:atom_off[s + 1]].max(dim=0).values
                              for s in range(len(atom_off) - 1)])
        x = torch.cat([pooled, lat6], dim=1)
        return self.enc_head(x, drop_seed=drop_seed, p=self.cfg["dropout"])

    def lattice(self, z):
        return self.dec_length(z), self.dec_angle(z)

    @staticmethod
    def _repeat(z, off):
        counts = torch.as_tensor(np.diff(np.asarray(off)), dtype=torch.long)
        return torch.repeat_interleave(z, counts, dim=0)

    def query_columns(self, xyz):
        """[x, y, z, then per frequency k and axis d: sin(w_k x_d), cos(w_k x_d)],
        w_k = 2 pi 2^k / period (the frequency rounded to float32 as in C)."""
        if not self.fourier:
            return xyz
        cols = [xyz]
        for k in range(self.fourier):
            w = float(np.float32(2 * math.pi * 2 ** k / self.period))
            for d in range(3):
                cols += [torch.sin(w * xyz[:, d:d + 1]), torch.cos(w * xyz[:, d:d + 1])]
        return torch.cat(cols, dim=1)

    def position_field(self, z, off, xyz):
        return self.dec_position(self._repeat(z, off), self.query_columns(xyz))

    def species_field(self, z, off, xyz):
        return self.dec_species(self._repeat(z, off), self.query_columns(xyz))


def num_params(model):
    names = set(model.param_names())
    return sum(t.numel() for n, t in model.named_tensors() if n in names)


# ---------------------------------------------------------------------------
# losses (spec §4)


def losses(model, batch, drop_seed):
    """One training forward (model.train() expected); returns a dict of the
    four loss terms and their weighted total.  batch: dict of tensors, see
    make_batch."""
    z = model.encode(batch["atom_xyz"], batch["atom_cls"], batch["atom_off"], batch["lat6"],
                     drop_seed=drop_seed)
    lengths, angles = model.lattice(z)
    pos = model.position_field(z, batch["pos_off"], batch["pos_xyz"])
    logits = model.species_field(z, batch["spec_off"], batch["spec_xyz"])
    out = {
        "position": ((pos - batch["pos_target"]) ** 2).mean(),
        "species": nn.functional.cross_entropy(logits, batch["spec_label"]),
        "length": ((lengths - batch["lat6"][:, :3]) ** 2).mean(),
        "angle": ((angles - batch["lat6"][:, 3:]) ** 2).mean(),
    }
    out["total"] = sum(LOSS_WEIGHTS[k] * out[k] for k in LOSS_WEIGHTS)
    return out


# ---------------------------------------------------------------------------
# structures and query points


def lattice_params(m):
    """a, b, c (Å) and alpha, beta, gamma (radians) of lattice rows m."""
    m = np.asarray(m, dtype=np.float64)
    a, b, c = (np.linalg.norm(v) for v in m)

    def ang(u, v):
        return math.acos(max(-1.0, min(1.0, float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)))))

    return [a, b, c, ang(m[1], m[2]), ang(m[0], m[2]), ang(m[0], m[1])]


def load_species(meta_path):
    with open(meta_path) as f:
        return json.load(f)["species"]


def load_jsonl(path, limit=None):
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
                if limit and len(out) >= limit:
                    break
    return out


def structure_arrays(s, species):
    """Cartesian coordinates (float32-rounded, as the C side uses float),
    class indices and lattice parameters of a dataset record."""
    cls = {sym: i for i, sym in enumerate(species)}
    if "cart_coords" in s:
        xyz = np.asarray(s["cart_coords"], dtype=np.float64)
    else:
        xyz = np.asarray(s["frac_coords"], dtype=np.float64) @ np.asarray(s["lattice"]["matrix"])
    return (xyz.astype(np.float32), np.asarray([cls[e] for e in s["species"]], dtype=np.int64),
            np.asarray(lattice_params(s["lattice"]["matrix"]), dtype=np.float32))


def nearest(atoms, q):
    """Index of the nearest atom (among the cell's own atoms, non-periodic)
    of each query point, computed in float64."""
    d = ((q[:, None, :].astype(np.float64) - atoms[None, :, :].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(axis=1)


def paper_queries(atoms, bbox_min, bbox_max, rng):
    """Spec §4 sampling for one structure: (global + local points, species
    points), float32."""
    axes = [np.arange(bbox_min[i] - 1.0, bbox_max[i] + 1.0, 1.0) for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    g = g + rng.normal(0, 0.5, g.shape)
    o = np.arange(-0.6, 0.6, 0.3)
    lo = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    loc = (atoms[:, None, :] + lo[None]).reshape(-1, 3)
    loc = loc + rng.normal(0, 0.15, loc.shape)
    o = np.arange(-0.3, 0.3, 0.1)
    so = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    sp = (atoms[:, None, :] + so[None]).reshape(-1, 3)
    sp = sp + rng.normal(0, 0.05, sp.shape)
    return np.concatenate([g, loc]).astype(np.float32), sp.astype(np.float32)


def make_batch(structs, species, pos_q, spec_q, dtype=torch.float64):
    """Assembles a training batch from dataset records and per-structure
    query points (lists of float32 arrays); targets from the nearest atom."""
    xyz, cls, lat, aoff = [], [], [], [0]
    pt, sl, poff, soff = [], [], [0], [0]
    for s, pq, sq in zip(structs, pos_q, spec_q):
        a, c, l6 = structure_arrays(s, species)
        xyz.append(a)
        cls.append(c)
        lat.append(l6)
        aoff.append(aoff[-1] + len(a))
        pt.append((a[nearest(a, pq)].astype(np.float64) - pq.astype(np.float64)).astype(np.float32))
        sl.append(c[nearest(a, sq)])
        poff.append(poff[-1] + len(pq))
        soff.append(soff[-1] + len(sq))
    t = lambda x: torch.from_numpy(np.concatenate(x)).to(dtype)
    return {
        "atom_xyz": t(xyz), "atom_cls": torch.from_numpy(np.concatenate(cls)),
        "atom_off": aoff, "lat6": torch.from_numpy(np.stack(lat)).to(dtype),
        "pos_xyz": t(pos_q), "pos_target": t(pt), "pos_off": poff,
        "spec_xyz": t(spec_q), "spec_label": torch.from_numpy(np.concatenate(sl)), "spec_off": soff,
    }


# ---------------------------------------------------------------------------
# safetensors with struct + json

_DT = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
       np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8",
       np.dtype(np.bool_): "BOOL"}
_NP = {v: k for k, v in _DT.items()}


def st_save(path, tensors, metadata=None):
    """tensors: dict name -> numpy array (little-endian dtypes of _DT).
    Larger elements first so every tensor is naturally aligned; header padded
    with spaces to a multiple of 8.  Written via a temp file + rename."""
    import os
    items = [(k, np.ascontiguousarray(v)) for k, v in tensors.items()]
    items.sort(key=lambda kv: -kv[1].dtype.itemsize)   # stable
    header, pos = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for k, v in items:
        header[k] = {"dtype": _DT[v.dtype], "shape": list(v.shape),
                     "data_offsets": [pos, pos + v.nbytes]}
        pos += v.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, v in items:
            f.write(v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def st_load(path):
    """-> (dict name -> numpy array, metadata dict)."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = buf[8 + n:]
    out = {}
    for k, e in header.items():
        b, en = e["data_offsets"]
        out[k] = np.frombuffer(data[b:en], dtype=_NP[e["dtype"]].newbyteorder("<")).reshape(e["shape"]).copy()
    return out, meta


def model_metadata(model, species, bbox_min, bbox_max, train_config=None):
    fmt = lambda v: ",".join(repr(float(x)) for x in v)
    return {
        "nesf_version": NESF_VERSION,
        "latent_size": str(model.cfg["latent"]),
        "species": ",".join(species),
        "bbox_min": fmt(bbox_min),
        "bbox_max": fmt(bbox_max),
        "train_config": json.dumps(train_config or {}),
        "model_config": json.dumps(model.cfg),
    }


def save_model(path, model, species, bbox_min, bbox_max, train_config=None, dtype=np.float32):
    tensors = {n: t.detach().cpu().numpy().astype(dtype) for n, t in model.named_tensors()}
    st_save(path, tensors, model_metadata(model, species, bbox_min, bbox_max, train_config))


def load_model(path, dtype=torch.float64):
    """-> (model, species list, bbox_min, bbox_max).  Architecture from the
    model_config metadata, the paper's when absent."""
    tensors, meta = st_load(path)
    cfg = dict(PAPER_CONFIG)
    if "model_config" in meta:
        cfg.update(json.loads(meta["model_config"]))
    species = meta["species"].split(",")
    model = NeSF(cfg, len(species)).to(dtype)
    set_tensors(model, tensors)
    bb = lambda k: [float(x) for x in meta[k].split(",")]
    return model, species, bb("bbox_min"), bb("bbox_max")


def set_tensors(model, tensors):
    """Copies numpy arrays into the model's tensors; every name must be there."""
    names = dict(model.named_tensors())
    missing = set(names) - set(tensors)
    extra = set(tensors) - set(names)
    if missing or extra:
        raise ValueError(f"weight file mismatch: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    with torch.no_grad():
        for k, t in names.items():
            v = torch.from_numpy(np.asarray(tensors[k], dtype=np.float32).astype(np.float64))
            if tuple(v.shape) != tuple(t.shape):
                raise ValueError(f"{k}: shape {tuple(v.shape)}, expected {tuple(t.shape)}")
            t.copy_(v.to(t.dtype))
