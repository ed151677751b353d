"""Hit a MEASURED latency target: select on the measured latency model, rewrite, time the
compact model against the original on the backend, and correct.

The tables predict the compact/original latency ratio; what they miss (ops outside the units,
caches, threading) shows when the whole compact model is timed. When the measured ratio
misses the target by more than ``tolerance`` (relative), the budget is rescaled by
measured/predicted (then by the secant through the last two rounds) and the selection rerun,
a few ``rounds`` at most; the closest plan wins.
Original and compact are timed interleaved (the same load hits both), so the RATIO is robust
to other processes on the machine even when absolute times are not. A machine heavily loaded
by other work (more runnable threads than cores) still distorts single timings by whole
scheduler slices: measure on a quiet machine.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from passes.channels import ChannelAnalysis, Group
from passes.count import Axis, LayerAxes
from passes.errors import DCPError
from passes.rewrite import rewrite
from passes.select import CostModel, floor_width

from .latency import (ORT_PROVIDER, is_cuda, confirmed, elapsed_ms, torch_fn, check_backend, ort_session_fn,
                      runner, time_fn, unit_spec)
from .latency_tables import grid, measure_tables

Choose = Callable[[CostModel, float], dict]  # (cost model, budget) -> keep plan


def axis_grid(axis: Axis | None, channels: int, floors: Mapping[int, int], sizes: Mapping[int, int],
              points: int, round_to: int) -> list[int]:
    """Grid widths for one axis: from its narrowest reachable width to full.

    >>> axis_grid(Axis(((0, 64),), 0), 64, floors={0: 8}, sizes={0: 64}, points=5, round_to=8)
    [8, 24, 32, 48, 64]
    """
    if axis is None or not axis.shares:
        return [channels]
    lo = axis.fixed + sum(n * floors[g] / sizes[g] for g, n in axis.shares)
    return grid(lo, channels, points, round_to)


def latency_model(gm: fx.GraphModule, groups: Sequence[Group], layers: Sequence[LayerAxes], backend: str,
                  round_to: int = 1, min_channels: int = 1, max_ratio: float = 0.9, grid_points: int = 5,
                  cache=None, timer=None, sweeps: int = 2) -> tuple[CostModel, list, dict]:
    """The measured per-layer latency model as a ``CostModel`` (ms), its tables and build stats
    (``sweeps``: whole timing sweeps per new entry, see ``compiler.latency_tables``)."""
    sizes = {g.id: g.size for g in groups}
    floors = {g.id: floor_width(g.size, min_channels, max_ratio, round_to) for g in groups}
    specs = [unit_spec(gm, layer) for layer in layers]
    grids = [([s.channels[0]] if s.depthwise else axis_grid(l.inputs, s.channels[0], floors, sizes, grid_points, round_to),
              axis_grid(l.outputs, s.channels[1], floors, sizes, grid_points, round_to)) for l, s in zip(layers, specs)]
    tables, stats = measure_tables(specs, grids, backend, cache, timer=timer, sweeps=sweeps)

    def layer_ms(i, w_in, w_out):  # axis widths -> the unit's channels (an untracked axis is 1 wide)
        (c_in, c_out), layer = specs[i].channels, layers[i]
        return tables[i](None if w_in is None else w_in * c_in / max(layer.inputs.size, 1),
                         w_out * c_out / max(layer.outputs.size, 1))
    return CostModel(layers, layer_ms, sizes), tables, stats


def measure_models(models: Mapping[str, nn.Module], x: torch.Tensor, backend: str, repeats: int = 5,
                   agree: float = 0.1) -> dict[str, float]:
    """Ms of each whole model on the backend: the fastest of ``repeats`` runs, timed round-robin
    so that load from other processes hits all alike (ORT: on the exported graph; ``trt``: the
    unpool-lowered one)."""
    from .onnx_export import export_onnx
    cuda = is_cuda(backend)
    fns = {}
    with tempfile.TemporaryDirectory(prefix="dcp-latency-") as tmp:
        for name, model in models.items():
            if backend in ORT_PROVIDER:
                path = Path(tmp) / f"{name}.onnx"
                export_onnx(model, path, x, dynamic=False, check=False, lower_unpool=backend == "trt")
                fns[name] = ort_session_fn(str(path), x, backend)
            else:
                fns[name] = torch_fn(copy.deepcopy(model), x, backend)
        for fn in fns.values():  # warm-up
            elapsed_ms(fn, 1, cuda)
        runs = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                runs[k].append(elapsed_ms(fn, 1, cuda))
        # a lone fast run is confirmed before it counts: on a loaded machine every run of one
        # model can be disturbed while the other's are not, and a correction round or an
        # "out of reach" verdict would then follow noise (as in time_fn, up to 3x the runs)
        for _ in range(2 * repeats):
            if repeats < 2 or all(confirmed(v, agree) for v in runs.values()):
                break
            for k in fns:  # still round-robin: load hits all models alike
                runs[k].append(elapsed_ms(fns[k], 1, cuda))
    return {k: min(v) for k, v in runs.items()}  # the least disturbed run, as the tables


def fit_latency(gm: fx.GraphModule, ctx: ChannelAnalysis, groups: Sequence[Group], layers: Sequence[LayerAxes],
                example: torch.Tensor, target: float, choose: Choose, backend: str = "torch-cpu",
                round_to: int = 1, min_channels: int = 1, max_ratio: float = 0.9, grid_points: int = 5,
                cache=None, rounds: int = 5, tolerance: float = 0.05, repeats: int = 5,
                timer=None, measure=None, value: Callable[[dict], float] | None = None,
                sweeps: int = 2) -> tuple[dict, dict]:
    """The keep plan whose compact model measures closest to ``target`` x the original's latency,
    and a report (tables, rounds, per-layer predicted vs measured). ``timer(module, x)`` and
    ``measure({name: model})`` replace the backend's clocks (tests).

    With ``value(keep)`` (the kept importance), a MAC-driven plan is fitted to the same measured
    target as a rival, and of the plans within the tolerance the one with more value at the
    target (read along the value/latency slope of every plan measured) wins: the tables
    can mis-rank plans where they are least accurate (the narrowest widths, where fixed costs
    dominate), and a MAC budget is the safe fallback there. The report names the winner."""
    if not 0 < target <= 1:
        raise DCPError(f"target_latency must be a fraction in (0, 1], got {target}")
    check_backend(backend)
    cost, tables, stats = latency_model(gm, groups, layers, backend, round_to, min_channels, max_ratio,
                                        grid_points, cache, timer, sweeps)
    sizes = {g.id: g.size for g in groups}
    measure = measure or (lambda models: measure_models(models, example, backend, repeats))
    floors = {g.id: floor_width(g.size, min_channels, max_ratio, round_to) for g in groups if g.prunable}

    def run(model: CostModel) -> tuple[tuple, list, float, list]:
        return _fit_rounds(model, target, choose, lambda keep: _measure_plan(gm, ctx, groups, keep, sizes, measure),
                           floors, rounds, tolerance)
    best, tried, narrowest, keeps = run(cost)
    full = cost.total({})
    keep, measured, predicted, ms = best
    at_floor = [r["measured_ratio"] for r in tried if r["budget_ms"] <= narrowest]
    warning = None
    if at_floor and min(at_floor) >= 1.0:  # the narrowest plan cannot be slower than the original: noise
        warning = (f"unreliable timings: the narrowest plan measured {min(at_floor):.0%} of the original "
                   f"(a busy machine?); the plan follows the tables")
    elif full > 2 * ms["original"]:  # units are parts of the model: their sum cannot be twice the whole
        warning = (f"the latency tables add up to {full:.1f} ms, over twice the whole model's {ms['original']:.1f} ms "
                   f"(timings disturbed while they were built?): rebuild them in a fresh cache on a quiet machine")
    elif measured > target * (1 + tolerance) and at_floor:
        raise DCPError(f"target_latency {target} is out of reach on {backend}: the narrowest plan (max_ratio "
                       f"{max_ratio}) measures {measured:.0%} of the original (fixed costs dominate at this size; "
                       f"raise max_ratio or the target)")
    selector, rivals = "latency", []
    if value is not None and warning is None:
        points = [(r["measured_ratio"], value(k)) for r, k in zip(tried, keeps)]
        try:
            mac_best, mac_tried, _, mac_keeps = run(CostModel.macs(layers, sizes))
            points += [(r["measured_ratio"], value(k)) for r, k in zip(mac_tried, mac_keeps)]
        except DCPError:
            mac_best = None
        slope = _slope(points)  # value per unit of latency ratio near the target, from every plan measured
        rivals.append(_rival("latency", measured, value(keep), len(tried), slope, target))
        if mac_best is not None:
            rivals.append(_rival("macs", mac_best[1], value(mac_best[0]), len(mac_tried), slope, target))
            if _better(rivals[1], rivals[0], target, tolerance):
                selector, (keep, measured, _, ms) = "macs", mac_best
                predicted = cost.total({g: len(k) for g, k in keep.items()}) / full
    report = {"backend": backend, "target": target, "measured_ratio": measured, "predicted_ratio": predicted,
              "original_ms": ms["original"], "compact_ms": ms["compact"], "rounds": tried, "table": stats,
              "selector": selector, "rivals": rivals,
              "layers": _per_layer(cost, tables, keep, backend, timer, full, ms["original"]), "warning": warning}
    return keep, report


def _rival(selector: str, measured: float, value: float, rounds: int, slope: float, target: float) -> dict:
    """A candidate plan; its value is also read at the target along the common slope, so that a
    plan measuring 4 % over the target does not win on importance that its extra time bought."""
    return {"selector": selector, "measured_ratio": measured, "value": value, "rounds": rounds,
            "value_at_target": value + slope * (target - measured)}


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares d(value)/d(measured ratio) over the plans measured (0 when they do not
    spread; never negative: more time cannot cost importance).

    >>> round(_slope([(0.4, 0.80), (0.5, 0.90), (0.6, 1.00)]), 6)
    1.0
    """
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    if len(xs) < 2 or np.ptp(xs) < 1e-6:
        return 0.0
    return max(0.0, float(np.polyfit(xs, ys, 1)[0]))


