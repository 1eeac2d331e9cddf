#!/usr/bin/python3
"""Builds the parity fixtures of tests/parity/fixtures/ from the independent
PyTorch reference (nesf_ref.py).  Deterministic: rerunning gives the same
files (same torch/numpy versions).  See README.md for the layout.

    /usr/bin/python3 tests/parity/make_fixtures.py [--shared ../shared] [--out DIR]

Expected values are computed in float64 from float32-representable weights
and inputs, so they are the exact answer the C float32 code approximates.
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nesf_ref as ref  # noqa: E402

SEED = 20240611
DROPOUT_SEED = 0x123456789ABCDEF0
# forward fixtures: two cubic cells of 16 and 5 atoms, two triclinic cells
FORWARD_VAL = [0, 1, 44, 124]
# training step: 2, 5 (triclinic), 10 and 16 (orthorhombic) atoms
TRAIN_VAL = [14, 44, 36, 231]

# A second, small configuration with other depths and widths, so that the C
# side cannot get away with paper-only assumptions (number of xyz layers,
# dropout mask width, ...).
TINY_CONFIG = {
    "name": "parity-tiny",
    "latent": 20,
    "enc_pos_hidden": [16, 24],
    "enc_pos_out": 24,
    "enc_species_hidden": [16],
    "enc_species_out": 12,
    "enc_mix_out": 40,
    "enc_head_hidden": [32, 24],
    "lattice_hidden": [16, 16],
    "pos_hidden": [32, 24, 24, 16, 16],
    "spec_hidden": [32, 24, 16],
    "dropout": 0.3,
    "bn_momentum": 0.1,
    "bn_eps": 1e-5,
}

# The tiny network with Fourier query columns (model config xyz_fourier,
# include/mlp.h): 3 + 6 x 3 = 21 columns into every field layer but the last.
FOURIER_CONFIG = dict(TINY_CONFIG, name="parity-fourier", xyz_fourier=3, xyz_fourier_period=6.0)

# Gradient tolerance (README): max |c - ref| <= tol * max(max |ref|, 1e-3) per
# tensor, tol = max(GRAD_TOL, 10 x the error of PyTorch's own float32 step).
GRAD_TOL = 1e-3

# weight matrices whose gradients the paper-network step stores in full
PAPER_GRAD_WEIGHTS = {"encoder.pos.0.weight", "encoder.species.0.weight", "decoder.length.1.weight",
                      "decoder.angle.1.weight", "decoder.position.8.weight",
                      "decoder.position.2.weight", "decoder.species.2.weight"}

TRAIN_CONFIG = {"batch": 64, "epochs": 3200, "lr": 1e-3, "lr_halve_every": 640,
                "loss_weights": ref.LOSS_WEIGHTS, "seed": SEED, "note": "parity fixture"}


def i32(x):
    return np.asarray(x, dtype=np.int32)


def f32(x):
    return np.asarray(x.detach().numpy() if torch.is_tensor(x) else x, dtype=np.float32)


def round32(model):
    """Rounds every weight to float32 (the file's precision)."""
    with torch.no_grad():
        for _, t in model.named_tensors():
            t.copy_(t.float().double())


def round16(model):
    """Rounds every weight to float16 (used for the paper-size file)."""
    with torch.no_grad():
        for _, t in model.named_tensors():
            t.copy_(t.half().double())


def randomize_bn(model, structs, species, bbmin, bbmax, rng):
    """Non-trivial BatchNorm parameters and statistics of a plausible scale:
    gamma/beta random, running stats measured on data (one train-mode pass
    with momentum 1) then perturbed."""
    gen = torch.Generator().manual_seed(SEED + 1)
    bns = [l.bn for mlp in model.mlps().values() for l in mlp.layers if l.bn is not None]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(0.6 + 0.8 * torch.rand(bn.weight.shape, generator=gen, dtype=torch.float64))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen, dtype=torch.float64))
            bn.momentum = 1.0
    pq, sq = [], []
    for s in structs:
        a, _, _ = ref.structure_arrays(s, species)
        p, q = ref.paper_queries(a, bbmin, bbmax, rng)
        pq.append(p[rng.choice(len(p), min(len(p), 200), replace=False)])
        sq.append(q[rng.choice(len(q), min(len(q), 100), replace=False)])
    batch = ref.make_batch(structs, species, pq, sq)
    model.train()
    with torch.no_grad():
        ref.losses(model, batch, DROPOUT_SEED ^ 0xFFFF)
        for bn in bns:
            bn.momentum = model.cfg["bn_momentum"]
            sd = bn.running_var.sqrt()
            bn.running_mean.add_(0.2 * sd * torch.randn(sd.shape, generator=gen, dtype=torch.float64))
            bn.running_var.mul_(0.7 + 0.8 * torch.rand(sd.shape, generator=gen, dtype=torch.float64))
            # dead ReLU units have zero variance; keep the folded scale sane
            floor = 1e-2 * float(bn.running_var.median()) + 1e-3
            bn.running_var.clamp_(min=floor)
    model.eval()


