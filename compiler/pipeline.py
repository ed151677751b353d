"""``compiler.compile``: trace -> channel groups -> importance -> select -> rewrite -> verify."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import fx, nn

from passes import DCPError, analyse, build_groups, count, trace
from passes.count import compact_macs, layer_costs
from passes.importance import channel_scores
from passes.report import format_groups
from passes.rewrite import KeepMap, rewrite
from passes.select import scope_pools, select
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


def _restore_modes(model: nn.Module, modes: Mapping[str, bool]) -> None:
    """Put every submodule back in its own train/eval mode (a model may mix them, e.g. frozen BN)."""
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


def planned_macs(ctx, groups, keep, costs) -> int:
    """MACs a keep plan would leave, from the per-layer costs (no rewrite needed)."""
    keep_map, total = KeepMap(ctx, groups, keep), 0
    targets = {n.name: n.target for n in ctx.gm.graph.nodes if n.op == "call_module"}
    for r in costs:
        if not r.macs:
            continue
        name = targets[r.name]
        io, m = ctx.modules.get(name), ctx.gm.get_submodule(name)
        if io is None:
            total += r.macs
            continue
        k_in, k_out = keep_map.kept_positions(io.in_ids), keep_map.kept_positions(io.out_ids)
        scale = 1.0
        if k_in is not None and getattr(m, "groups", 1) == 1:
            scale *= len(k_in) / len(io.in_ids)
        if k_out is not None:
            scale *= len(k_out) / len(io.out_ids)
        total += int(r.macs * scale)
    return total


def _search_ratio(plan, macs_of, target: float, macs_before: int, steps: int = 14) -> float:
    """The smallest ratio whose plan keeps at most ``target`` of the MACs (bisection)."""
    if not 0 < target <= 1:
        raise DCPError(f"target_macs must be a fraction in (0, 1], got {target}")
    lo, hi = 0.0, 0.99
    if macs_of(plan(hi)) > target * macs_before:
        raise DCPError(f"cannot reach {target:.0%} of the MACs by pruning (the frozen layers alone cost more)")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs_of(plan(mid)) <= target * macs_before else (mid, hi)
    return hi


def compile(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance="bn",
            round_to: int = 1, scopes=None, min_channels: int = 1,
            widths: Mapping[int | str, int] | None = None, aggregate: str = "mean",
            verify_size: int | None = 32, check: bool = True, leaf_modules=(),
            target_macs: float | None = None) -> CompileResult:
    """Compile ``model`` to a compact GraphModule. See DESIGN.md "Public contract".

    ``target_macs``: keep at most this fraction of the MACs (e.g. 0.5); ``ratio`` is then
    searched (bisection) instead of given.
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

        pools = scope_pools(gm, groups, scopes, importance, aggregate) if scopes else None

        def plan(r: float) -> dict:
            return select(groups, scores, ratio=r, round_to=round_to, min_channels=min_channels,
                          widths=widths, pools=pools)

        if target_macs is not None:
            ratio = _search_ratio(plan, lambda k: planned_macs(ctx, groups, k, costs), target_macs,
                                  sum(r.macs for r in costs))
        keep = plan(ratio)
        compact, kept = rewrite(ctx, groups, keep)
        # the rewrite reuses the input's unpruned modules and tensors; a copy of the (smaller)
        # compact model is the cheapest way to hand out a model that shares nothing with it
        compact = copy.deepcopy(compact)
        report = {
            "input_shape": [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)],
            "ratio": ratio, "importance": importance if isinstance(importance, str) else "map",
            "round_to": round_to, "min_channels": min_channels, "scopes": scopes,
            "params_before": sum(p.numel() for p in model.parameters()),
            "params_after": sum(p.numel() for p in compact.parameters()),
            "macs_before": sum(r.macs for r in costs),
            "macs_after": compact_macs(costs, gm, compact, gm),
            "groups": [{"id": g.id, "size": g.size, "kept": len(keep.get(g.id, range(g.size))),
                        "producers": g.names("producer"), "frozen": g.frozen} for g in groups],
            "groups_table": format_groups(groups, keep),
        }
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
