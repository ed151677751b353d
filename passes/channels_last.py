"""Channels on a dim other than 1 (channels-last blocks such as ConvNeXt's ``permute(0, 2, 3, 1)
-> LayerNorm(C) -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> permute(0, 3, 1, 2)``), and the
guard that keeps rules written for dim 1 away from them.

``ctx.channel_axis[node]`` says where a moved space starts (``shape_rules``). Every rule is
written for channels on dim 1 unless it is marked ``axis_aware``; ``guarded`` runs before a
rule that is not: a box starting at dim 1 is made 1-D (its dim 1 becomes the carrier, see
``shape_rules``), and any input whose channels are elsewhere freezes the op, naming both.
The aware rows here handle the moved case and DELEGATE to the dim-1 rows otherwise:

- Linear on the last dim: consumes the channels, fresh outputs on the last dim (exact:
  it contracts exactly that dim, as on a (N, features) tensor);
- LayerNorm / ``F.layer_norm``: over trailing dims that hold a channel dim it normalises
  ACROSS channels -- removing one changes every kept channel's mean and variance, so the
  channels freeze (named); over other dims it is per channel;
- element-wise activations, dropout, copies: channels stay where they are;
- add/sub/mul/div: operands carrying the channel dim at the same place are tied; an
  operand with a size-1 (or no) dim there broadcasts; a constant spread over the channel
  dim (a per-channel scale ``gamma * x`` on the last dim) freezes, named;
- ``getitem`` of a split's pieces.

>>> import torch
>>> from passes import trace, channel_groups
>>> class Block(torch.nn.Module):
...     def __init__(self):
...         super().__init__(); self.conv = torch.nn.Conv2d(3, 8, 1)
...         self.fc1, self.act, self.fc2 = torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)
...     def forward(self, x):
...         y = self.fc2(self.act(self.fc1(self.conv(x).permute(0, 2, 3, 1))))
...         return y.permute(0, 3, 1, 2)
>>> [(g.size, g.names("producer"), g.prunable) for g in channel_groups(trace(Block(), torch.zeros(1, 3, 4, 4)))]
[(3, [], False), (8, ['conv'], True), (16, ['fc1'], True), (8, ['fc2'], False)]
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from . import channel_rules as R
from .channel_rules import _arg, _tensor_args
from .channels import ChannelAnalysis
from .shape_rules import axis_of, carry, freeze_node, record, shrink_flags


def guarded(ctx: ChannelAnalysis, node: fx.Node, rule):
    """Run ``rule`` on ``node``; a rule not marked ``axis_aware`` never sees a moved space."""
    if getattr(rule, "axis_aware", False) or rule is R.no_channels:
        return rule(ctx, node)
    unbox_at_dim1(ctx, node)
    moved = [a for a in node.all_input_nodes if a in ctx.channel_axis]
    if moved:
        what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.op)
        if node.op == "call_module":
            what = type(ctx.gm.get_submodule(node.target)).__name__
        axis = ctx.channel_axis[moved[0]]
        return freeze_node(ctx, node, f"{node.name}: {what} has no rule for channels on dim {axis} (of "
                                      f"{moved[0].name})", axis if ctx.shape(node) == ctx.shape(moved[0]) else None)
    return rule(ctx, node)


def unbox_at_dim1(ctx: ChannelAnalysis, node: fx.Node) -> None:
    """Inputs whose space is a box starting at dim 1 become 1-D on dim 1: dim 1 carries."""
    for a in node.all_input_nodes:
        space = ctx.spaces.get(a)
        if ctx.channel_axis.get(a) == 1 and isinstance(space, np.ndarray) and shrink_flags(ctx, a, space)[0]:
            ctx.spaces[a] = carry(ctx, space, 0, node).reshape(space.shape[0], -1)[:, 0].copy()
            del ctx.channel_axis[a]  # now 1-D on dim 1, as every rule expects


def _moved_1d(ctx: ChannelAnalysis, node: fx.Node):
    """The first tensor input, its space and axis when its channels are moved and 1-D."""
    args = _tensor_args(node)
    src = args[0] if args else None
    if src is None or src not in ctx.channel_axis:
        return None
    space = ctx.space(src)
    return (src, space, ctx.channel_axis[src]) if isinstance(space, np.ndarray) and space.ndim == 1 else (src, None, None)


def aware(rule):
    rule.axis_aware = True
    return rule


def linear_any_axis(ctx: ChannelAnalysis, node: fx.Node):
    moved = _moved_1d(ctx, node)
    if moved is None:
        return R.linear(ctx, node)
    src, space, axis = moved
    if space is None or axis != len(ctx.shape(src)) - 1:
        return freeze_node(ctx, node, f"{node.name}: Linear contracts the last dim, the channels are on dim {axis}")
    m = ctx.gm.get_submodule(node.target)
    out = ctx.fresh(m.out_features)
    ctx.member(node.target, "consumer", space, node)
    ctx.member(node.target, "producer", out, node)
    ctx.module_io(node.target, space, out, "linear", node)
    return record(ctx, node, out, axis)


def _layer_norm(ctx: ChannelAnalysis, node: fx.Node, normalized: int, delegate):
    args = _tensor_args(node)
    src = args[0]
    space, axis = ctx.space(src), axis_of(ctx, src)
    if src not in ctx.channel_axis and delegate is not None:
        return delegate(ctx, node)
    if not isinstance(space, np.ndarray):
        return freeze_node(ctx, node, f"{node.name}: layer_norm of a value with several channel spaces")
    rank = len(ctx.shape(src))
    if axis + space.ndim > rank - normalized:
        return freeze_node(ctx, node, f"{node.name}: layer_norm normalises across channels (dims {rank - normalized}.."
                                      f"{rank - 1}, channels on dim {axis}): pruning would change its statistics",
                           axis)
    return record(ctx, node, space, axis)


def layer_norm_module_any_axis(ctx: ChannelAnalysis, node: fx.Node):
    m = ctx.gm.get_submodule(node.target)
    return _layer_norm(ctx, node, len(m.normalized_shape), R.layer_norm)


def layer_norm_function(ctx: ChannelAnalysis, node: fx.Node):
    shape = _arg(node, 1, "normalized_shape")
    return _layer_norm(ctx, node, len(shape) if isinstance(shape, (tuple, list)) else 1, None)


def pointwise_any_axis(delegate):
    def rule(ctx: ChannelAnalysis, node: fx.Node):
        args = _tensor_args(node)
        if not args or args[0] not in ctx.channel_axis:
            return delegate(ctx, node)
        return record(ctx, node, ctx.space(args[0]), ctx.channel_axis[args[0]], args[0])
    return aware(rule)


def elementwise_any_axis(delegate):
    def rule(ctx: ChannelAnalysis, node: fx.Node):
        tensors = _tensor_args(node)
        unbox_at_dim1(ctx, node)
        moved = [t for t in tensors if t in ctx.channel_axis]
        if not moved:
            return delegate(ctx, node)
        out_shape = ctx.shape(node)
        axis, rank = ctx.channel_axis[moved[0]], len(out_shape)
        result = None
        for t in tensors:
            shape, space = ctx.shape(t), ctx.space(t)
            aligned = axis - (rank - len(shape))
            if aligned < 0 or shape[aligned] == 1:
                continue  # broadcasts over the channel dim
            if (len(shape) != rank or axis_of(ctx, t) != axis or not isinstance(space, np.ndarray)
                    or space.ndim != 1 or len(space) != out_shape[axis]):
                return freeze_node(ctx, node, f"{node.name}: broadcasts a {tuple(shape)} operand over the channels "
                                              f"on dim {axis}")
            if result is None:
                result = space
            else:
                ctx.tie(result, space, node)
        return record(ctx, node, result, axis) if result is not None else freeze_node(
            ctx, node, f"{node.name}: channels of a broadcast result")
    return aware(rule)


def getitem_any_axis(ctx: ChannelAnalysis, node: fx.Node):
    src, index = node.args
    space = ctx.space(src)
    if src not in ctx.channel_axis:
        return R.getitem(ctx, node)
    if isinstance(space, (tuple, list)) and isinstance(index, int):
        return record(ctx, node, space[index], ctx.channel_axis[src])
    return freeze_node(ctx, node, f"{node.name}: indexes a value whose channels are on dim {ctx.channel_axis[src]}")


# --- verification: where each node's dropped channels are ------------------------------------------
for _rule in (linear_any_axis, layer_norm_module_any_axis, layer_norm_function, getitem_any_axis):
    aware(_rule)

POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Dropout,
             nn.Identity, F.relu, F.gelu, F.silu, F.dropout, torch.relu, torch.sigmoid, torch.tanh,
             "relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to",
             "torchvision.ops.stochastic_depth.StochasticDepth", "torchvision.ops.stochastic_depth.stochastic_depth")
ELEMENTWISE = (operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
               torch.add, torch.sub, torch.mul, torch.div, "add", "add_", "sub", "mul", "mul_", "div", "div_")


def _register() -> None:
    from .registry import known_ops, register_op
    rows = known_ops()
    register_op(nn.Linear, linear_any_axis, slicer=rows[nn.Linear].slicer,
                reason="contracts the feature dim: on (N, features) or on the last dim of channels-last tensors")
    register_op(nn.LayerNorm, layer_norm_module_any_axis, slicer=rows[nn.LayerNorm].slicer,
                reason="per channel over non-channel dims only; across channels (incl. channels-last) it freezes")
    register_op(F.layer_norm, layer_norm_function,
                reason="per channel over non-channel dims only; across channels (incl. channels-last) it freezes")
    register_op(operator.getitem, getitem_any_axis, reason=rows[operator.getitem].reason)
    for key in POINTWISE:
        entry = rows[key]
        register_op(key, pointwise_any_axis(entry.rule), slicer=entry.slicer,
                    reason=entry.reason + "; on any channel dim")
    for key in ELEMENTWISE:
        entry = rows[key]
        register_op(key, elementwise_any_axis(entry.rule), reason=entry.reason + "; on any channel dim")


_register()