def structures_block(structs, species):
    """Atoms and lattices as the C test rebuilds them (exact doubles)."""
    cart, zs, off, lat = [], [], [0], []
    for s in structs:
        c = np.asarray(s["cart_coords"], dtype=np.float64)
        cart.append(c)
        zs += [Z_OF[e] for e in s["species"]]
        off.append(off[-1] + len(c))
        lat.append(np.asarray(s["lattice"]["matrix"], dtype=np.float64))
    return {"atom_cart": np.concatenate(cart), "atom_z": i32(zs), "atom_off": i32(off),
            "lattice": np.stack(lat)}


def encode_inputs(structs, species):
    xyz, cls, lat, off = [], [], [], [0]
    for s in structs:
        a, c, l6 = ref.structure_arrays(s, species)
        xyz.append(a)
        cls.append(c)
        lat.append(l6)
        off.append(off[-1] + len(a))
    return (torch.from_numpy(np.concatenate(xyz)).double(), np.concatenate(cls), off,
            torch.from_numpy(np.stack(lat)).double())


def forward_queries(structs, species, rng):
    """Per structure: 100 points inside the cell, 100 near atoms, 100 around
    and outside the cell (position field); 60 near atoms + 20 in the cell
    (species field)."""
    pos, spec = [], []
    for s in structs:
        a, _, _ = ref.structure_arrays(s, species)
        m = np.asarray(s["lattice"]["matrix"])
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) @ m
        lo, hi = corners.min(0) - 3.0, corners.max(0) + 3.0
        inside = rng.random((100, 3)) @ m
        near = a[rng.integers(0, len(a), 100)] + rng.normal(0, 0.3, (100, 3))
        around = lo + (hi - lo) * rng.random((100, 3))
        pos.append(np.concatenate([inside, near, around]).astype(np.float32))
        sn = a[rng.integers(0, len(a), 60)] + rng.normal(0, 0.15, (60, 3))
        spec.append(np.concatenate([sn, rng.random((20, 3)) @ m]).astype(np.float32))
    return pos, spec


def offsets(chunks):
    return i32(np.concatenate([[0], np.cumsum([len(c) for c in chunks])]))


def make_forward(name, cfg, structs_all, structs, species, bbmin, bbmax, out, half, rng):
    torch.manual_seed(SEED + len(name))
    model = ref.NeSF(cfg, len(species)).double()
    randomize_bn(model, structs_all, species, bbmin, bbmax, rng)
    (round16 if half else round32)(model)
    model.eval()
    ref.save_model(os.path.join(out, f"{name}.safetensors"), model, species, bbmin, bbmax,
                   TRAIN_CONFIG, dtype=np.float16 if half else np.float32)

    xyz, cls, aoff, lat6 = encode_inputs(structs, species)
    pos_q, spec_q = forward_queries(structs, species, rng)
    with torch.no_grad():
        z = model.encode(xyz, cls, aoff, lat6)
        z32 = torch.from_numpy(f32(z)).double()     # the C test feeds the stored z
        lengths, angles = model.lattice(z32)
        po = model.position_field(z32, offsets(pos_q), torch.from_numpy(np.concatenate(pos_q)).double())
        so = model.species_field(z32, offsets(spec_q), torch.from_numpy(np.concatenate(spec_q)).double())
    io = structures_block(structs, species)
    io.update({
        "z": f32(z), "lengths": f32(lengths), "angles": f32(angles),
        "pos_xyz": np.concatenate(pos_q), "pos_off": offsets(pos_q), "pos_out": f32(po),
        "spec_xyz": np.concatenate(spec_q), "spec_off": offsets(spec_q), "spec_out": f32(so),
    })
    ref.st_save(os.path.join(out, f"{name}_io.safetensors"), io,
                {"weights": f"{name}.safetensors", "structures": "structures.jsonl",
                 "tolerance": "max|c - ref| <= 1e-4 * max(max|ref|, 1e-3) per output array"})

    # what float32 arithmetic costs, for the record: the same network in float32
    m32 = ref.NeSF(cfg, len(species))
    ref.set_tensors(m32, {k: f32(v) for k, v in model.named_tensors()})
    m32.eval()
    with torch.no_grad():
        z_f = m32.encode(xyz.float(), cls, aoff, lat6.float())
        p_f = m32.position_field(z32.float(), offsets(pos_q), torch.from_numpy(np.concatenate(pos_q)))
    rel = lambda a, b: float((a.double() - b).abs().max() / max(float(b.abs().max()), 1e-3))
    print(f"{name}: {ref.num_params(model)} parameters; float32 torch vs float64 reference: "
          f"z {rel(z_f, z):.2e}, position field {rel(p_f, po):.2e}; "
          f"|z| max {float(z.abs().max()):.3g}, |pos| max {float(po.abs().max()):.3g}, "
          f"|logit| max {float(so.abs().max()):.3g}")
    return model


