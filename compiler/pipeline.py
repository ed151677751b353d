"""``compiler.compile``: trace -> channel groups -> importance -> select -> rewrite -> verify."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import fx, nn

from passes import DCPError, analyse, build_groups, count, trace
from passes.count import layer_axes, layer_costs, plan_macs
from passes.importance import channel_scores
from passes.report import format_groups
from passes.rewrite import KeepMap, rewrite
from passes.select import CostModel, kept_importance, scope_pools, select, select_budget
from passes.trace import as_tuple
from passes.verify import VERIFY_TOLERANCE, VerifyResult, failure_message, verify


@dataclass
class CompileResult:
    module: fx.GraphModule                       # the compact model
    kept: dict[str, torch.Tensor]                # module -> kept output-channel indices
    report: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        r = self.report
        lines = [r["groups_table"],
                 f"params {r['params_before']:,} -> {r['params_after']:,} "
                 f"({r['params_after'] / r['params_before']:.1%})",
                 f"MACs   {r['macs_before'] / 1e9:.3f} G -> {r['macs_after'] / 1e9:.3f} G "
                 f"({r['macs_after'] / max(r['macs_before'], 1):.1%}) at {r['input_shape']}"]
        v = r.get("verify")
        if v:
            lines.append(f"verify at {v['input_shape']}: compact vs masked original max rel err "
                         f"{v['masked_rel']:.2e} (abs {v['masked_abs']:.2e}); vs unmasked original "
                         f"{v['unmasked_rel']:.2e} (the cost of pruning before finetuning)")
        if r.get("latency"):
            from .latency_fit import format_latency
            lines.append(format_latency(r["latency"]))
        lines.append(f"compiled in {r['seconds']:.2f} s")
        return "\n".join(lines)


def _verify_inputs(model: nn.Module, inputs: tuple, max_side: int | None) -> tuple[tuple, Any]:
    """Random inputs for verification (smaller when the model accepts it, to keep it cheap)
    and the original model's output on them."""
    def randomise(t, shape=None):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return torch.randn(shape or t.shape, dtype=t.dtype)

    def shrink(t):
        if not isinstance(t, torch.Tensor) or t.dim() < 3 or max_side is None or max(t.shape[2:]) <= max_side:
            return randomise(t)
        scale = max_side / max(t.shape[2:])
        return randomise(t, (*t.shape[:2], *[max(1, int(s * scale)) for s in t.shape[2:]]))

    with torch.no_grad():
        small = tuple(shrink(t) for t in inputs)
        try:
            return small, model(*small)
        except Exception:  # e.g. a Linear after a flatten needs the full size
            full = tuple(randomise(t) for t in inputs)
            return full, model(*full)


def _budget_plan(gm, ctx, groups, layers, scores, example, target_macs, target_latency, backend,
                 options: dict, latency_options: Mapping[str, Any]) -> tuple[dict, dict | None]:
    """The keep plan for a MAC or a measured-latency budget (``select_budget`` over that cost
    model), and the latency report (None for MACs)."""
    def choose(cost, budget):
        return select_budget(groups, scores, cost, budget, **options)

    if target_latency is not None:
        from .latency_fit import fit_latency
        def value(keep):  # what a plan keeps, to pick between the latency- and the MAC-driven plan
            return kept_importance(scores, keep, options["normalize"])
        return fit_latency(gm, ctx, groups, layers, example, target_latency, choose, backend, options["round_to"],
                           options["min_channels"], options["max_ratio"], **{"value": value, **latency_options})
    if not 0 < target_macs <= 1:
        raise DCPError(f"target_macs must be a fraction in (0, 1], got {target_macs}")
    macs = CostModel.macs(layers, {g.id: g.size for g in groups})
    return choose(macs, target_macs * macs.total({})), None


def _restore_modes(model: nn.Module, modes: Mapping[str, bool]) -> None:
    """Put every submodule back in its own train/eval mode (a model may mix them, e.g. frozen BN)."""
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


def _default_normalize(importance) -> str:
    """Weight norms grow with a layer's fan-in: compare them per group (mean). BN gammas and given
    maps are on one scale across layers already (sparsity training compares them): keep them."""
    return "mean" if importance in ("l1", "l2") else "none"


