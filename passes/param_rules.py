"""Channel rules for parameters and buffers used directly in the graph (get_attr nodes).

``F.conv2d(x, self.w, self.b)``, ``F.linear``, ``F.batch_norm(x, self.rm, self.rv, self.w,
self.b)``, ``x * self.scale + self.shift`` with a ``(1, C, 1, 1)`` / ``(C, 1, 1)`` tensor:
the PARAMETER is the member. Its dims follow channel spaces (``ctx.param_axis``) and the
rewrite replaces it in the compact model by a sliced copy. A parameter may reach its op
through a chain of ops computed from it alone (weight standardisation, ``scale.view(1, -1,
1, 1)``); such a chain is claimed only where slicing the parameter provably slices the
chain's result the same way. Any other read of a sliced parameter freezes it
(``channels._freeze_unclaimed_parameter_uses``).

>>> import torch, torch.nn.functional as F
>>> from passes import trace, channel_groups
>>> class M(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.w, self.v = torch.nn.Parameter(torch.randn(6, 3, 3, 3)), torch.nn.Parameter(torch.randn(2, 6, 1, 1))
...     def forward(self, x):
...         return F.conv2d(F.relu(F.conv2d(x, self.w)), self.v)
>>> g = [g for g in channel_groups(trace(M(), torch.zeros(1, 3, 8, 8))) if g.prunable][0]
>>> g.size, [(m.module, m.kind, m.axis) for m in g.members]
(6, [('w', 'producer', 0), ('v', 'consumer', 1)])
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from .channel_rules import _arg, _first, unknown_reason


def _attr(value) -> fx.Node | None:
    return value if isinstance(value, fx.Node) and value.op == "get_attr" else None


# Ops after which row i of the result depends only on row i of the operands (dim 0 = rows).
_ROW_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, torch.add,
                    torch.sub, torch.mul, torch.div, torch.sqrt, torch.rsqrt, torch.abs, torch.pow,
                    "add", "sub", "mul", "div", "sqrt", "rsqrt", "abs", "pow", "__add__", "__sub__", "__mul__",
                    "__truediv__", "__rsub__", "__radd__", "__rmul__", "__rtruediv__", "__pow__"}
_ROW_REDUCTIONS = {torch.mean, torch.var, torch.std, torch.sum, torch.amax, "mean", "var", "std", "sum", "amax"}


def _row_source(ctx, value: fx.Node, rows: int, depth: int = 0):
    """``(attr, chain)`` if ``value`` is a parameter or computed from ONE parameter by ops that
    keep rows (dim 0) apart: slicing the parameter's rows slices ``value``'s rows. Else a reason."""
    if (a := _attr(value)) is not None:
        return a, set()
    if not isinstance(value, fx.Node) or depth > 64 or value.op not in ("call_function", "call_method"):
        return f"'{getattr(value, 'name', value)}' is not a parameter"
    shape = ctx.shape(value)
    key = value.target
    if shape is None or not shape or shape[0] != rows:
        return f"'{value.name}' does not keep the {rows} rows"
    if key in _ROW_REDUCTIONS:
        dims = _arg(value, 1, "dim")
        dims = (dims,) if isinstance(dims, int) else dims
        keepdim = _arg(value, 3 if key in (torch.var, torch.std, "var", "std") else 2, "keepdim", False)
        if dims is None or any(d % len(shape) == 0 for d in dims) or not keepdim:
            return f"'{value.name}' reduces over rows"
    elif key not in _ROW_ELEMENTWISE:
        return f"'{value.name}' ({getattr(key, '__name__', key)}) is not proven row-local"
    attr, chain = None, {value}
    for inp in value.all_input_nodes:
        if ctx.shape(inp) is not None and len(ctx.shape(inp)) != len(shape):
            return f"'{value.name}' broadcasts over rows"
        found = _row_source(ctx, inp, rows, depth + 1)
        if isinstance(found, str):
            return found
        if attr is not None and found[0].target != attr.target:
            return f"'{value.name}' mixes two parameters"
        attr, chain = found[0], chain | found[1]
    return (attr, chain) if attr is not None else f"'{value.name}' reads no parameter"


def _claim_chain(ctx, user: fx.Node, attr: fx.Node, chain: set) -> None:
    """Record the edges from ``attr`` through ``chain`` into ``user`` as proven reads."""
    ctx.param_chain.update(chain)
    for v in chain | {user}:
        for inp in v.all_input_nodes:
            if inp in chain or inp is attr:
                ctx.param_uses.add((v, inp))


def _bias(ctx, node, b, out) -> str | None:
    """Slice a get_attr bias with the output channels; a computed bias is not proven."""
    if b is None:
        return None
    if _attr(b) is None:
        return "has a bias computed in the graph"
    ctx.param_axis(b, 0, out, node)
    return None


def functional_conv(ctx, node):
    """F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups): weight dim 0 is the
    fresh output, dim 1 the consumed input. A weight computed from the parameter row by row
    (weight standardisation over in x k x k) keeps the output prunable; its input channels
    freeze, since pruning them would change each row's statistics."""
    x, w, b, groups = _arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias"), _arg(node, 6, "groups", 1)
    space_in, wshape = ctx.space(x), ctx.shape(w)
    if space_in is None or wshape is None:
        return unknown_reason(ctx, node, "has no channel space on its input or weight")
    if groups != 1:
        return _functional_depthwise(ctx, node, w, b, groups, space_in, wshape)
    found = _row_source(ctx, w, wshape[0])
    if isinstance(found, str):
        return unknown_reason(ctx, node, f"has a weight computed in the graph ({found})")
    attr, chain = found
    out = ctx.fresh(wshape[0])
    if (why := _bias(ctx, node, b, out)) is not None:
        return unknown_reason(ctx, node, why)
    _claim_chain(ctx, node, attr, chain)
    ctx.param_axis(attr, 0, out, node, output=True)
    ctx.member(attr.target, "producer", out, node, axis=0)
    if chain:
        ctx.freeze(space_in, f"{node.name}: its weight is computed from '{attr.target}' over the input channels "
                             f"(e.g. standardised): pruning inputs would change it")
    else:
        ctx.param_axis(attr, 1, space_in, node)
        ctx.member(attr.target, "consumer", space_in, node, axis=1)
    return out


