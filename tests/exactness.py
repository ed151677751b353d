"""Prune through the passes and measure the compact model against the masked original in
float64, masking at the NODE level (so parameters used directly in the graph are covered).

Used by the tests of functional members until the node-level verify lands in passes/verify.py.
"""
import copy
from typing import NamedTuple

import numpy as np
import torch
from torch import fx

import passes
from passes.importance import channel_scores
from passes.rewrite import KeepMap, rewrite
from passes.select import select


class Pruned(NamedTuple):
    compact: fx.GraphModule
    kept: dict
    groups: list
    masked_rel: float


class _Masked(fx.Interpreter):
    def __init__(self, gm, keep_map):
        super().__init__(gm)
        self.keep_map = keep_map
        self.spaces = {n.name: s for n, s in keep_map.ctx.spaces.items()}

    def run_node(self, n):
        return self._mask(super().run_node(n), self.spaces.get(n.name))

    def _mask(self, value, space):
        if isinstance(space, np.ndarray):
            kept = self.keep_map.kept_positions(space)
            if kept is None or not value.is_floating_point():
                return value
            dropped = torch.ones(value.shape[1], dtype=torch.bool)
            dropped[torch.as_tensor(kept)] = False
            return value.index_fill(1, torch.nonzero(dropped).flatten(), 0)  # also clears 0/0 = nan
        if isinstance(space, (tuple, list)):
            return type(value)(self._mask(v, s) for v, s in zip(value, space))
        return value


def _cast(module, dtype):
    return copy.deepcopy(module).to(dtype).eval()


def prune(model, x, ratio=None, importance="bn", seed=0, dtype=torch.float64):
    """Prune ``model`` (every prunable group to half its width, or a global ``ratio``);
    ``masked_rel``: max |compact - masked original| / max |masked original|, in ``dtype``
    (float32 for models that cast to float32 themselves)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = passes.trace(model.eval(), x)
    ctx = passes.analyse(gm)
    groups = passes.build_groups(ctx)
    widths = None if ratio is not None else {g.id: max(1, g.size // 2) for g in groups if g.prunable}
    keep = select(groups, channel_scores(gm, groups, importance), ratio=ratio or 0.0, widths=widths)
    compact, kept = rewrite(ctx, groups, keep)
    keep_map = KeepMap(ctx, groups, keep)
    xs = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        ref = _Masked(_cast(gm, dtype), keep_map).run(xs)
        out = _cast(compact, dtype)(xs)
    ref, out = (ref if isinstance(ref, tuple) else (ref,)), (out if isinstance(out, tuple) else (out,))
    rel = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-300)) for a, b in zip(out, ref)) \
        if all(a.shape == b.shape for a, b in zip(out, ref)) else float("inf")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model was modified"
    return Pruned(compact, kept, groups, rel)
