"""Prune through the passes and measure the compact model against the masked original with
``passes.verify`` (float64 copies, dropped channels zeroed at every node, so parameters used
directly in the graph are covered), keeping the groups and plan for the test to inspect."""
from typing import NamedTuple

import torch
from torch import fx

import passes
from passes.importance import channel_scores
from passes.rewrite import KeepMap, rewrite
from passes.select import select
from passes.verify import verify


class Pruned(NamedTuple):
    compact: fx.GraphModule
    kept: dict
    groups: list
    masked_rel: float


def prune(model, x, ratio=None, importance="bn", seed=0):
    """Prune ``model`` (every prunable group to half its width, or a global ``ratio``);
    ``masked_rel``: max |compact - masked original| / max |masked original|, in float64.
    Also checks that the input model is left untouched."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = passes.trace(model.eval(), x)
    ctx = passes.analyse(gm)
    groups = passes.build_groups(ctx)
    widths = None if ratio is not None else {g.id: max(1, g.size // 2) for g in groups if g.prunable}
    keep = select(groups, channel_scores(gm, groups, importance), ratio=ratio or 0.0, widths=widths)
    compact, kept = rewrite(ctx, groups, keep)
    xs = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    rel = verify(compact, KeepMap(ctx, groups, keep), xs).masked_rel
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model was modified"
    return Pruned(compact, kept, groups, rel)
