"""Where does a model's time go, per MAC? Each conv unit (the layer with its BN / activation /
pool) timed alone at full width on the backend, next to its MACs.

A latency-driven selection can only beat a MAC-driven one where time per MAC differs between
the layers it trades against each other: if every layer costs the same milliseconds per MAC,
a MAC budget IS a latency budget. This prints the per-layer ms/GMAC and plots it.

    python benchmarks/time_per_mac.py                                  # DIM 1.0 and 0.25 at 320, torch-cpu + ort-cpu
    python benchmarks/time_per_mac.py --torchvision mobilenet_v2 --size 224 --backends torch-cpu

Writes ``benchmarks/results/time_per_mac[_NAME].{md,png}`` atomically.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compiler.latency_fit import latency_model  # noqa: E402
from latency_budget import analysed, build_case_model  # noqa: E402  (benchmarks/ is the script's folder)
from matting.atomic import write_figure, write_text  # noqa: E402
from passes import DCPError  # noqa: E402
from passes.select import CostModel  # noqa: E402


def per_layer(model: torch.nn.Module, x: torch.Tensor, backend: str) -> list[dict]:
    """Full-width ms and MACs of every unit (tables with one grid point: the full width)."""
    gm, _, groups, layers = analysed(model.eval(), x)
    macs = CostModel.macs(layers, {g.id: g.size for g in groups})
    with tempfile.TemporaryDirectory(prefix="dcp-time-per-mac-") as cache:
        lat, _, _ = latency_model(gm, groups, layers, backend, grid_points=1, cache=cache)
    return [{"layer": layer.node, "ms": lat.layer(i, {}), "gmacs": macs.layer(i, {}) / 1e9}
            for i, layer in enumerate(layers)]


def markdown(runs: dict[str, list[dict]], command: str, seconds: float) -> str:
    lines = ["# Time per MAC, layer by layer (each unit timed alone at full width)", "",
             f"Command: `{command}`; {seconds:.0f} s. ms/GMAC far above the model's median marks a layer "
             "that a MAC budget under-prices.", ""]
    for name, rows in runs.items():
        med = float(np.median([r["ms"] / max(r["gmacs"], 1e-12) for r in rows]))
        total_ms, total_g = sum(r["ms"] for r in rows), sum(r["gmacs"] for r in rows)
        lines += [f"## {name}", "", f"Median {med:.1f} ms/GMAC; units add up to {total_ms:.1f} ms for "
                  f"{total_g:.2f} GMACs.", "", "| layer | ms | GMACs | ms/GMAC | x median | share of ms | share of MACs |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            per = r["ms"] / max(r["gmacs"], 1e-12)
            lines.append(f"| {r['layer']} | {r['ms']:.2f} | {r['gmacs']:.3f} | {per:.1f} | {per / med:.1f} | "
                         f"{r['ms'] / total_ms:.1%} | {r['gmacs'] / total_g:.1%} |")
        lines.append("")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, rows in runs.items():
        per = [r["ms"] / max(r["gmacs"], 1e-12) for r in rows]
        ax.plot(range(len(rows)), np.array(per) / np.median(per), marker="o", label=name)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("conv unit (network order)")
    ax.set_ylabel("ms per MAC / model median")
    ax.set_title("Time per MAC by layer: flat = a MAC budget is a latency budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25], help="DIM widths")
    p.add_argument("--torchvision", default=None, metavar="NAME", help="an untrained torchvision model instead of DIM")
    p.add_argument("--backends", nargs="+", default=["torch-cpu", "ort-cpu"])
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    start, runs = time.time(), {}
    for w in [None] if args.torchvision else args.widths:
        for backend in args.backends:  # a fresh (seeded) model per backend
            model, x, label, _, _ = build_case_model(w, None, args.torchvision, args.size)
            name = f"DIM {label}" if w is not None else label
            runs[f"{name}, {backend}, {args.size}px"] = per_layer(model, x, backend)
    argv = " ".join(sys.argv[1:])
    md = markdown(runs, f"python benchmarks/time_per_mac.py {argv}".strip(), time.time() - start)
    stem = "time_per_mac" + (f"_{args.torchvision}" if args.torchvision else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.md", md)
    write_figure(out / f"{stem}.png", plot(runs), dpi=110)
    print(md)


if __name__ == "__main__":
    try:
        main()
    except DCPError as e:
        raise SystemExit(f"time_per_mac: {e}") from None
