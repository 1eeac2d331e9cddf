#!/usr/bin/python3
"""PyTorch baseline of `nesf bench train`: training steps (forward, backward,
Adam) of the paper network at batch 64 with the spec §4 query sampling, on
structures drawn (seeded) from lcs6/train.jsonl, float32.

    /usr/bin/python3 tests/bench/torch_train.py [--weights F] [--batch 64] [--steps 2] [--threads 2]

Prints one line of key=value pairs starting with "torch_train:".  With
--interleave it waits for a line on stdin before each timed step and prints
"torch_step: step_s=... cpu_s=..." after it, so that `nesf bench train` can
alternate C and PyTorch steps under the same load.  step_s is
the mean time of one step without sampling, cpu_s its CPU time (all
threads; time.process_time); sample_s the mean time to draw
that step's query points and targets (numpy).  structures_per_s and
queries_per_s (position + species queries) count the step alone.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "parity"))
sys.path.insert(0, here)
import nesf_ref as ref  # noqa: E402
from torch_field import build_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", help="safetensors weights (default: fresh paper network)")
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--interleave", action="store_true", help="one timed step per line on stdin")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, species, bbmin, bbmax = build_model(args.weights, args.shared, args.seed)
    model = model.float().train()
    train = ref.load_jsonl(os.path.join(args.shared, "datasets", "lcs6", "train.jsonl"))
    rng = np.random.default_rng(args.seed)
    params = [t for n, t in model.named_tensors() if n in set(model.param_names())]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

    step_t = sample_t = cpu_t = 0.0
    nq = 0
    for step in range(args.steps + 1):
        if args.interleave and step > 0 and not sys.stdin.readline():
            break   # (sampling waits too: it would compete with the C step)
        t0 = time.perf_counter()
        structs = [train[i] for i in rng.choice(len(train), args.batch, replace=False)]
        pq, sq = [], []
        for s in structs:
            a, _, _ = ref.structure_arrays(s, species)
            p, q = ref.paper_queries(a, bbmin, bbmax, rng)
            pq.append(p)
            sq.append(q)
        batch = ref.make_batch(structs, species, pq, sq, dtype=torch.float32)
        t1 = time.perf_counter()
        c1 = time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = ref.losses(model, batch, drop_seed=int(rng.integers(0, 2**62)))
        loss["total"].backward()
        opt.step()
        t2 = time.perf_counter()
        c2 = time.process_time()
        if step > 0:   # the first step is a warm-up
            cpu_t += c2 - c1
            sample_t += t1 - t0
            step_t += t2 - t1
            nq += len(batch["pos_xyz"]) + len(batch["spec_xyz"])
            if args.interleave:
                print(f"torch_step: step_s={t2 - t1:.4f} cpu_s={c2 - c1:.4f}", flush=True)
    n = args.steps
    print(f"torch_train: batch={args.batch} steps={n} step_s={step_t / n:.4f} "
          f"sample_s={sample_t / n:.4f} structures_per_s={args.batch * n / step_t:.2f} "
          f"queries_per_s={nq / step_t:.1f} queries_per_step={nq // n} cpu_s={cpu_t / n:.4f} "
          f"loss={float(loss['total']):.4f} threads={args.threads} torch={torch.__version__}",
          flush=True)


if __name__ == "__main__":
    main()
