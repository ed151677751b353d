"""Kept importance against MEASURED latency: the latency-driven selection's trade-off curve
next to the MAC-driven one's, on one backend.

One pair of plans at "equal latency" is at the mercy of the clock (on a 2-core VM the same
plan re-measures up to ~5 % apart a minute later), so this measures whole curves: plans at
``--budgets`` fractions of each cost model (latency tables, MACs), every compact model timed
against the original in ``--blocks`` round-robin blocks (fresh copies each), the median ratio
kept. Each latency-driven point is then compared with the MAC curve interpolated at the same
measured latency: kept importance latency / MAC.

    python benchmarks/latency_pareto.py                       # DIM 1.0 and 0.25 at 320, torch-cpu + ort-cpu
    python benchmarks/latency_pareto.py --torchvision mobilenet_v2 --size 224 --backends torch-cpu

Writes ``benchmarks/results/latency_pareto[_NAME].{md,json,png}`` atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from latency_budget import analysed, build_case_model, kept_importance  # benchmarks/ is the script's folder
from compiler.latency_fit import latency_model, measure_models
from matting.atomic import write_figure, write_text
from passes import DCPError
from passes.importance import channel_scores
from passes.rewrite import rewrite
from passes.select import CostModel, normalize_scores, select_budget


def curves(model, x, backend: str, budgets: list[float], importance: str, normalize: str, round_to: int,
           blocks: int, repeats: int) -> dict:
    gm, ctx, groups, layers = analysed(model, x)
    scores = channel_scores(gm, groups, importance)
    norm = normalize_scores(scores, normalize)
    sizes = {g.id: g.size for g in groups}
    with tempfile.TemporaryDirectory(prefix="dcp-pareto-") as cache:
        lat, _, stats = latency_model(gm, groups, layers, backend, round_to, cache=cache)
    costs = {"latency": lat, "macs": CostModel.macs(layers, sizes)}
    plans = {}
    for selector, cost in costs.items():
        for b in budgets:
            try:
                keep = select_budget(groups, scores, cost, b * cost.total({}), round_to=round_to, max_ratio=0.9,
                                     normalize=normalize)
            except DCPError:  # below this cost model's narrowest plan
                continue
            plans[(selector, b)] = keep
    compact = {f"{s}@{b}": rewrite(ctx, groups, keep)[0] for (s, b), keep in plans.items()}
    ratios = {k: [] for k in compact}
    for _ in range(blocks):  # fresh copies each block (measure_models deep-copies); the median block counts
        ms = measure_models({"original": gm, **compact}, x, backend, repeats)
        for k in compact:
            ratios[k].append(ms[k] / ms["original"])
    points = []
    for (selector, b), keep in plans.items():
        kept = {g: len(k) for g, k in keep.items()}
        points.append({"selector": selector, "budget": b, "measured_ratio": float(np.median(ratios[f"{selector}@{b}"])),
                       "spread": float(np.ptp(ratios[f"{selector}@{b}"])), "kept_importance": kept_importance(norm, keep),
                       "predicted_ratio": lat.total(kept) / lat.total({}),
                       "mac_ratio": costs["macs"].total(kept) / costs["macs"].total({})})
    return {"points": points, "table_s": stats["seconds"], "compare": compare(points)}


def compare(points: list[dict]) -> list[dict]:
    """Each latency-driven point against the MAC curve at its measured latency (linear
    interpolation; points outside the MAC curve's measured range are left out)."""
    mac = sorted((p["measured_ratio"], p["kept_importance"]) for p in points if p["selector"] == "macs")
    if len(mac) < 2:
        return []
    xs, ys = np.array([m[0] for m in mac]), np.maximum.accumulate(np.array([m[1] for m in mac]))
    out = []
    for p in sorted((p for p in points if p["selector"] == "latency"), key=lambda p: p["measured_ratio"]):
        if xs[0] <= p["measured_ratio"] <= xs[-1]:
            at = float(np.interp(p["measured_ratio"], xs, ys))
            out.append({"measured_ratio": p["measured_ratio"], "latency_plan": p["kept_importance"],
                        "mac_curve": at, "ratio": p["kept_importance"] / at})
    return out


def markdown(results: dict, command: str, seconds: float) -> str:
    lines = ["# Kept importance against measured latency: latency-driven vs MAC-driven selection", "",
             f"Command: `{command}`; {seconds:.0f} s. Each point: a plan at a budget fraction of its cost model, "
             "timed against the original (median of the blocks' ratios; spread = max - min over blocks). "
             "Comparison: each latency-driven point against the MAC curve at the same measured latency "
             "(the MAC curve's upper envelope, interpolated).", ""]
    for name, r in results.items():
        ratios = [c["ratio"] for c in r["compare"]]
        summary = (f"median {np.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} points"
                   if ratios else "no latency point inside the MAC curve's measured range")
        lines += [f"## {name}", "", f"Latency table {r['table_s']:.1f} s. Kept importance latency / MAC curve at equal "
                  f"measured latency: **{summary}**.", "",
                  "| selector | budget | measured latency ratio (spread) | predicted | MAC ratio | kept importance |",
                  "|---|---|---|---|---|---|"]
        for p in sorted(r["points"], key=lambda p: (p["selector"], p["budget"])):
            lines.append(f"| {p['selector']} | {p['budget']:.2f} | {p['measured_ratio']:.3f} ({p['spread']:.3f}) | "
                         f"{p['predicted_ratio']:.3f} | {p['mac_ratio']:.3f} | {p['kept_importance']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for selector, style in (("macs", "s--"), ("latency", "o-")):
            pts = sorted((p["measured_ratio"], p["kept_importance"]) for p in r["points"] if p["selector"] == selector)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{selector}-driven")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("measured latency / original")
        ax.set_ylabel("kept importance")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--torchvision", default=None, metavar="NAME")
    p.add_argument("--checkpoint", default=None, help="a trained sparse DIM, scored by its BN gammas")
    p.add_argument("--backends", nargs="+", default=["torch-cpu", "ort-cpu"])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85])
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    start, results = time.time(), {}
    widths = [None] if args.checkpoint or args.torchvision else args.widths
    for w in widths:
        for backend in args.backends:
            model, x, label, importance, normalize = build_case_model(w, args.checkpoint, args.torchvision, args.size)
            name = f"{'DIM ' if isinstance(label, float) else ''}{label}, {backend}, {args.size}px"
            results[name] = curves(model, x, backend, args.budgets, importance, normalize, args.round_to,
                                   args.blocks, args.repeats)
            print(name, results[name]["compare"], flush=True)
    stem = "latency_pareto" + (f"_{args.torchvision}" if args.torchvision else "_trained" if args.checkpoint else "")
    md = markdown(results, "python benchmarks/latency_pareto.py " + " ".join(sys.argv[1:]), time.time() - start)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps(results, indent=1))
    write_text(out / f"{stem}.md", md)
    write_figure(out / f"{stem}.png", plot(results), dpi=110)
    print(md)


if __name__ == "__main__":
    try:
        main()
    except DCPError as e:
        raise SystemExit(f"latency_pareto: {e}") from None