def _better(a: dict, b: dict, target: float, tolerance: float) -> bool:
    """Is rival ``a`` better than ``b``: both within the tolerance and more value at the target,
    or only ``a`` within it."""
    def ok(r):
        return abs(r["measured_ratio"] - target) <= tolerance * target
    if ok(a) and ok(b):
        return a["value_at_target"] > b["value_at_target"]
    return ok(a) and not ok(b)


def _measure_plan(gm, ctx, groups, keep: dict, sizes: Mapping[int, int], measure) -> tuple[float, dict]:
    """The plan's measured latency ratio (and the timings)."""
    compact, _ = rewrite(ctx, groups, keep)
    ms = measure({"original": gm, "compact": compact})
    # a plan that keeps every channel IS the original: its ratio is 1 whatever the clock says
    measured = 1.0 if all(len(k) == sizes[g] for g, k in keep.items()) else ms["compact"] / ms["original"]
    return measured, ms


def _fit_rounds(cost: CostModel, target: float, choose: Choose, measure_plan, floors: Mapping[int, int],
                rounds: int, tolerance: float) -> tuple[tuple, list, float, list]:
    """Select on ``cost``, measure, correct the budget, a few rounds: the best (keep, measured,
    predicted, ms), the rounds tried, the cost model's narrowest budget, and each round's plan."""
    full = cost.total({})
    budget, tried, best, keeps = target * full, [], None, []
    narrowest = cost.total(floors) * (1 + 1e-9)  # the cost model's cheapest plan: every group at its floor
    for _ in range(rounds):
        budget = max(budget, narrowest)  # the measurement, not the model, says if the target is out of reach
        try:
            keep = choose(cost, budget)
        except DCPError:  # the greedy cannot find a way down this cost model: take its narrowest plan
            keep = _narrowest_plan(cost, floors, choose)
            budget = narrowest
        predicted = cost.total({gid: len(k) for gid, k in keep.items()}) / full
        measured, ms = measure_plan(keep)
        keeps.append(keep)
        tried.append({"budget_ms": budget, "predicted_ratio": predicted, "measured_ratio": measured,
                      "original_ms": ms["original"], "compact_ms": ms["compact"]})
        if best is None or abs(measured - target) < abs(best[1] - target):
            best = (keep, measured, predicted, ms)
        if abs(measured - target) <= tolerance * target:
            break
        new_budget = max(_corrected_budget(tried, target, full), narrowest)
        if abs(new_budget - budget) < 1e-9 * full:  # the same plan again (e.g. at the floors)
            break
        budget = new_budget
    return best, tried, narrowest, keeps