def condition_biases(model, batch):
    """Makes the train-mode step well-conditioned in float32.

    In train-mode BatchNorm after a ReLU, a unit active on few rows of the
    batch (or whose active values are tiny or nearly equal) has a tiny batch
    variance, so 1/sqrt(var + eps) amplifies rounding up to ~316x, and a
    float32 rounding that flips one row across the ReLU kink moves the
    gradients by up to 1e-2.  With random weights such units are common
    (PyTorch's own float32 step is 1e-2 off the exact gradients on the paper
    network), which would measure luck rather than the implementation.  So,
    layer by layer, every hidden unit followed by BN gets its bias shifted
    to put the kink in the widest gap between its sorted pre-activations
    within the central 20-80 % of the batch: every unit is active on a fair
    share of rows, with a margin from the kink.  Returns the names of the
    biases changed."""
    changed = []
    for name, mlp in model.mlps().items():
        for l, layer in enumerate(mlp.layers):
            if not (layer.act and layer.bn is not None):
                continue
            y = preactivations(model, batch, [name])[name][l]
            ys, _ = torch.sort(y, dim=0)
            n = ys.shape[0]
            lo, hi = int(0.2 * (n - 1)), max(int(np.ceil(0.8 * (n - 1))), int(0.2 * (n - 1)) + 1)
            gaps = ys[lo + 1:hi + 1] - ys[lo:hi]
            j = gaps.argmax(0)
            cols = torch.arange(ys.shape[1])
            t = 0.5 * (ys[lo + j, cols] + ys[lo + j + 1, cols])
            with torch.no_grad():
                layer.bias.copy_((layer.bias - t).float().double())
            changed.append(f"{name}.{l}.bias")
    return changed


def preactivations(model, batch, mlp_names):
    """Train-mode pre-activations (Linear outputs before ReLU) of the hidden
    layers of the given MLPs, on a copy of the model: {mlp name: [tensor]}."""
    probe = copy.deepcopy(model)
    probe.train()
    out = {n: [] for n in mlp_names}
    mlps = probe.mlps()
    for n in mlp_names:
        for layer in mlps[n].layers:
            if layer.act:
                layer.register_forward_hook(
                    lambda mod, inp, o, n=n: out[n].append(inp[0].detach() @ mod.weight.detach().t()
                                                           + mod.bias.detach()))
    with torch.no_grad():
        ref.losses(probe, batch, DROPOUT_SEED)
    return out


