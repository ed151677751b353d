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

import copy
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from .channels import ChannelAnalysis, Group, Space


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


def _shallow(module: nn.Module) -> nn.Module:
    """A copy that shares nothing mutable with the original but its (unchanged) tensors."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def _take(t: torch.Tensor | None, idx: np.ndarray | None, dim: int) -> torch.Tensor | None:
    if t is None or idx is None:
        return t
    return t.detach().index_select(dim, torch.as_tensor(idx, device=t.device))  # a new tensor


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=module._parameters[name].requires_grad)
    else:
        module._buffers[name] = value


def _slice_conv(m, keep_in, keep_out):
    new = _shallow(m)
    transposed = isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    if m.groups > 1:  # depthwise: one axis, the weight's output dim
        keep_in = None
        new.groups = new.in_channels = new.out_channels = len(keep_out) if keep_out is not None else m.out_channels
    w = _take(_take(m.weight, keep_out, out_dim), keep_in, in_dim)
    _set(new, "weight", w)
    _set(new, "bias", _take(m.bias, keep_out, 0))
    if m.groups == 1:
        new.out_channels, new.in_channels = (w.shape[1], w.shape[0]) if transposed else (w.shape[0], w.shape[1])
    return new


def _slice_linear(m, keep_in, keep_out):
    new = _shallow(m)
    _set(new, "weight", _take(_take(m.weight, keep_out, 0), keep_in, 1))
    _set(new, "bias", _take(m.bias, keep_out, 0))
    new.out_features, new.in_features = new.weight.shape
    return new


def _slice_norm(m, keep_in, keep_out):
    new = _shallow(m)
    for name in ("weight", "bias", "running_mean", "running_var"):
        _set(new, name, _take(getattr(m, name, None), keep_out, 0))
    n = len(keep_out)
    if isinstance(m, nn.GroupNorm):
        new.num_groups = new.num_channels = n
    else:
        new.num_features = n
    return new


def _slice_channelwise(m, keep_in, keep_out):
    new = _shallow(m)
    _set(new, "weight", _take(m.weight, keep_out, 0))
    new.num_parameters = len(keep_out)
    return new


SLICERS: dict[type, Callable] = {
    nn.Conv1d: _slice_conv, nn.Conv2d: _slice_conv, nn.Conv3d: _slice_conv,
    nn.ConvTranspose1d: _slice_conv, nn.ConvTranspose2d: _slice_conv, nn.Linear: _slice_linear,
    nn.BatchNorm1d: _slice_norm, nn.BatchNorm2d: _slice_norm, nn.InstanceNorm1d: _slice_norm,
    nn.InstanceNorm2d: _slice_norm, nn.GroupNorm: _slice_norm, nn.PReLU: _slice_channelwise,
}


def rewrite(ctx: ChannelAnalysis, groups: Sequence[Group], keep: Mapping[int, Sequence[int]]
            ) -> tuple[fx.GraphModule, dict[str, torch.Tensor]]:
    """The compact GraphModule and ``{module name: kept output-channel indices}`` of every
    module whose output channels changed."""
    gm, keep_map = ctx.gm, KeepMap(ctx, groups, keep)
    modules: dict[str, nn.Module] = {}
    kept: dict[str, torch.Tensor] = {}
    for name, io in ctx.modules.items():
        keep_in, keep_out = keep_map.kept_positions(io.in_ids), keep_map.kept_positions(io.out_ids)
        if keep_in is None and keep_out is None:
            continue
        m = gm.get_submodule(name)
        modules[name] = SLICERS[type(m)](m, keep_in, keep_out)
        if keep_out is not None:
            kept[name] = torch.as_tensor(keep_out, dtype=torch.long)
    root = {n.target: modules.get(n.target) or _fetch(gm, n.target)
            for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    compact = fx.GraphModule(root, graph, class_name=gm.__class__.__name__)
    compact.train(gm.training)
    return compact, kept


def _fetch(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
