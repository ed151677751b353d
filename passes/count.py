"""Count parameters and multiply-accumulates (conv / linear layers), per layer and in total.

>>> import torch
>>> count(torch.nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 10, 10))
(224, 21600)
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import fx, nn
import torch.nn.functional as F

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



def _fan(module: nn.Module) -> tuple[int, int]:
    """(input fan per output, output units) of a conv/linear: MACs scale with their product."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels // module.groups, module.out_channels


def compact_macs(rows: list[LayerCost], original: nn.Module, compact: nn.Module, gm: fx.GraphModule) -> int:
    """MACs of a channel-pruned copy, from the original's per-layer costs: spatial sizes are
    unchanged by channel pruning, so each layer's MACs scale with its fan-in x fan-out."""
    total = 0
    targets = {n.name: n.target for n in gm.graph.nodes if n.op == "call_module"}
    for r in rows:
        if not r.macs:
            continue
        if r.name not in targets:  # F.conv*/F.linear: MACs scale with the weight's size
            w = next(n for n in gm.graph.nodes if n.name == r.name).args[1]
            sizes = [_attr(m, w.target).numel() for m in (original, compact)] \
                if isinstance(w, fx.Node) and w.op == "get_attr" else [1, 1]  # a computed weight: not scaled
            total += r.macs * sizes[1] // sizes[0]
            continue
        name = targets[r.name]
        (fi0, fo0), (fi1, fo1) = _fan(original.get_submodule(name)), _fan(compact.get_submodule(name))
        total += r.macs * fi1 * fo1 // (fi0 * fo0)
    return total


def _attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module
