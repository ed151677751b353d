"""Latency-budget compile: does the compact model hit the MEASURED target, what does the latency
table cost to build (cold / cached), and how much importance does latency-driven selection keep
compared with MAC-driven selection at EQUAL MEASURED latency?

Untrained DIM (weight-L1 importance, per-group mean normalisation, max_ratio 0.9), input 320,
round_to 8. Per (width, backend): the table is built in a fresh cache folder (cold), then again
(cached); per target: ``fit_latency`` (the compile path) gives the latency-driven plan and its
measured ratio; the MAC-driven plan is then searched so that its MEASURED latency equals the
latency-driven one's (bisection on the predicted latency, then one measured correction), and
the kept (normalised) importance of both is compared.

    python benchmarks/latency_budget.py            # full: widths 1.0 0.25, torch-cpu + ort-cpu
    python benchmarks/latency_budget.py --quick    # width 0.25, torch-cpu, target 0.5

Writes ``benchmarks/results/latency_budget{,_quick}.{md,json}`` atomically.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import matting
from matting.data.io import write_text
from compiler.latency_fit import fit_latency, latency_model, measure_models
from passes import DCPError, analyse, build_groups, trace
from passes.count import layer_axes
from passes.importance import channel_scores
from passes.rewrite import rewrite
from passes import select
from passes.select import CostModel, normalize_scores, select_budget


def kept_importance(norm: dict, keep: dict) -> float:
    """Fraction of the total (already normalised) importance that a plan keeps."""
    return select.kept_importance(norm, keep, "none")


def mac_plan_at_latency(choose, macs: CostModel, lat: CostModel, predicted: float) -> dict:
    """The MAC-budget plan whose PREDICTED latency ratio is closest to ``predicted`` (bisection)."""
    lo, hi, full_m, full_l = 0.01, 1.0, macs.total({}), lat.total({})
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        try:
            keep = choose(macs, mid * full_m)
        except DCPError:  # below the narrowest plan's MACs (every group at its floor)
            lo = mid
            continue
        p = lat.total({g: len(k) for g, k in keep.items()}) / full_l
        if best is None or abs(p - predicted) < abs(best[1] - predicted):
            best = (keep, p, mid)
        lo, hi = (mid, hi) if p < predicted else (lo, mid)
    return best


def equal_latency_mac_plan(choose, macs, lat, predicted, gm, ctx, groups, keep, x, backend, repeats, rounds=3):
    """The MAC-budget plan whose MEASURED latency matches the latency plan's: aimed by the
    tables, then corrected by measuring both (interleaved), a few rounds; the closest wins."""
    aim, best = predicted, None
    compact = rewrite(ctx, groups, keep)[0]
    for _ in range(rounds):
        mac_keep, _, _ = mac_plan_at_latency(choose, macs, lat, aim)
        ms = measure_models({"original": gm, "latency": compact, "macs": rewrite(ctx, groups, mac_keep)[0]},
                            x, backend, repeats)
        ratio_l, ratio_m = ms["latency"] / ms["original"], ms["macs"] / ms["original"]
        if best is None or abs(ratio_m - ratio_l) < abs(best[2] - best[1]):
            best = (mac_keep, ratio_l, ratio_m)
        if abs(ratio_m - ratio_l) <= 0.03 * ratio_l:
            break
        aim *= ratio_l / ratio_m
    return best


def build_case_model(width, checkpoint: str | None, torchvision_name: str | None, size: int):
    """(model, example input, label, importance, normalize): an untrained DIM of ``width`` scored
    by weight L1 (per-group mean normalised); a trained sparse ``checkpoint`` scored by its BN
    gammas (not normalised: sparsity training already put them on one scale); or an untrained
    torchvision classifier (L1, mean normalised), whose layers differ in time per MAC far more."""
    torch.manual_seed(0)
    if torchvision_name:
        import torchvision
        model = getattr(torchvision.models, torchvision_name)(weights=None).eval()
        return model, torch.zeros(1, 3, size, size), torchvision_name, "l1", "mean"
    if checkpoint:
        from matting.checkpoint import load_dim
        return load_dim(checkpoint).eval(), torch.zeros(1, 4, size, size), f"{Path(checkpoint).name} (trained)", "bn", "none"
    return matting.dim(width=width).eval(), torch.zeros(1, 4, size, size), width, "l1", "mean"


def analysed(model, x):
    """(graph, channel analysis, groups, layers) of ``model`` traced at ``x``."""
    gm = trace(model, x)
    ctx = analyse(gm)
    groups = build_groups(ctx)
    return gm, ctx, groups, layer_axes(ctx, groups)


def run_case(width: float, backend: str, targets: list[float], size: int, round_to: int, repeats: int,
             grid: int = 5, checkpoint: str | None = None, torchvision_name: str | None = None,
             max_ratio: float = 0.9, sweeps: int = 2) -> dict:
    """One (model, backend): fit every target, then compare with the MAC plan at equal latency."""
    model, x, width, importance, normalize = build_case_model(width, checkpoint, torchvision_name, size)
    gm, ctx, groups, layers = analysed(model, x)
    scores = channel_scores(gm, groups, importance)
    norm = normalize_scores(scores, normalize)
    options = dict(round_to=round_to, max_ratio=max_ratio, normalize=normalize)
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, **options)  # noqa: E731
    macs = CostModel.macs(layers, {g.id: g.size for g in groups})
    case = {"width": width, "backend": backend, "targets": []}
    with tempfile.TemporaryDirectory(prefix="dcp-latency-bench-") as cache:
        for label in ("cold", "cached"):
            start = time.perf_counter()
            lat, _, stats = latency_model(gm, groups, layers, backend, round_to, max_ratio=max_ratio, grid_points=grid,
                                          cache=cache, sweeps=sweeps)
            case[f"table_{label}_s"] = time.perf_counter() - start
            case[f"table_{label}_timings"] = stats["measured"]
        for target in targets:
            try:
                keep, rep = fit_latency(gm, ctx, groups, layers, x, target, choose, backend, round_to, cache=cache,
                                        repeats=repeats, grid_points=grid, max_ratio=max_ratio, sweeps=sweeps)
            except DCPError as e:  # e.g. out of reach at this size: a row that says so, not a lost run
                case["targets"].append({"target": target, "error": str(e)})
                print(f"width {width} {backend} target {target}: {e}", flush=True)
                continue
            mac_keep, ratio_l, ratio_m = equal_latency_mac_plan(choose, macs, lat, rep["predicted_ratio"], gm, ctx,
                                                                groups, keep, x, backend, repeats)
            imp_l, imp_m = kept_importance(norm, keep), kept_importance(norm, mac_keep)
            case["targets"].append({
                "target": target, "measured_ratio": rep["measured_ratio"], "rounds": len(rep["rounds"]),
                "error_pct": 100 * (rep["measured_ratio"] - target) / target,
                "compare_latency_ratio": ratio_l, "compare_mac_plan_ratio": ratio_m,
                "kept_importance_latency": imp_l, "kept_importance_macs": imp_m, "importance_ratio": imp_l / imp_m,
                "macs_latency_plan": sum(macs.layer(i, {g: len(k) for g, k in keep.items()})
                                         for i in range(len(layers))) / macs.total({}),
            })
            t = case["targets"][-1]
            print(f"width {width} {backend} target {target}: measured {t['measured_ratio']:.3f} "
                  f"({t['error_pct']:+.1f} %), importance latency/MAC plan {t['importance_ratio']:.3f} "
                  f"at measured {ratio_l:.3f} vs {ratio_m:.3f}", flush=True)
    return case


def markdown(cases: list[dict], command: str, seconds: float) -> str:
    lines = ["# Latency-budget compile (untrained DIM, L1 importance, mean-normalised, round_to 8)", "",
             f"Command: `{command}`; {seconds:.0f} s in all. Table build: cold (fresh cache) / cached.", "",
             "| width | backend | target | measured ratio | error % | rounds | table cold s | table cached s "
             "| measured latency: latency plan / MAC plan | kept importance: latency / MAC plan | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for t in c["targets"]:
            if "error" in t:
                lines.append(f"| {c['width']} | {c['backend']} | {t['target']} | {t['error']} | | | "
                             f"{c['table_cold_s']:.1f} ({c['table_cold_timings']}) | {c['table_cached_s']:.2f} | | | |")
                continue
            lines.append(f"| {c['width']} | {c['backend']} | {t['target']} | {t['measured_ratio']:.3f} | "
                         f"{t['error_pct']:+.1f} | {t['rounds']} | {c['table_cold_s']:.1f} ({c['table_cold_timings']}) | "
                         f"{c['table_cached_s']:.2f} | {t['compare_latency_ratio']:.3f} / {t['compare_mac_plan_ratio']:.3f} | "
                         f"{t['kept_importance_latency']:.3f} / {t['kept_importance_macs']:.3f} | "
                         f"{t['importance_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="width 0.25, torch-cpu, target 0.5 (checks the script)")
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--backends", nargs="+", default=["torch-cpu", "ort-cpu"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--grid", type=int, default=5, help="latency table points per axis")
    p.add_argument("--stem", default=None, help="results file name (default latency_budget[_quick])")
    p.add_argument("--threads", type=int, default=None, help="torch/ORT intra-op threads (default: torch's)")
    p.add_argument("--checkpoint", default=None,
                   help="a trained sparse DIM checkpoint (e.g. demo_out/prune/best.pt), scored by its BN gammas, "
                        "instead of untrained DIMs of --widths")
    p.add_argument("--max-ratio", type=float, default=0.9, help="the largest fraction any group may lose")
    p.add_argument("--sweeps", type=int, default=2, help="timing sweeps per new table entry (TensorRT: 1, one "
                                                        "engine build per timing)")
    p.add_argument("--torchvision", default=None, metavar="NAME",
                   help="an untrained torchvision model (e.g. mobilenet_v2, with --size 224) instead of DIM")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.widths, args.backends, args.targets = [0.25], ["torch-cpu"], [0.5]
    start = time.time()
    widths = [None] if args.checkpoint or args.torchvision else args.widths
    cases = [run_case(w, b, args.targets, args.size, args.round_to, args.repeats, args.grid, args.checkpoint,
                      args.torchvision, args.max_ratio, args.sweeps)
             for w in widths for b in args.backends]
    stem = args.stem or ("latency_budget_quick" if args.quick else "latency_budget")
    command = "python benchmarks/latency_budget.py" + (" --quick" if args.quick else "") + (
        "" if args.quick else (f" --widths {' '.join(map(str, args.widths))}" if not (args.checkpoint or args.torchvision) else "") + f" --backends {' '.join(args.backends)} "
                              f"--targets {' '.join(map(str, args.targets))} --size {args.size} --grid {args.grid}") + (
        f" --threads {args.threads}" if args.threads else "") + (
        f" --max-ratio {args.max_ratio}" if args.max_ratio != 0.9 else "") + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "") + (
        f" --torchvision {args.torchvision}" if args.torchvision else "")
    md = markdown(cases, command, time.time() - start)
    if args.checkpoint:  # the header names what was scored
        md = md.replace("(untrained DIM, L1 importance, mean-normalised,", f"({args.checkpoint}, BN-gamma importance,")
    if args.torchvision:
        md = md.replace("(untrained DIM,", f"(untrained torchvision {args.torchvision},")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps({"cases": cases, "threads": torch.get_num_threads()}, indent=1))
    write_text(out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    try:
        main()
    except DCPError as e:  # e.g. a CUDA backend without a GPU: one line, per backend in gpu.sh
        raise SystemExit(f"latency_budget: {e}") from None
