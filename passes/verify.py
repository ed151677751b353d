"""Check a rewrite: the compact model must equal the MASKED original (dropped channels zeroed
at every member's output and at every consumer's input) to float precision. The error
against the unmasked original is reported too: the true cost of pruning.

>>> import torch
>>> from passes import trace, analyse, build_groups
>>> from passes.rewrite import rewrite, KeepMap
>>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.Sigmoid(), torch.nn.Conv2d(4, 1, 1)).eval()
>>> ctx = analyse(trace(m, torch.zeros(1, 1, 4, 4))); groups = build_groups(ctx)
>>> compact, _ = rewrite(ctx, groups, {1: [1, 3]})
>>> verify(m, compact, KeepMap(ctx, groups, {1: [1, 3]}), torch.randn(2, 1, 5, 5)).masked_rel < 1e-6
True
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch import nn

from .rewrite import KeepMap
from .trace import as_tuple


class VerifyResult(NamedTuple):
    masked_abs: float    # max |compact - masked original|
    masked_rel: float    # ... divided by max |masked original|
    unmasked_abs: float  # max |compact - original|: what pruning costs before finetuning
    unmasked_rel: float


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _zero(t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(t.shape[1], dtype=t.dtype, device=t.device)
    mask[positions] = 0
    return t * mask.view(1, -1, *([1] * (t.dim() - 2)))


@contextlib.contextmanager
def masked(model: nn.Module, keep_map: KeepMap):
    """Temporarily zero the dropped channels of ``model`` (the module the rewrite came from)."""
    handles = []
    for name, io in keep_map.ctx.modules.items():
        module = model.get_submodule(name)
        for ids, is_input in ((io.in_ids, True), (io.out_ids, False)):
            keep = keep_map.kept_positions(ids)
            if keep is None:
                continue
            dropped = torch.ones(len(ids), dtype=torch.bool)
            dropped[torch.as_tensor(keep)] = False
            pos = torch.nonzero(dropped).flatten()
            if is_input:
                handles.append(module.register_forward_pre_hook(
                    lambda mod, args, pos=pos: (_zero(args[0], pos), *args[1:])))
            else:
                handles.append(module.register_forward_hook(lambda mod, args, out, pos=pos: _zero(out, pos)))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def _max_err(a, b) -> tuple[float, float]:
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return float("inf"), float("inf")
    abs_err = max((float((x.float() - y.float()).abs().max()) for x, y in zip(ta, tb)), default=0.0)
    scale = max((float(y.float().abs().max()) for y in tb), default=0.0)
    return abs_err, abs_err / max(scale, 1e-12)


@torch.no_grad()
def verify(original: nn.Module, compact: nn.Module, keep_map: KeepMap, inputs: Any,
           original_output: Any = None) -> VerifyResult:
    """Run original (unless its ``original_output`` is given), masked original and compact on
    ``inputs`` (eval mode, no grad)."""
    inputs = as_tuple(inputs)
    modes = (original.training, compact.training)
    original.eval(), compact.eval()
    try:
        out_compact = compact(*inputs)
        out_original = original(*inputs) if original_output is None else original_output
        with masked(keep_map.ctx.gm, keep_map) as m:
            out_masked = m(*inputs)
    finally:
        original.train(modes[0]), compact.train(modes[1])
    return VerifyResult(*_max_err(out_compact, out_masked), *_max_err(out_compact, out_original))
