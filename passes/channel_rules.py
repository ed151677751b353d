"""How each op relates its inputs' channel spaces to its output's: the channel RULES.

A rule is ``rule(ctx, node) -> output space`` (an id array, a tuple of them, or None for
values without channels). ``registry.py`` maps module types, functions and tensor methods
to rules (one row per op, with its slicer and reason). An op in no row is ``unknown``:
it freezes every channel it touches.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .channels import ChannelAnalysis, Space, flat_spaces


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if hasattr(a.meta.get("tensor_meta"), "shape")]


def _first(ctx: ChannelAnalysis, node: fx.Node):
    args = _tensor_args(node)
    return ctx.space(args[0]) if args else None


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _out_channels(ctx: ChannelAnalysis, node: fx.Node) -> int | None:
    shape = ctx.shape(node)
    return shape[1] if shape is not None and len(shape) >= 2 else None


# --- the rules ------------------------------------------------------------------
def placeholder(ctx, node):
    c = _out_channels(ctx, node)
    return ctx.fresh_frozen(c, f"{node.name}: graph input channels are fixed") if c else None


def output(ctx, node):
    for a in node.all_input_nodes:
        ctx.freeze(ctx.space(a), f"{a.name}: reaches the graph output")
    return None


def no_channels(ctx, node):
    """Size/shape queries and other non-tensor results: no space, nothing frozen."""
    return None


def unknown(ctx, node):
    """No rule: freeze everything the op touches; its output gets fresh frozen channels."""
    what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_module":
        what = f"module {type(ctx.gm.get_submodule(node.target)).__name__}"
    return _freeze_touched(ctx, node, f"{node.name}: no channel rule for {what}")


def _freeze_touched(ctx, node, reason):
    """Freeze every input's channels; the output gets fresh frozen channels."""
    for a in node.all_input_nodes:
        ctx.freeze(ctx.space(a), reason)
    return _fresh_like(ctx, node, reason)


def _fresh_like(ctx, node, reason):
    meta = node.meta.get("tensor_meta")
    def make(m):
        if hasattr(m, "shape"):
            return ctx.fresh_frozen(m.shape[1], reason) if len(m.shape) >= 2 else None
        if isinstance(m, (tuple, list)):
            return tuple(make(x) for x in m)
        return None
    return make(meta)


def same(ctx, node):
    """Pass-through: activations, dropout, identity, pooling, interpolate, casts."""
    return _first(ctx, node)


def same_if_shape_keeps_channels(ctx, node):
    """squeeze/unsqueeze/mean/...: fine while dims 0 and 1 stay (N, C); else freeze."""
    src = _tensor_args(node)[0]
    sin, sout = ctx.shape(src), ctx.shape(node)
    if sin is not None and sout is not None and len(sout) >= 2 and sout[:2] == sin[:2]:
        return ctx.space(src)
    return unknown_reason(ctx, node, "moves or reduces the channel dim")


def unknown_reason(ctx, node, why):
    what = node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.target)
    return _freeze_touched(ctx, node, f"{node.name}: {what} {why}")


def conv(ctx, node):
    m = ctx.gm.get_submodule(node.target)
    space_in = _first(ctx, node)
    if m.groups == 1:
        out = ctx.fresh(m.out_channels)
        ctx.member(node.target, "consumer", space_in, node)
        ctx.member(node.target, "producer", out, node)
        ctx.module_io(node.target, space_in, out, "conv", node)
        return out
    if m.groups == m.in_channels == m.out_channels:
        ctx.member(node.target, "depthwise", space_in, node)
        ctx.module_io(node.target, space_in, space_in, "depthwise", node)
        return space_in
    from .grouped_conv import grouped_conv  # groups not 1 and not depthwise: its own module
    return grouped_conv(ctx, node)


def linear(ctx, node):
    m = ctx.gm.get_submodule(node.target)
    src = _tensor_args(node)[0]
    if len(ctx.shape(src)) != 2:
        return unknown_reason(ctx, node, "is applied to a rank>2 tensor (features not on dim 1)")
    out = ctx.fresh(m.out_features)
    ctx.member(node.target, "consumer", ctx.space(src), node)
    ctx.member(node.target, "producer", out, node)
    ctx.module_io(node.target, ctx.space(src), out, "linear", node)
    return out


def norm(ctx, node):
    """Per-channel normalisation (BatchNorm, InstanceNorm, GroupNorm with one channel a group)."""
    m = ctx.gm.get_submodule(node.target)
    if isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels:
        return unknown_reason(ctx, node, "normalises groups of channels together: pruning would change its statistics")
    space = _first(ctx, node)
    has_params = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
    if has_params:
        ctx.member(node.target, "norm", space, node)
        ctx.module_io(node.target, space, space, "norm", node)
    return space


def layer_norm(ctx, node):
    m = ctx.gm.get_submodule(node.target)
    rank = len(ctx.shape(node))
    if len(m.normalized_shape) >= rank - 1:
        return unknown_reason(ctx, node, "normalises across channels: pruning would change its statistics")
    return same(ctx, node)


def prelu(ctx, node):
    m = ctx.gm.get_submodule(node.target)
    space = _first(ctx, node)
    if m.num_parameters > 1:
        ctx.member(node.target, "channelwise", space, node)
        ctx.module_io(node.target, space, space, "channelwise", node)
    return space