def float32_grad_error(model, batch):
    """Per tensor, the error (README measure) of PyTorch's float32 gradients
    against the float64 ones: how well float32 arithmetic does on this step."""
    grads = {}
    for dt in (torch.float32, torch.float64):
        m = copy.deepcopy(model).to(dt)
        m.train()
        b = {k: (v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
        ref.losses(m, b, DROPOUT_SEED)["total"].backward()
        grads[dt] = {k: t.grad.double() for k, t in m.named_tensors() if t.grad is not None}
    g32, g64 = grads[torch.float32], grads[torch.float64]
    return {k: float((g32[k] - g64[k]).abs().max()) / max(float(g64[k].abs().max()), 1e-3) for k in g64}


def make_train_step(model, weights, io_name, structs, species, bbmin, bbmax, out, rng,
                    grad_filter=None, adam_names=None, write_weights=False):
    """One training step of `model` into fixtures/io_name.  Its weights are
    fixtures/weights, written here when write_weights, else taken from that
    file with the conditioned head biases as `override.*` tensors.
    grad_filter(name) picks the gradients to store (all when None)."""

    # explicit queries: paper sampling (spec §4), subsampled to keep the file small
    pos_q, spec_q = [], []
    for s in structs:
        a, _, _ = ref.structure_arrays(s, species)
        p, q = ref.paper_queries(a, bbmin, bbmax, rng)
        ng = len(p) - 64 * len(a)
        keep = np.concatenate([rng.choice(ng, 120, replace=False),
                               ng + rng.choice(64 * len(a), 16 * len(a), replace=False)])
        pos_q.append(p[np.sort(keep)])
        spec_q.append(q[np.sort(rng.choice(len(q), 24 * len(a), replace=False))])
    batch = ref.make_batch(structs, species, pos_q, spec_q)
    if os.environ.get("NESF_FIXTURE_DEBUG"):
        print("before conditioning", max(float32_grad_error(model, batch).values()))
    overrides = condition_biases(model, batch)
    if write_weights:
        ref.save_model(os.path.join(out, weights), model, species, bbmin, bbmax, TRAIN_CONFIG)
        overrides = []
    before = {k: v.detach().clone() for k, v in model.named_tensors()}
    f32errs = float32_grad_error(model, batch)
    f32err = max(f32errs.values())
    assert f32err < 1e-3, f"{io_name}: step still ill-conditioned in float32 ({f32err:.2e})"

    # inference-mode losses first (running statistics, no dropout)
    model.eval()
    with torch.no_grad():
        eval_loss = ref.losses(model, batch, None)
    model.train()
    loss = ref.losses(model, batch, DROPOUT_SEED)
    loss["total"].backward()
    params = dict(model.named_tensors())
    io = structures_block(structs, species)
    io.update({
        "pos_xyz": f32(batch["pos_xyz"]), "pos_target": f32(batch["pos_target"]),
        "pos_off": i32(batch["pos_off"]),
        "spec_xyz": f32(batch["spec_xyz"]), "spec_label": i32(batch["spec_label"]),
        "spec_off": i32(batch["spec_off"]),
        "lat6": f32(batch["lat6"]),
        "dropout_seed": np.asarray([DROPOUT_SEED], dtype=np.int64),
    })
    params = dict(model.named_tensors())
    for k in overrides:
        io[f"override.{k}"] = f32(before[k])
    for k in ("position", "species", "length", "angle", "total"):
        io[f"loss.{k}"] = np.asarray([float(loss[k])], dtype=np.float32)
        io[f"eval_loss.{k}"] = np.asarray([float(eval_loss[k])], dtype=np.float32)
    for k in model.param_names():
        if grad_filter is None or grad_filter(k):
            io[f"grad.{k}"] = f32(params[k].grad)
            io[f"gradtol.{k}"] = np.asarray([max(GRAD_TOL, 10 * f32errs[k])], dtype=np.float32)
    for k, t in params.items():
        if k.endswith(("running_mean", "running_var")):
            io[f"after.{k}"] = f32(t)
            assert not torch.equal(t, before[k]), k
    S = len(structs)
    cfg = model.cfg
    for l, w in enumerate(cfg["enc_head_hidden"]):
        io[f"dropout_mask.{l}"] = ref.dropout_mask(S, w, cfg["dropout"], DROPOUT_SEED + l)

    # one Adam step from zero moments (PyTorch semantics)
    adam_names = adam_names or ["decoder.position.0.weight", "encoder.head.1.bn.weight",
                                f"decoder.species.{len(cfg['spec_hidden'])}.bias", "encoder.pos.0.bias"]
    ps = [params[k] for k in model.param_names()]
    opt = torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    for k in adam_names:
        io[f"adam.{k}"] = f32(params[k])

    # cross-check values of nesf_hash_uniform
    seeds = np.array([0, 1, DROPOUT_SEED, 0x7FFFFFFFFFFFFFFF] * 8, dtype=np.uint64)
    idx = np.arange(32, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(3)
    io["hash.seed"] = seeds.astype(np.int64)
    io["hash.index"] = idx.astype(np.int64)
    io["hash.value"] = np.array([ref.hash_uniform(int(s), int(i)) for s, i in zip(seeds, idx)],
                                dtype=np.float32).reshape(-1)
    for s, i, v in zip(seeds, idx, io["hash.value"]):
        assert ref.hash_uniform_scalar(int(s), int(i)) == float(v)

    meta = {"weights": weights, "structures": "train_structures.jsonl",
            "dropout_seed": str(DROPOUT_SEED), "adam": "lr 1e-3, betas 0.9 0.999, eps 1e-8, t 1",
            "loss": "10*position + 0.1*species + 1*length + 1*angle",
            "overrides": ",".join(overrides),
            "float32_torch_grad_error": f"{f32err:.3e}"}
    ref.st_save(os.path.join(out, io_name), io, meta)
    print(f"{io_name}: float32 PyTorch gradients within {f32err:.1e} of the exact ones; losses " + ", ".join(f"{k} {float(v):.5g}" for k, v in loss.items())
          + f"; {len(batch['pos_xyz'])} position and {len(batch['spec_xyz'])} species queries")


def bbox_of(train):
    x = np.concatenate([np.asarray(s["cart_coords"], dtype=np.float64) for s in train])
    return x.min(0), x.max(0)


Z_OF = {}


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared"))
    ap.add_argument("--out", default=os.path.join(here, "fixtures"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    ds = os.path.join(args.shared, "datasets", "lcs6")
    species = ref.load_species(os.path.join(ds, "meta.json"))
    from pymatgen.core.periodic_table import Element
    Z_OF.update({e: Element(e).Z for e in species})
    train = ref.load_jsonl(os.path.join(ds, "train.jsonl"))
    val = ref.load_jsonl(os.path.join(ds, "val.jsonl"))
    bbmin, bbmax = bbox_of(train)
    calib = val[100:116]
    rng = np.random.default_rng(SEED)

    fwd = [val[i] for i in FORWARD_VAL]
    with open(os.path.join(args.out, "structures.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in fwd)
    make_forward("forward", ref.PAPER_CONFIG, calib, fwd, species, bbmin, bbmax, args.out, True, rng)
    make_forward("forward_tiny", TINY_CONFIG, calib, fwd, species, bbmin, bbmax, args.out, False, rng)

    trs = [val[i] for i in TRAIN_VAL]
    with open(os.path.join(args.out, "train_structures.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in trs)
    torch.manual_seed(SEED + 7)
    tiny = ref.NeSF(TINY_CONFIG, len(species)).double()
    randomize_bn(tiny, calib, species, bbmin, bbmax, rng)
    round32(tiny)
    make_train_step(tiny, "train_step.safetensors", "train_step_io.safetensors", trs, species,
                    bbmin, bbmax, args.out, rng, write_weights=True)
    # the paper network (weights of forward.safetensors): every gradient but
    # those of the big weight matrices, to keep the file small
    paper, _, _, _ = ref.load_model(os.path.join(args.out, "forward.safetensors"))
    small = lambda k: not k.endswith(".weight") or ".bn." in k or k in PAPER_GRAD_WEIGHTS
    make_train_step(paper, "forward.safetensors", "train_step_paper_io.safetensors", trs, species,
                    bbmin, bbmax, args.out, rng, grad_filter=small,
                    adam_names=["decoder.position.8.weight", "encoder.head.1.bn.weight",
                                "decoder.species.2.bias", "encoder.pos.0.bias"])
    # generated last, so that the files above stay byte for byte what they were
    make_forward("forward_fourier", FOURIER_CONFIG, calib, fwd, species, bbmin, bbmax, args.out,
                 False, rng)
    torch.manual_seed(SEED + 11)
    four = ref.NeSF(FOURIER_CONFIG, len(species)).double()
    randomize_bn(four, calib, species, bbmin, bbmax, rng)
    round32(four)
    make_train_step(four, "train_step_fourier.safetensors", "train_step_fourier_io.safetensors", trs,
                    species, bbmin, bbmax, args.out, rng, write_weights=True)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"fixtures in {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
