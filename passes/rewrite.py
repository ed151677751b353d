"""Emit the compact model: a new GraphModule whose modules are physically smaller, their
weights, biases and statistics sliced exactly; node and module names are unchanged.

>>> import torch
>>> from passes import trace, analyse, build_groups
>>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
>>> ctx = analyse(trace(m, torch.zeros(1, 1, 4, 4))); groups = build_groups(ctx)
>>> compact, kept = rewrite(ctx, groups, {1: [0, 2]})
>>> compact.get_submodule("0").weight.shape[0], kept["0"].tolist()
(2, [0, 2])
"""
from __future__ import annotations

from operator import attrgetter

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from .channels import ChannelAnalysis, Group, Space
from .errors import DCPError
from .registry import lookup, lookup_module
from .slicers import take


class KeepMap:
    """Answers "which positions of this channel axis survive" for any axis of the graph."""

    def __init__(self, ctx: ChannelAnalysis, groups: Sequence[Group], keep: Mapping[int, Sequence[int]]):
        self.ctx = ctx
        self.dropped: set[int] = set()  # identity roots that are removed
        for g in groups:
            if g.id in keep:
                kept = np.zeros(g.size, dtype=bool)
                kept[np.asarray(keep[g.id], dtype=np.int64)] = True
                self.dropped.update(g.ids[~kept].tolist())

    def kept_positions(self, ids: Space | None) -> np.ndarray | None:
        """Kept positions of an axis, or None when the axis is untouched."""
        if ids is None:
            return None
        find = self.ctx.ids.find
        mask = np.array([find(i) not in self.dropped for i in ids.tolist()], dtype=bool)
        return None if mask.all() else np.nonzero(mask)[0]


def rewrite(ctx: ChannelAnalysis, groups: Sequence[Group], keep: Mapping[int, Sequence[int]]
            ) -> tuple[fx.GraphModule, dict[str, torch.Tensor]]:
    """The compact GraphModule and ``{module or parameter name: kept output-channel indices}``
    of every module (and parameter used directly in the graph) whose output channels changed."""
    gm, keep_map = ctx.gm, KeepMap(ctx, groups, keep)
    modules: dict[str, nn.Module] = {}
    kept: dict[str, torch.Tensor] = {}
    for name, io in ctx.modules.items():
        keep_in, keep_out = keep_map.kept_positions(io.in_ids), keep_map.kept_positions(io.out_ids)
        if keep_in is None and keep_out is None:
            continue
        m = gm.get_submodule(name)
        slicer = lookup_module(m).slicer
        if slicer is None:
            raise DCPError(f"module '{name}' ({type(m).__name__}) is a pruned member but its registry row "
                           f"has no slicer")
        modules[name] = slicer(m, keep_in, keep_out)
        if keep_out is not None:
            kept[name] = torch.as_tensor(keep_out, dtype=torch.long)
    params = _sliced_params(ctx, keep_map, kept)
    replaced = {**modules, **params}
    root = {n.target: replaced[n.target] if n.target in replaced else attrgetter(n.target)(gm)
            for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}
    graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, copies))
    _rewrite_args(gm, keep_map, copies)
    compact = fx.GraphModule(root, graph, class_name=gm.__class__.__name__)
    compact.train(gm.training)
    return compact, kept


def _sliced_params(ctx: ChannelAnalysis, keep_map: KeepMap, kept: dict) -> dict[str, torch.Tensor]:
    """Sliced copies of the parameters/buffers used directly in the graph (get_attr members);
    records their kept output positions in ``kept``."""
    out = {}
    for target, dims in ctx.params.items():
        keeps = {dim: keep_map.kept_positions(ids) for dim, ids in dims.items()}
        if all(k is None for k in keeps.values()):
            continue
        original = attrgetter(target)(ctx.gm)
        t = original
        for dim, k in keeps.items():
            t = take(t, k, dim)
        out[target] = nn.Parameter(t, requires_grad=original.requires_grad) if isinstance(original, nn.Parameter) else t
        k_out = keeps.get(ctx.param_output_dim.get(target))
        if k_out is not None:
            kept[target] = torch.as_tensor(k_out, dtype=torch.long)
    return out



def _rewrite_args(gm: fx.GraphModule, keep_map: KeepMap, copies: Mapping[fx.Node, fx.Node]) -> None:
    """Let each row with a ``rewrite_args`` hook update literal channel counts in its call."""
    for node in gm.graph.nodes:
        hook = lookup(gm, node).rewrite_args
        if hook is None:
            continue
        new = hook(node, keep_map)
        if new is not None:
            args, kwargs = fx.map_arg(tuple(new[0]), copies.__getitem__), fx.map_arg(dict(new[1]), copies.__getitem__)
            copies[node].args, copies[node].kwargs = args, kwargs
            if len(new) == 3:  # (args, kwargs, target): e.g. a chunk that became a split
                copies[node].target = new[2]