def max_pool(ctx, node):
    space = _first(ctx, node)
    meta = node.meta.get("tensor_meta")  # TensorMetadata is itself a NamedTuple: test for .shape
    returns_indices = isinstance(meta, (tuple, list)) and not hasattr(meta, "shape")
    return (space, space) if returns_indices else space


def unpool(ctx, node):
    """MaxUnpool: values, indices (hence the pool that made them) and output are one identity."""
    values, indices = _arg(node, 0, "input"), _arg(node, 1, "indices")
    sv, si = ctx.space(values), ctx.space(indices)
    if sv is not None and si is not None:
        ctx.tie(sv, si, node)
    return sv


def elementwise(ctx, node):
    """add/sub/mul/div with broadcasting: operands carrying the full channel dim are tied; a
    size-1 channel dim broadcasts (no tie); a parameter with one value per channel
    (``(1, C, 1, 1)``, ``(C, 1, 1)``, or such a view of one) is sliced as a member; anything
    else freezes."""
    from .param_rules import attach_channelwise, channelwise_param
    out_shape = ctx.shape(node)
    if out_shape is None or len(out_shape) < 2:
        return unknown_reason(ctx, node, "has no channel dim") if any(ctx.space(a) is not None for a in node.all_input_nodes) else None
    rank, channels = len(out_shape), out_shape[1]
    result, params = None, []
    for a in _tensor_args(node):
        shape = ctx.shape(a)
        aligned = 1 - (rank - len(shape))  # which dim of `a` broadcasts onto the channel dim
        if aligned < 0 or shape[aligned] == 1:
            continue
        found = channelwise_param(ctx, a, channels) if aligned == 0 or ctx.shape(a)[0] == 1 else None
        if found is not None and found[0] is not node:
            params.append(found)
            continue
        if aligned != 1 or ctx.space(a) is None or shape[1] != channels:
            return unknown_reason(ctx, node, f"broadcasts a {tuple(shape)} operand over the channel dim")
        if result is None:
            result = ctx.space(a)
        else:
            ctx.tie(result, ctx.space(a), node)
    if result is None:
        return ctx.fresh_frozen(channels, f"{node.name}: channels of a broadcast result")
    for found in params:
        attach_channelwise(ctx, node, found, result)
    return result


def cat(ctx, node):
    tensors = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
    rank = len(ctx.shape(node))
    if isinstance(tensors, fx.Node):  # torch.cat(x.split(...)): one tuple-valued node
        whole = ctx.space(tensors)
        spaces = list(whole) if isinstance(whole, (tuple, list)) else [None]
    else:
        spaces = [ctx.space(t) for t in tensors]
    if any(not isinstance(s, np.ndarray) for s in spaces):
        return unknown_reason(ctx, node, "concatenates a value without a channel space")
    if dim % rank == 1:
        return np.concatenate(spaces)
    for s in spaces[1:]:
        ctx.tie(spaces[0], s, node)
    return spaces[0]


def getitem(ctx, node):
    src, index = node.args
    space = ctx.space(src)
    if isinstance(space, (tuple, list)):
        return space[index]
    if space is None:
        return None
    full = slice(None)
    if isinstance(index, tuple) and len(index) >= 2 and index[0] == full and index[1] == full:
        return same_if_shape_keeps_channels(ctx, node)
    if index == full or (isinstance(index, tuple) and len(index) == 1 and index[0] == full):
        return space
    return unknown_reason(ctx, node, f"indexes the channel dim ({index!r})")


def reduce(ctx, node):
    dims = _arg(node, 1, "dim")
    shape = ctx.shape(node.args[0])
    dims = (dims,) if isinstance(dims, int) else dims
    if dims is None or any(d % len(shape) in (0, 1) for d in dims):
        return unknown_reason(ctx, node, "reduces over the channel dim")
    return same_if_shape_keeps_channels(ctx, node)


def get_attr(ctx, node):
    c = _out_channels(ctx, node)
    return ctx.fresh_frozen(c, f"{node.name}: a constant tensor in the graph") if c else None


def pad(ctx, node):
    """F.pad: pads of the spatial dims keep the channels. Padding the channel dim (``pad`` long
    enough to reach dim 1) adds fresh channels that are FIXED (frozen) around the input's,
    which pass through: the pad widths count new channels, so no literal needs rewriting.
    Negative pads crop, and a pad of the batch dim moves samples: those freeze."""
    src, widths = _arg(node, 0, "input"), _arg(node, 1, "pad")
    shape, space = ctx.shape(src), ctx.space(src)
    if space is None or shape is None:
        return same(ctx, node)
    first = 2 * (len(shape) - 2)  # index in `pad` of the channel dim's (before, after) pair
    if len(widths) <= first:
        return space
    before, after = widths[first], widths[first + 1] if len(widths) > first + 1 else 0
    if len(widths) > first + 2 or not all(isinstance(w, int) and w >= 0 for w in (before, after)):
        return unknown_reason(ctx, node, f"pads the channel or batch dim with {tuple(widths)}: only "
                                         f"non-negative channel pads are proven")
    reason = f"{node.name}: channels padded in by F.pad are fixed"
    parts = [ctx.fresh_frozen(before, reason)] if before else []
    parts.append(space)
    if after:
        parts.append(ctx.fresh_frozen(after, reason))
    return np.concatenate(parts)