def _narrowest_plan(cost: CostModel, floors: Mapping[int, int], choose: Choose) -> dict:
    """Every group at its floor, its best channels kept: the selection run on a cost that
    falls strictly with every width (so the greedy always finds its way down)."""
    widths = CostModel(cost.layers, lambda i, w_in, w_out: (w_in or 0.0) + w_out, cost.sizes)
    return choose(widths, widths.total(floors) * (1 + 1e-9))


def _corrected_budget(tried: list[dict], target: float, full: float) -> float:
    """The next budget: first rescaled by measured/predicted (the tables' ms are off by a
    factor); from the second round on, the secant through the last two (predicted, measured)
    points, which also absorbs a constant the tables miss (ops outside the units)."""
    last = tried[-1]
    predicted = last["predicted_ratio"] * target / last["measured_ratio"]
    if len(tried) > 1:
        prev = tried[-2]
        slope = (last["measured_ratio"] - prev["measured_ratio"]) / (last["predicted_ratio"] - prev["predicted_ratio"] or 1e-12)
        if slope > 0:
            predicted = last["predicted_ratio"] + (target - last["measured_ratio"]) / slope
    return max(predicted, 1e-6) * full


def _per_layer(cost: CostModel, tables, keep: dict, backend: str, timer, full: float, original_ms: float) -> list:
    """Per layer: full-width and predicted (interpolated) ms, and the unit re-timed at the plan's
    widths; predicted model ms = the original's measured ms x table share."""
    kept = {gid: len(k) for gid, k in keep.items()}
    timer = timer or (lambda module, x: time_fn(runner(module, x, backend), is_cuda(backend), 3))
    rows = []
    for i, (layer, table) in enumerate(zip(cost.layers, tables)):
        spec = table.spec
        w_out = int(round(cost.width(layer.outputs, kept) * spec.channels[1] / max(layer.outputs.size, 1)))
        w_in = spec.channels[0] if layer.inputs is None or not layer.inputs.shares else int(round(
            cost.width(layer.inputs, kept) * spec.channels[0] / max(layer.inputs.size, 1)))
        rows.append({"node": layer.node, "width": [w_in, w_out], "full_ms": table(None if layer.inputs is None else
                                                                                 spec.channels[0], spec.channels[1]),
                     "predicted_ms": cost.layer(i, kept), "measured_ms": float(timer(*spec.build(w_in, w_out)))})
    return rows


