"""Time to prune full-width DIM at a 320x320 example: our compiler vs torch-pruning.

    .venv/bin/python benchmarks/compile_time.py [--repeats 3] [--side 320] [--out benchmarks/results]

Ours: ``compiler.compile(matting.dim(), torch.zeros(1, 4, 320, 320), ratio=0.5)`` (trace, groups,
BN-gamma scores, global selection, rewrite, parameter/MAC count AND verification against the
masked original), plus the same without verification. Theirs, on the same model in the same
process: pruner construction + ``step()`` for ``MagnitudePruner`` (L1) and ``BNScalePruner``,
uniform and global, ``pruning_ratio=0.5``, the 1-channel output conv ignored. One warm-up,
then the median of ``--repeats`` (wall and CPU). Each torch-pruning result is then checked
(untimed): does the pruned model run, and does it keep the same channels on both sides of
every unpool (docs/method.md#teacher)? Writes ``compile_time.md`` and ``.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from matting.data.io import write_text
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import compiler  # noqa: E402
import matting  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (encoder conv, decoder conv) whose outputs meet at one MaxUnpool: must keep the same channels
UNPOOL_PAIRS = (("down1.conv2", "up2.conv"), ("down2.conv2", "up3.conv"),
                ("down3.conv3", "up4.conv"), ("down4.conv3", "up5.conv"))


def measure(run, repeats: int) -> dict:
    """``run()`` times its own work (setup such as a model copy excluded) and returns
    ``(wall seconds, CPU seconds, result)``; one warm-up, then medians."""
    run()  # warm-up
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu, result = run()
        walls.append(wall), cpus.append(cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "wall_all_s": walls,
            "result": result}


def clocked(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def ours(model: nn.Module, x: torch.Tensor, verify: bool):
    return lambda: clocked(lambda: compiler.compile(model, x, ratio=0.5, verify_size=32 if verify else 0))


def _kept_by_bias(original: nn.Conv2d, pruned: nn.Conv2d) -> list[int]:
    """Which original output channels a torch-pruning conv kept (random biases are distinct)."""
    return [int((original.bias == b).nonzero()[0]) for b in pruned.bias]


def check_tp(original: nn.Module, pruned: nn.Module) -> dict:
    """Untimed: does the pruned model run, and do unpool pairs keep the same channels?"""
    same = 0
    for enc, dec in UNPOOL_PAIRS:
        a = _kept_by_bias(original.get_submodule(f"{enc}.cbr_unit.0"), pruned.get_submodule(f"{enc}.cbr_unit.0"))
        b = _kept_by_bias(original.get_submodule(f"{dec}.cbr_unit.0"), pruned.get_submodule(f"{dec}.cbr_unit.0"))
        same += a == b
    try:
        with torch.no_grad():
            pruned.eval()(torch.randn(1, 4, 32, 32))
        runs = "runs"
    except Exception as e:
        runs = f"fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    params = sum(p.numel() for p in pruned.parameters())
    return {"forward": runs, "unpool_pairs_same_channels": f"{same}/{len(UNPOOL_PAIRS)}", "params": params}


def theirs(model: nn.Module, x: torch.Tensor, pruner_name: str, global_pruning: bool):
    import torch_pruning as tp
    importance = {"MagnitudePruner": lambda: tp.importance.MagnitudeImportance(p=1),
                  "BNScalePruner": lambda: tp.importance.BNScaleImportance()}[pruner_name]
    cls = getattr(tp.pruner, pruner_name)

    def run():
        m = copy.deepcopy(model)  # step() mutates: a fresh copy each time, untimed

        def prune():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = cls(m, x, importance=importance(), pruning_ratio=0.5, global_pruning=global_pruning,
                        ignored_layers=[m.up1.conv.cbr_unit[0]])
                p.step()
        try:
            wall, cpu, _ = clocked(prune)
        except Exception as e:  # record what happens; time what runs
            return float("nan"), float("nan"), {"step": f"fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        return wall, cpu, {"step": "ok", **check_tp(model, m)}
    return run


def markdown(rows: list[dict], meta: dict) -> str:
    base = next(r for r in rows if r["name"].startswith("ours") and "verification" in r["name"])
    lines = [f"# Pruning full-width DIM at {meta['input']}: ours vs torch-pruning {meta['torch_pruning']}", "",
             f"torch {meta['torch']}, {meta['cpus']} CPUs, torch threads {meta['threads']}, load average "
             f"{meta['load_average']:.1f} at start; one warm-up then the median of {meta['repeats']} runs. "
             "BN gammas drawn uniform in [0.05, 1] (as after sparsity training; "
             "a fresh init has every gamma 1 and BN scores tie). Ours includes tracing, grouping, scoring, selection, rewrite, param/MAC count and (first row) "
             "verification of the compact model against the masked original at 32x32. torch-pruning: pruner "
             "construction (a real forward to build the dependency graph) + step(); the model deep copy is "
             "not timed; its result is checked afterwards (untimed).", "",
             "| method | wall s (median) | CPU s | vs ours (with verification) | params after | pruned model runs | unpool pairs keep same channels |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        ratio = r["wall_s"] / base["wall_s"] if r["wall_s"] == r["wall_s"] else float("nan")
        runs = res.get("forward", res.get("step", "-")).split(" but ")[0]  # full message in the JSON
        params = f"{res['params']:,}" if "params" in res else "-"
        lines.append(f"| {r['name']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {ratio:.2f}x | {params} | "
                     f"{runs} | {res.get('unpool_pairs_same_channels', '-')} |")
    lines += ["", f"Goal: ours < torch-pruning, aiming at a quarter of it. Ours (with verification) / "
              f"fastest torch-pruning construction + step: {meta['ours_over_fastest_tp']:.2f}; without "
              f"verification: {meta['ours_noverify_over_fastest_tp']:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    import torch_pruning as tp
    from tqdm import tqdm
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--side", type=int, default=320)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, x = matting.dim().eval(), torch.zeros(1, 4, args.side, args.side)
    with torch.no_grad():  # a fresh init has every gamma 1: BN scores would all tie
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.05, 1.0)
    cases = [("ours: compiler.compile, with verification", ours(model, x, True)),
             ("ours: compiler.compile, no verification", ours(model, x, False))]
    for name in ("MagnitudePruner", "BNScalePruner"):
        for glob in (False, True):
            cases.append((f"torch-pruning {name}, {'global' if glob else 'uniform'}", theirs(model, x, name, glob)))
    rows = []
    for name, run in tqdm(cases, desc="methods"):
        t = measure(run, args.repeats)
        result = t.pop("result")
        if not isinstance(result, dict):  # ours: a CompileResult
            result = {"params": result.report["params_after"], "forward": "runs (verified)"
                      if "verify" in result.report else "runs", "unpool_pairs_same_channels":
                      f"{sum(torch.equal(result.kept[f'{a}.cbr_unit.0'], result.kept[f'{b}.cbr_unit.0']) for a, b in UNPOOL_PAIRS if f'{a}.cbr_unit.0' in result.kept)}"
                      f"/{sum(f'{a}.cbr_unit.0' in result.kept for a, _ in UNPOOL_PAIRS)} pruned"}
        rows.append({"name": name, **t, "result": result})
    tp_times = [r["wall_s"] for r in rows if r["name"].startswith("torch") and r["wall_s"] == r["wall_s"]]
    meta = {"torch": torch.__version__, "torch_pruning": tp.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0], "repeats": args.repeats,
            "input": "x".join(map(str, x.shape)),
            "ours_over_fastest_tp": rows[0]["wall_s"] / min(tp_times) if tp_times else float("nan"),
            "ours_noverify_over_fastest_tp": rows[1]["wall_s"] / min(tp_times) if tp_times else float("nan")}
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, meta)
    write_text(args.out / "compile_time.md", md)
    write_text(args.out / "compile_time.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