def _functional_depthwise(ctx, node, w, b, groups, space_in, wshape):
    if _attr(w) is None or not (groups == wshape[0] == len(space_in) and wshape[1] == 1):
        return unknown_reason(ctx, node, f"is a grouped conv (groups={groups}) with a computed or grouped weight")
    if (why := _bias(ctx, node, b, space_in)) is not None:
        return unknown_reason(ctx, node, why)
    ctx.param_axis(w, 0, space_in, node, output=True)
    ctx.member(w.target, "depthwise", space_in, node, axis=0)
    return space_in


def functional_conv_transpose(ctx, node):
    """F.conv_transpose1d/2d/3d(x, weight, bias, ...): weight is (in, out, k...)."""
    x, w, b, groups = _arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias"), _arg(node, 6, "groups", 1)
    space_in, wshape = ctx.space(x), ctx.shape(w)
    if space_in is None or wshape is None or _attr(w) is None or groups != 1:
        return unknown_reason(ctx, node, "has a computed or grouped weight")
    out = ctx.fresh(wshape[1])
    if (why := _bias(ctx, node, b, out)) is not None:
        return unknown_reason(ctx, node, why)
    ctx.param_axis(w, 1, out, node, output=True)
    ctx.param_axis(w, 0, space_in, node)
    ctx.member(w.target, "producer", out, node, axis=1)
    ctx.member(w.target, "consumer", space_in, node, axis=0)
    return out


def functional_linear(ctx, node):
    """F.linear(x, weight, bias) on (N, features): weight (out, in), as nn.Linear."""
    x, w, b = _arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias")
    if ctx.shape(x) is None or len(ctx.shape(x)) != 2 or ctx.space(x) is None:
        return unknown_reason(ctx, node, "is applied to a rank>2 tensor (features not on dim 1)")
    if _attr(w) is None:
        return unknown_reason(ctx, node, "has a weight computed in the graph")
    out = ctx.fresh(ctx.shape(w)[0])
    if (why := _bias(ctx, node, b, out)) is not None:
        return unknown_reason(ctx, node, why)
    ctx.param_axis(w, 0, out, node, output=True)
    ctx.param_axis(w, 1, ctx.space(x), node)
    ctx.member(w.target, "producer", out, node, axis=0)
    ctx.member(w.target, "consumer", ctx.space(x), node, axis=1)
    return out