def format_latency(rep: dict) -> str:
    """The latency part of a compile summary: per layer and in total, predicted vs measured."""
    lines = [f"latency on {rep['backend']} (target {rep['target']:.0%} of the original's measured latency):",
             f"  {'layer':<28} {'widths':>10} {'full ms':>9} {'pred ms':>9} {'meas ms':>9}"]
    for r in rep["layers"]:
        lines.append(f"  {r['node']:<28} {'x'.join(map(str, r['width'])):>10} {r['full_ms']:9.2f} "
                     f"{r['predicted_ms']:9.2f} {r['measured_ms']:9.2f}")
    t = rep["table"]
    lines += [f"  total: predicted {rep['predicted_ratio'] * rep['original_ms']:.1f} ms "
              f"({rep['predicted_ratio']:.1%}), measured {rep['compact_ms']:.1f} ms ({rep['measured_ratio']:.1%}) "
              f"vs original {rep['original_ms']:.1f} ms; {len(rep['rounds'])} round(s)",
              f"  latency table: {t['measured']} entries measured ({t.get('timings', 0)} timings, {t.get('retimed', 0)} "
              f"re-timed as disturbed), {t['cached']} from cache, {t['seconds']:.1f} s"]
    if len(rep.get("rivals", [])) > 1:
        lines.append("  selection: " + "; ".join(f"{r['selector']}-driven plan measures {r['measured_ratio']:.1%}, keeps "
                                                 f"{r['value']:.1%} of the importance ({r['value_at_target']:.1%} "
                                                 f"at the target)" for r in rep["rivals"])
                     + f" -> {rep['selector']}-driven")
    if rep.get("warning"):
        lines.append(f"  WARNING: {rep['warning']}")
    return "\n".join(lines)
