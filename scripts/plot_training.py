#!/usr/bin/python3
"""Plots the shipped model's val atom-count error, species error and
pymatgen match rate against training hours (docs/training-curve.json ->
docs/training-curve.svg).  Needs Debian's python3-matplotlib.

    scripts/plot_training.py [--data docs/training-curve.json] [--out docs/training-curve.svg]

The JSON is a list of points {"label", "hours", "cpu": "2-core ...",
"atoms_pct", "species_pct", "match_pct", "refined": bool}; refined points
(latent refinement at encode time, docs/training.md) are drawn apart.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "docs", "training-curve.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "training-curve.svg"))
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_training: needs matplotlib (apt-get install python3-matplotlib)")
    pts = json.load(open(a.data))
    plain = sorted((p for p in pts if not p.get("refined")), key=lambda p: p["hours"])
    refined = sorted((p for p in pts if p.get("refined")), key=lambda p: p["hours"])
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    series = [("atoms_pct", "atom-count error %", "tab:red"),
              ("species_pct", "species error (actual) %", "tab:orange"),
              ("match_pct", "StructureMatcher match %", "tab:blue")]
    for key, name, col in series:
        xs = [p["hours"] for p in plain if p.get(key) is not None]
        ys = [p[key] for p in plain if p.get(key) is not None]
        ax.plot(xs, ys, "o-", color=col, label=name)
        rx = [p["hours"] for p in refined if p.get(key) is not None]
        ry = [p[key] for p in refined if p.get(key) is not None]
        if rx:
            ax.plot(rx, ry, "D", color=col, markerfacecolor="white", markersize=7,
                    label=f"{name}, refined latents")
    for p in plain:
        ax.annotate(p["label"], (p["hours"], p.get("atoms_pct") or 0), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=7, color="tab:red")
    ax.axhline(6.0, color="tab:red", lw=0.8, ls=":")
    ax.axhline(80.0, color="tab:blue", lw=0.8, ls=":")
    ax.set_xlabel("training hours on the 2-core CPU (both cores)")
    ax.set_ylabel("% of LCS6Å val (286 structures)")
    ax.set_ylim(0, 100)
    ax.set_title("models/lcs6.safetensors over its training (fast decoder); dotted: the bars")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    fig.tight_layout()
    tmp = a.out + ".tmp"
    fig.savefig(tmp, format="svg", metadata={"Date": None})
    os.replace(tmp, a.out)
    print(f"plot_training: wrote {a.out} ({len(pts)} points)")


if __name__ == "__main__":
    main()