def _per_channel_tensors(ctx, node, tensors: dict[str, object]):
    """Slice each get_attr per-channel tensor with the input's channels (dim 0)."""
    space = _first(ctx, node)
    if space is None:
        return unknown_reason(ctx, node, "has no channel space")
    present = {k: t for k, t in tensors.items() if t is not None}
    computed = [k for k, t in present.items() if _attr(t) is None]
    if computed:
        return unknown_reason(ctx, node, f"has its {computed[0]} computed in the graph")
    for k, t in present.items():
        ctx.param_axis(t, 0, space, node, output=True)
    if "weight" in present:
        ctx.member(present["weight"].target, "norm", space, node, axis=0)
    elif present:
        ctx.member(next(iter(present.values())).target, "channelwise", space, node, axis=0)
    return space


def functional_batch_norm(ctx, node):
    """F.batch_norm / F.instance_norm(x, running_mean, running_var, weight, bias, ...): all per channel."""
    names = ("running_mean", "running_var", "weight", "bias")
    return _per_channel_tensors(ctx, node, {k: _arg(node, i + 1, k) for i, k in enumerate(names)})


def functional_group_norm(ctx, node):
    """F.group_norm(x, num_groups, weight, bias) with one channel a group: per channel; the
    literal num_groups is rewritten to the kept width (``group_norm_args``)."""
    space = _first(ctx, node)
    if space is None or _arg(node, 1, "num_groups") != len(space):
        return unknown_reason(ctx, node, "normalises groups of channels together: pruning would change its statistics")
    return _per_channel_tensors(ctx, node, {"weight": _arg(node, 2, "weight"), "bias": _arg(node, 3, "bias")})


def group_norm_args(node, keep_map):
    kept = keep_map.kept_positions(keep_map.ctx.space(node.args[0]))
    if kept is None:
        return None
    args, kwargs = list(node.args), dict(node.kwargs)
    if len(args) > 1:
        args[1] = len(kept)
    else:
        kwargs["num_groups"] = len(kept)
    return tuple(args), kwargs


def functional_prelu(ctx, node):
    """F.prelu(x, weight): one slope per channel (or one shared)."""
    w, space = _arg(node, 1, "weight"), _first(ctx, node)
    if space is None or ctx.shape(w) is None or ctx.shape(w)[0] == 1:
        return space
    return _per_channel_tensors(ctx, node, {"slope": w})


# --- parameters broadcast in elementwise ops ---------------------------------------------
_VIEWS = {"view", "reshape", "unsqueeze", "squeeze", "flatten", torch.reshape, torch.unsqueeze, torch.squeeze,
          torch.flatten, "contiguous", "to", "float"}


def _one_axis(shape, channels: int) -> int | None:
    """The dim holding ``channels`` if every other dim has size 1."""
    big = [d for d, s in enumerate(shape) if s != 1]
    if channels > 1 and len(big) == 1 and shape[big[0]] == channels:
        return big[0]
    return None


def channelwise_param(ctx, operand: fx.Node, channels: int):
    """``(attr, dim, chain)`` if ``operand`` is a parameter holding one value per channel (all
    other dims 1), directly or through views that keep it so (``scale.view(1, -1, 1, 1)``;
    a view spelling out the channel count as a literal would not follow the pruning). Else None."""
    chain, v = set(), operand
    while _attr(v) is None:
        if not isinstance(v, fx.Node) or v.target not in _VIEWS or ctx.shape(v) is None \
                or _one_axis(ctx.shape(v), channels) is None or len(v.all_input_nodes) != 1:
            return None
        if any(a == channels for a in v.args[1:] if isinstance(a, int)) or \
                any(channels in a for a in v.args[1:] if isinstance(a, (tuple, list))):
            return None
        chain.add(v)
        v = v.all_input_nodes[0]
    shape = ctx.shape(v)
    dim = _one_axis(shape, channels) if shape is not None else None
    return None if dim is None else (v, dim, chain)


def attach_channelwise(ctx, node, found, space) -> None:
    """Record a parameter found by ``channelwise_param`` as a member following ``space``."""
    attr, dim, chain = found
    _claim_chain(ctx, node, attr, chain)
    ctx.param_axis(attr, dim, space, node, output=True)
    ctx.member(attr.target, "channelwise", space, node, axis=dim)