def compile(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance="bn",
            round_to: int = 1, scopes=None, min_channels: int = 1,
            widths: Mapping[int | str, int] | None = None, aggregate: str = "mean",
            verify_size: int | None = 32, check: bool = True, leaf_modules=(),
            target_macs: float | None = None, target_latency: float | None = None, backend: str = "torch-cpu",
            normalize: str = "auto", max_ratio: float = 0.9, latency_options: Mapping[str, Any] | None = None
            ) -> CompileResult:
    """Compile ``model`` to a compact GraphModule. The stages and the public API: docs/architecture.md.

    ``target_macs``: keep at most this fraction of the MACs (e.g. 0.5); ``target_latency``: the
    compact model's latency on ``backend`` (measured at the example's shape) is this fraction of
    the original's (``compiler.latency``; ``latency_options``: cache, grid_points, rounds,
    repeats, tolerance). With either, ``select_budget`` maximises kept importance under the
    budget and ``ratio`` is ignored.
    ``normalize`` (auto: mean for l1/l2, none for BN gammas / maps) makes scores comparable
    across groups; ``max_ratio``: no group loses more than this fraction of its channels.
    ``verify_size``: longest side of the random verification input (None: the example's size).
    ``check``: raise if the compact model differs from the masked original.
    """
    start = time.perf_counter()
    inputs = as_tuple(example_inputs)
    was_training, modes = model.training, {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        gm = trace(model, inputs, leaf_modules=leaf_modules)
        ctx = analyse(gm)
        groups = build_groups(ctx)
        scores = channel_scores(gm, groups, importance, aggregate)
        costs = layer_costs(gm)
        layers = layer_axes(ctx, groups, costs)
        normalize = _default_normalize(importance) if normalize == "auto" else normalize
        latency = None
        if target_macs is not None or target_latency is not None:
            if scopes:
                raise DCPError("scopes set per-pool ratios; with a budget (target_macs / target_latency) the "
                               "selection sizes every group itself from normalised scores: drop scopes")
            options = dict(round_to=round_to, min_channels=min_channels, max_ratio=max_ratio, normalize=normalize,
                           widths=widths)
            keep, latency = _budget_plan(gm, ctx, groups, layers, scores, inputs[0], target_macs, target_latency,
                                         backend, options, latency_options or {})
            prunable = [g for g in groups if g.id in keep]
            ratio = 1 - sum(len(keep[g.id]) for g in prunable) / max(sum(g.size for g in prunable), 1)
        else:
            pools = scope_pools(gm, groups, scopes, importance, aggregate) if scopes else None
            keep = select(groups, scores, ratio=ratio, round_to=round_to, min_channels=min_channels,
                          widths=widths, pools=pools, normalize=normalize, max_ratio=max_ratio)
        compact, kept = rewrite(ctx, groups, keep)
        # the rewrite reuses the input's unpruned modules and tensors; a copy of the (smaller)
        # compact model is the cheapest way to hand out a model that shares nothing with it
        compact = copy.deepcopy(compact)
        report = {
            "input_shape": [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)],
            "ratio": ratio, "importance": importance if isinstance(importance, str) else "map",
            "normalize": normalize, "max_ratio": max_ratio,
            "round_to": round_to, "min_channels": min_channels, "scopes": scopes,
            "params_before": sum(p.numel() for p in model.parameters()),
            "params_after": sum(p.numel() for p in compact.parameters()),
            "macs_before": sum(r.macs for r in costs),
            "macs_after": plan_macs(layers, groups, keep),
            "groups": [{"id": g.id, "size": g.size, "kept": len(keep.get(g.id, range(g.size))),
                        "producers": g.names("producer"), "frozen": g.frozen} for g in groups],
            "groups_table": format_groups(groups, keep),
        }
        if latency is not None:
            report["latency"] = latency
        if verify_size != 0:
            vin, reference = _verify_inputs(model, inputs, verify_size)
            keep_map = KeepMap(ctx, groups, keep)
            result = verify(compact, keep_map, vin, original_output=reference)
            report["verify"] = {**result._asdict(), "dtype": "float64", "tolerance": VERIFY_TOLERANCE,
                                "input_shape": [list(t.shape) for t in vin if isinstance(t, torch.Tensor)]}
            if check and not result.masked_rel <= VERIFY_TOLERANCE:
                raise DCPError(failure_message(compact, keep_map, vin, result))
    finally:
        _restore_modes(model, modes)
    compact.train(was_training)
    _restore_modes(compact, modes)
    report["seconds"] = time.perf_counter() - start
    return CompileResult(compact, kept, report)


def save(res: CompileResult, path) -> Any:
    """Write a compile result as an artifact folder (graph.json + weights.pt + plan.json)."""
    from .artifact import save_module
    plan = {"kept": {k: v.tolist() for k, v in res.kept.items()},
            "widths": {name: m.out_channels for name, m in res.module.named_modules()
                       if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))},
            "report": {k: v for k, v in res.report.items() if k != "groups_table"}}
    return save_module(res.module, path, plan)
