"""Count parameters and multiply-accumulates (conv / linear layers), per layer and in total,
and what each layer's cost depends on when channels are pruned (its axes' widths).

>>> import torch
>>> count(torch.nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 10, 10))
(224, 21600)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import fx, nn
import torch.nn.functional as F

from .channels import ChannelAnalysis, Group, flat_spaces, group_index
from .trace import trace


class LayerCost(NamedTuple):
    name: str          # node name
    op: str            # module type or function name
    shape: tuple       # output shape (first tensor of a tuple output)
    params: int        # parameters owned directly by this module
    macs: int


def _numel(shape) -> int:
    return int(math.prod(shape))


def _macs(module: nn.Module, in_shape, out_shape) -> int:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _numel(out_shape) * (module.in_channels // module.groups) * _numel(module.kernel_size)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return _numel(in_shape) * (module.out_channels // module.groups) * _numel(module.kernel_size)
    if isinstance(module, nn.Linear):
        return _numel(out_shape) * module.in_features
    return 0


def first_shape(meta) -> tuple | None:
    """The shape of a node's tensor output (the values of a (values, indices) pair)."""
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)):
        for m in meta:
            s = first_shape(m)
            if s is not None:
                return s
    return None


# F.conv*/F.linear calls (a traced bare module, functional models): MACs from the weight's shape.
FUNCTIONAL_MACS = {
    F.conv1d: lambda out, w: _numel(out) * _numel(w[1:]),
    F.conv2d: lambda out, w: _numel(out) * _numel(w[1:]),
    F.conv3d: lambda out, w: _numel(out) * _numel(w[1:]),
    F.linear: lambda out, w: _numel(out) * w[1],
}


def layer_costs(gm: fx.GraphModule) -> list[LayerCost]:
    """One row per graph node that computes something, in graph order (needs trace metadata)."""
    rows = []
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        shape = first_shape(n.meta.get("tensor_meta"))
        params, macs, op = 0, 0, str(getattr(n.target, "__name__", n.target))
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            op = type(mod).__name__
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
            in_shape = first_shape(src.meta.get("tensor_meta")) if src is not None else None
            if shape is not None and in_shape is not None:
                macs = _macs(mod, in_shape, shape)
        elif n.op == "call_function" and n.target in FUNCTIONAL_MACS and shape is not None:
            weight = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
            w_shape = first_shape(weight.meta.get("tensor_meta")) if isinstance(weight, fx.Node) else None
            macs = FUNCTIONAL_MACS[n.target](shape, w_shape) if w_shape else 0
        rows.append(LayerCost(n.name, op, shape or (), params, macs))
    return rows


def count(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """``(params, macs)`` of ``model`` on ``example_inputs``; params include BN affine."""
    gm = trace(model, example_inputs)  # re-annotates a GraphModule for these inputs
    params = sum(p.numel() for p in model.parameters())
    return params, sum(r.macs for r in layer_costs(gm))




# --- what a layer's cost depends on, and the MACs of a keep plan ------------------------------
@dataclass(frozen=True)
class Axis:
    """A channel axis as groups see it: ``shares`` ((group id, positions) of each prunable group
    on it), ``fixed`` positions that never shrink. Its width under a plan scales each share by
    the fraction of its group kept (exact: a group's channels appear equally often on an axis)."""
    shares: tuple[tuple[int, int], ...]
    fixed: int

    @property
    def size(self) -> int:
        return self.fixed + sum(n for _, n in self.shares)

    def width(self, kept: Mapping[int, int], sizes: Mapping[int, int]) -> Fraction:
        return self.fixed + sum(Fraction(n * kept.get(g, sizes[g]), sizes[g]) for g, n in self.shares)


@dataclass(frozen=True)
class LayerAxes:
    """A layer that costs MACs (conv / linear, module or functional) and the axes they scale
    with: ``inputs`` is None when they do not scale with the input width (depthwise)."""
    node: str
    macs: int
    inputs: Axis | None
    outputs: Axis


def _axis(ids, where: Mapping[int, tuple[int, int]], prunable: set[int], find) -> Axis:
    shares: dict[int, int] = {}
    fixed = 0
    for i in ids.tolist():
        gid = where.get(find(i), (None, 0))[0]
        if gid in prunable:
            shares[gid] = shares.get(gid, 0) + 1
        else:
            fixed += 1
    return Axis(tuple(sorted(shares.items())), fixed)


def _ids_of(ctx: ChannelAnalysis, value) -> Any:
    spaces = flat_spaces(ctx.space(value)) if value is not None else []
    return spaces[0] if spaces else None


def layer_axes(ctx: ChannelAnalysis, groups: Sequence[Group], rows: Sequence[LayerCost] | None = None
               ) -> list[LayerAxes]:
    """One entry per layer with MACs. A module call reads its recorded axes; a function call
    (``F.conv2d(x, self.w)``, a Conv2d subclass's own forward) reads its input's and output's
    channel spaces; an axis nobody tracked never shrinks."""
    rows = layer_costs(ctx.gm) if rows is None else rows
    where, find = group_index(ctx, groups), ctx.ids.find
    prunable = {g.id for g in groups if g.prunable}
    nodes = {n.name: n for n in ctx.gm.graph.nodes}
    out = []
    for r in rows:
        if not r.macs:
            continue
        node = nodes[r.name]
        io = ctx.modules.get(node.target) if node.op == "call_module" else None
        if io is not None:
            in_ids, out_ids, depthwise = io.in_ids, io.out_ids, io.kind == "depthwise"
        else:
            src = node.args[0] if node.args else node.kwargs.get("input")
            in_ids, out_ids = _ids_of(ctx, src), _ids_of(ctx, node)
            depthwise = _groups_arg(ctx.gm, node) > 1
        def axis(ids):  # an untracked axis: one fixed position stands for all (its fraction stays 1)
            return _axis(ids, where, prunable, find) if ids is not None else Axis((), 1)
        out.append(LayerAxes(r.name, r.macs, None if depthwise else axis(in_ids), axis(out_ids)))
    return out


def _groups_arg(gm: fx.GraphModule, node: fx.Node) -> int:
    if node.op == "call_module":
        return int(getattr(gm.get_submodule(node.target), "groups", 1))
    g = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
    return int(g) if isinstance(g, int) else 1


def layer_macs(layer: LayerAxes, kept: Mapping[int, int], sizes: Mapping[int, int]) -> Fraction:
    """MACs of one layer when each group keeps ``kept[gid]`` channels (spatial sizes do not change)."""
    scale = Fraction(layer.outputs.width(kept, sizes), max(layer.outputs.size, 1))
    if layer.inputs is not None:
        scale *= Fraction(layer.inputs.width(kept, sizes), max(layer.inputs.size, 1))
    return layer.macs * scale


def plan_macs(layers: Sequence[LayerAxes], groups: Sequence[Group], keep: Mapping[int, Sequence[int]]) -> int:
    """MACs a keep plan (``{group id: kept indices}``) leaves, from the original's per-layer
    costs, without rewriting: the one cost-of-a-plan function for MACs.

    >>> import torch
    >>> from passes import trace, analyse, build_groups
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1))
    >>> ctx = analyse(trace(m, torch.zeros(1, 3, 4, 4))); groups = build_groups(ctx)
    >>> plan_macs(layer_axes(ctx, groups), groups, {1: [0, 1, 2, 3]})  # 8 -> 4 channels
    320
    """
    kept = {gid: len(idx) for gid, idx in keep.items()}
    sizes = {g.id: g.size for g in groups}
    return int(sum(int(layer_macs(layer, kept, sizes)) for layer in layers))
