"""The reshape family: view/reshape/flatten, permute/transpose, split/chunk -- channel rules
that follow channels wherever a reshape puts them, and the literal rewrites that keep the
compact graph's shapes right.

Where a space lives. A node's space is an id array; ``ctx.channel_axis[node]`` (absent: 1)
is the tensor dim it starts at. Most spaces are 1-D: one channel dim. A reshape can spread
the channels over several dims (a channel shuffle's ``view(N, g, C // g, H, W)``): the space
is then an n-D id array covering dims ``axis .. axis + ndim - 1`` (a *box*), and the analysis
keeps it n-D through transposes until something consumes it.

Why a reshape is followed exactly. A row-major reshape pairs the dims of its input and
output into *segments* of equal element count (the common prefix products); channels never
leave their segment. The ids of the input's channel segment, broadcast over its non-channel
dims (flatten repeats each channel per position), reshaped to the output segment, ARE the
output's ids position by position. Dims along which the ids are constant are non-channel
dims again (``view(N, C*H*W) -> view(N, C, H, W)`` gives back a 1-D space on dim 1).

Boxes. The compact tensor of an n-D box exists only if its kept positions form a box too;
the analysis guarantees it by choosing ONE carrier dim and tying the ids along the other
dims (every kept carrier index keeps its whole row). Who consumes the box decides: a rule
that wants channels on dim 1 makes dim 1 the carrier (``fc(z).view(-1, C, h, w)`` ->
conv: the Linear's features prune in blocks of ``h*w``); a reshape that merges the box
takes its largest dim (a shuffle keeps all ``g`` rows and prunes the ``C // g`` columns
alike in every row, so ``g`` and the computed ``C // g`` stay right). Compact ==
masked original then holds because with a box mask, sub-indexing commutes with
transposes, merges and splits of the box dims (the kept positions keep their row-major
order). Literal sizes in ``view``/``reshape`` calls are rewritten to the compact box
(``rewrite_view``); sizes computed in the graph (``x.size(1) // g``) follow by themselves.

Split/chunk along the channel dim: ``split_rules``.

>>> import torch
>>> from passes import trace, channel_groups
>>> class Fold(torch.nn.Module):
...     def __init__(self):
...         super().__init__(); self.fc = torch.nn.Linear(4, 8 * 3 * 3); self.up = torch.nn.ConvTranspose2d(8, 2, 2)
...     def forward(self, z): return self.up(self.fc(z).view(-1, 8, 3, 3))
>>> [(g.size, g.prunable) for g in channel_groups(trace(Fold(), torch.zeros(2, 4)))]
[(4, False), (8, True), (2, False)]
"""
from __future__ import annotations

import bisect
import math
import operator

import numpy as np
import torch
from torch import fx

from .channel_rules import _arg, _fresh_like, _tensor_args
from .channels import ChannelAnalysis, flat_spaces
from .errors import DCPError


# --- where spaces live ------------------------------------------------------------------
def axis_of(ctx: ChannelAnalysis, node) -> int:
    return ctx.channel_axis.get(node, 1)


def record(ctx: ChannelAnalysis, node: fx.Node, ids, axis: int, shrinkable=None):
    """Return ``ids`` as ``node``'s space, starting at dim ``axis``. A box also records which
    of its dims may shrink (``shrinkable``: a list, or a node whose flags it inherits)."""
    if axis != 1 or (isinstance(ids, np.ndarray) and ids.ndim != 1):
        ctx.channel_axis[node] = axis
    if isinstance(ids, np.ndarray) and ids.ndim > 1:
        flags = shrink_flags(ctx, shrinkable, ids) if isinstance(shrinkable, fx.Node) else shrinkable
        _state(ctx, "shrinkable")[node] = list(flags) if flags is not None else [True] * ids.ndim
    return ids


def shrink_flags(ctx: ChannelAnalysis, node: fx.Node, box: np.ndarray) -> list[bool]:
    """Which dims of ``node``'s box may shrink in the compact graph (a dim whose size the call
    gives as -1, a literal, or ``x.size(1) // k`` of the reshaped tensor; not a size read from
    a spatial dim)."""
    return list(_state(ctx, "shrinkable").get(node, [True] * box.ndim))


def carrier_of(ctx: ChannelAnalysis, node: fx.Node, box: np.ndarray) -> int | None:
    """The largest dim of the box that may shrink (None: none may)."""
    flags = shrink_flags(ctx, node, box)
    dims = [q for q in range(box.ndim) if flags[q]]
    return max(dims, key=lambda q: box.shape[q]) if dims else None


def freeze_node(ctx: ChannelAnalysis, node: fx.Node, reason: str, axis: int | None = None):
    """Freeze every channel the node touches (spaces of any shape). The output gets fresh
    frozen channels on dim ``axis`` (default 1) of a tensor output."""
    for a in node.all_input_nodes:
        for s in flat_spaces(ctx.space(a)):
            ctx.freeze(s.ravel(), reason)
    shape = ctx.shape(node)
    if axis is None or axis == 1 or shape is None or len(shape) <= axis:
        return _fresh_like(ctx, node, reason)
    return record(ctx, node, ctx.fresh_frozen(shape[axis], reason), axis)


def _why(node: fx.Node) -> str:
    return f"{node.name}: {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', 'op')}"


def roots(ctx: ChannelAnalysis, ids: np.ndarray) -> np.ndarray:
    find = ctx.ids.find
    return np.array([find(i) for i in ids.ravel().tolist()], dtype=np.int64).reshape(ids.shape)


def carry(ctx: ChannelAnalysis, box: np.ndarray, carrier: int, node: fx.Node) -> np.ndarray:
    """Tie ``box``'s ids along every dim but ``carrier``; the box of roots (constant off it)."""
    rows = np.moveaxis(box, carrier, 0).reshape(box.shape[carrier], -1)
    if rows.shape[1] > 1:
        ctx.tie(np.repeat(rows[:, 0], rows.shape[1] - 1), rows[:, 1:].ravel(), node)
    return roots(ctx, box)


def _state(ctx: ChannelAnalysis, key: str) -> dict:
    """Per-analysis notes of this module (what ``rewrite_*`` needs later)."""
    return ctx.__dict__.setdefault("_shape_rules", {}).setdefault(key, {})


# --- reshape: view / reshape / flatten / nn.Flatten -------------------------------------------
def _prefixes(shape) -> list[int]:
    out = [1]
    for s in shape:
        out.append(out[-1] * s)
    return out


def segments(src: tuple, dst: tuple) -> tuple[list, list]:
    """Segment index of every dim of ``src`` and ``dst`` (None for size-1 dims).

    >>> segments((2, 6, 4), (2, 3, 2, 4))
    ([0, 1, 2], [0, 1, 1, 2])
    """
    ps, pd = _prefixes(src), _prefixes(dst)
    bounds = sorted(set(ps) & set(pd))

    def seg(shape, prefix):
        return [None if s == 1 else bisect.bisect_right(bounds, p) - 1 for s, p in zip(shape, prefix)]
    return seg(src, ps), seg(dst, pd)


def _squeeze_box(box: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Drop size-1 dims at the ends of a box (they hold no channel)."""
    while box.ndim > 1 and box.shape[0] == 1:
        box, axis = box[0], axis + 1
    while box.ndim > 1 and box.shape[-1] == 1:
        box = box[..., 0]
    return box, axis


def _trim(box: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Drop end dims along which the ids are constant: they are not channel dims."""
    while box.ndim > 1 and (box == box[:1]).all():
        box, axis = box[0], axis + 1
    while box.ndim > 1 and (box == box[..., :1]).all():
        box = box[..., 0]
    return np.ascontiguousarray(box), axis


def reshape(ctx: ChannelAnalysis, node: fx.Node):
    """view/reshape/flatten (function, method or nn.Flatten): follow the channels through the
    segment that holds them (module docstring)."""
    src = _tensor_args(node)[0]
    space = ctx.space(src)
    if space is None:
        return None
    if not isinstance(space, np.ndarray):
        return freeze_node(ctx, node, f"{_why(node)} reshapes a value with several channel spaces")
    shape_in, shape_out = ctx.shape(src), ctx.shape(node)
    if math.prod(shape_in) == 0:
        return freeze_node(ctx, node, f"{_why(node)} reshapes an empty tensor")
    box, axis = _squeeze_box(space, axis_of(ctx, src))
    if box.size == 1:  # one channel: only a reshape that leaves (N, C) alone is proven
        if axis == 1 and shape_out[:2] == shape_in[:2]:
            return box.reshape(1)
        return freeze_node(ctx, node, f"{_why(node)} moves a single channel {shape_in} -> {shape_out}")
    seg_in, seg_out = segments(shape_in, shape_out)
    touched = {seg_in[d] for d in range(axis, axis + box.ndim) if shape_in[d] > 1}
    dims_in = [d for d, s in enumerate(seg_in) if s in touched]
    dims_out = [d for d, s in enumerate(seg_out) if s in touched]
    if dims_in[0] == 0 or dims_out[0] == 0:
        return freeze_node(ctx, node, f"{_why(node)} merges the channels with the batch dim "
                                      f"{shape_in} -> {shape_out}")
    if box.ndim > 1:  # the box must be a box in the compact graph too: pick its carrier
        carrier = carrier_of(ctx, src, box) if box.shape == space.shape else None
        if carrier is None:
            return freeze_node(ctx, node, f"{_why(node)} reshapes a box of channel dims none of which can shrink")
        box = carry(ctx, box, carrier, node)
    lo, hi = dims_in[0], dims_in[-1] + 1
    placed = [1] * (hi - lo)
    placed[axis - lo: axis - lo + box.ndim] = box.shape
    full = np.broadcast_to(box.reshape(placed), shape_in[lo:hi]).reshape(shape_out[dims_out[0]: dims_out[-1] + 1])
    _state(ctx, "views")[node] = (dims_out[0], full)
    out, out_axis = _trim(full, dims_out[0])
    why = _unfollowed_count(ctx, node, src, out, out_axis)
    if why is not None:
        return freeze_node(ctx, node, f"{_why(node)} {why}")
    return record(ctx, node, out, out_axis, _box_flags(ctx, node, src, box, out, out_axis))


def _box_flags(ctx, node, src, box_in, out, out_axis) -> list[bool] | None:
    """Which dims of a reshape's output box may shrink: from the sizes a view/reshape call
    gives; a flatten passes a box through unchanged or not at all."""
    if out.ndim == 1:
        return None
    if node.target in ("view", "reshape", torch.reshape):
        parsed = _sizes_of_call(node)
        sizes = parsed[0] if parsed else []
        return [d < len(sizes) and _follows_channels(ctx, sizes[d], src) for d in range(out_axis, out_axis + out.ndim)]
    if out.shape == box_in.shape:
        return shrink_flags(ctx, src, box_in)
    return [False] * out.ndim


def _size_source(size) -> tuple[fx.Node, int] | None:
    """``(t, k)`` when a size entry reads dim ``k`` of tensor ``t`` (``t.size(k)``,
    ``t.size()[k]``, ``t.shape[k]``)."""
    if not isinstance(size, fx.Node):
        return None
    if size.op == "call_method" and size.target == "size" and len(size.args) == 2:
        return size.args[0], size.args[1]
    if size.target is operator.getitem and isinstance(size.args[0], fx.Node) and isinstance(size.args[1], int):
        shape = size.args[0]
        if shape.target == "size" and len(shape.args) == 1 or shape.target is getattr and shape.args[1] == "shape":
            return shape.args[0], size.args[1]
    return None


def _channel_count_of(ctx, size, src: fx.Node) -> bool:
    source = _size_source(size)
    return source is not None and source[0] is src and source[1] == axis_of(ctx, src)


def _follows_channels(ctx, size, src: fx.Node) -> bool:
    """A size entry of a box dim the compact graph can change: -1, a literal (rewritten), the
    reshaped tensor's channel count or that divided by a literal (``x.size(1) // g``, as
    torchvision's channel_shuffle computes it)."""
    if isinstance(size, int) or _channel_count_of(ctx, size, src):
        return True
    return (isinstance(size, fx.Node) and size.target is operator.floordiv and isinstance(size.args[1], int)
            and _channel_count_of(ctx, size.args[0], src))


_SIZE_ARITHMETIC = {operator.mul, operator.floordiv, operator.add, operator.sub}


def _independent_of_channels(ctx: ChannelAnalysis, size, depth: int = 0) -> bool:
    """A size entry computed from literals and batch/spatial sizes only."""
    if isinstance(size, int) or (isinstance(size, tuple) and size[1] != axis_of(ctx, size[0])):
        return True
    source = _size_source(size)
    if source is not None:
        return source[1] != axis_of(ctx, source[0]) or ctx.space(source[0]) is None
    if isinstance(size, fx.Node) and size.target in _SIZE_ARITHMETIC and depth < 16:
        return all(_independent_of_channels(ctx, a, depth + 1) for a in size.args)
    return False


def _unfollowed_count(ctx: ChannelAnalysis, node: fx.Node, src: fx.Node, out: np.ndarray, axis: int) -> str | None:
    """Why the sizes a view/reshape call gives would not follow the pruning, or None. Dims
    outside the channel box must not depend on a channel count; a 1-D box's count may be a
    literal (rewritten), -1, or read from another tensor's channel dim -- that ties the two
    spaces (the counts are then equal by construction)."""
    parsed = _sizes_of_call(node) if node.target in ("view", "reshape", torch.reshape) else None
    if parsed is None:
        return None
    sizes = parsed[0]
    if len(sizes) == 1 and isinstance(sizes[0], fx.Node) and sizes[0].target in ("size", getattr):
        whole = sizes[0]  # x.view(y.shape), x.view(y.size()): every dim read from y
        if whole.target is getattr and whole.args[1] != "shape" or len(whole.args) != (2 if whole.target is getattr else 1):
            return f"takes its shape from {whole.name}"
        sizes = [(whole.args[0], k) for k in range(len(ctx.shape(node)))]
    if axis + out.ndim > len(sizes):
        return f"gives no size for the channel dim {axis}"
    for d, other in enumerate(sizes):
        if not axis <= d < axis + out.ndim and not _independent_of_channels(ctx, other):
            return f"computes the size of dim {d} from a channel count (it would not follow pruning)"
    if out.ndim > 1:
        return None  # box dims: see _box_flags
    size = sizes[axis]
    if isinstance(size, int):
        return None
    source = size if isinstance(size, tuple) else _size_source(size)
    if source is None:
        return f"computes its channel count ({getattr(size, 'name', size)}) in a way the rule cannot follow"
    t, k = source
    space = ctx.space(t)
    if not (isinstance(space, np.ndarray) and space.ndim == 1 and k == axis_of(ctx, t) and len(space) == len(out)):
        return f"reads its channel count from dim {k} of {t.name}, which does not hold {len(out)} channels"
    if t is not src and not np.array_equal(np.sort(roots(ctx, space)), np.sort(roots(ctx, out))):
        ctx.tie(space, out, node)  # (the same channels in another order count the same already)
    return None


def box_sizes(keep_map, full: np.ndarray, where: str) -> list[int]:
    """Kept length of every dim of a box of ids; raises if the kept positions are no box."""
    dropped = keep_map.dropped
    find = keep_map.ctx.ids.find
    kept = np.array([find(i) not in dropped for i in full.ravel().tolist()], dtype=bool).reshape(full.shape)
    per_dim = [kept.any(axis=tuple(d for d in range(full.ndim) if d != q)) for q in range(full.ndim)]
    box = np.ones((), dtype=bool)
    for m in per_dim:
        box = np.multiply.outer(box, m)
    if not np.array_equal(box, kept):
        raise DCPError(f"{where}: kept channels do not form a box (a compiler bug; please report it)")
    return [int(m.sum()) for m in per_dim]


def _sizes_of_call(node: fx.Node):
    """The size entries of a view/reshape call and how to put new ones back, or None."""
    args, kwargs = node.args, dict(node.kwargs)
    for key in ("shape", "size"):
        if key in kwargs and isinstance(kwargs[key], (tuple, list)):
            return list(kwargs[key]), lambda s, key=key: (args, {**kwargs, key: tuple(s)})
    if len(args) == 2 and isinstance(args[1], (tuple, list)):
        return list(args[1]), lambda s: ((args[0], tuple(s)), kwargs)
    if node.op == "call_method" and len(args) >= 2:
        return list(args[1:]), lambda s: ((args[0], *s), kwargs)
    return None


def rewrite_view(node: fx.Node, keep_map):
    """Literal sizes of a view/reshape's channel box, set to the compact box."""
    info = _state(keep_map.ctx, "views").get(node)
    parsed = _sizes_of_call(node)
    if info is None or parsed is None:
        return None
    first, full = info
    sizes, rebuild = parsed
    new = list(sizes)
    for q, n in enumerate(box_sizes(keep_map, full, node.name)):
        d = first + q
        if d < len(new) and isinstance(new[d], int) and new[d] not in (-1, n):
            new[d] = n
    return None if new == sizes else rebuild(new)


# --- permute / transpose --------------------------------------------------------------------
def _move(ctx: ChannelAnalysis, node: fx.Node, src: fx.Node, dims: list[int]):
    """Output dim i is input dim dims[i]: the box moves with its dims."""
    space = ctx.space(src)
    if space is None:
        return None
    if not isinstance(space, np.ndarray):
        return freeze_node(ctx, node, f"{_why(node)} permutes a value with several channel spaces")
    rank = len(dims)
    dims = [d % rank for d in dims]
    if dims[0] != 0:
        return freeze_node(ctx, node, f"{_why(node)} moves the batch dim")
    axis = axis_of(ctx, src)
    where = [dims.index(d) for d in range(axis, axis + space.ndim)]
    lo = min(where)
    if sorted(where) != list(range(lo, lo + space.ndim)):
        return freeze_node(ctx, node, f"{_why(node)} scatters the channel dims {where}")
    order = np.argsort(where)
    flags = [shrink_flags(ctx, src, space)[q] for q in order] if space.ndim > 1 else None
    return record(ctx, node, np.ascontiguousarray(space.transpose(order)), lo, flags)


def permute(ctx: ChannelAnalysis, node: fx.Node):
    """``x.permute(0, 2, 3, 1)``, ``torch.permute(x, dims)``: channels move to where their dim goes."""
    dims = _arg(node, 1, "dims")
    if not isinstance(dims, (tuple, list)):
        dims = node.args[1:]
    return _move(ctx, node, node.args[0], list(dims))


def transpose(ctx: ChannelAnalysis, node: fx.Node):
    rank = len(ctx.shape(node))
    d0, d1 = _arg(node, 1, "dim0") % rank, _arg(node, 2, "dim1") % rank
    dims = list(range(rank))
    dims[d0], dims[d1] = d1, d0
    return _move(ctx, node, node.args[0], dims)


# --- the registry rows ---------------------------------------------------------------------------
def _register() -> None:
    from torch import nn
    from .registry import register_op
    from .split_rules import rewrite_split, split
    for rule in (reshape, permute, transpose, split):
        rule.axis_aware = True  # they read ctx.channel_axis themselves
    rows = [
        (("view", "reshape", torch.reshape), reshape, rewrite_view,
         "reshape family: follows the channels through their segment; literal box sizes rewritten"),
        (("flatten", torch.flatten, nn.Flatten), reshape, None,
         "reshape family: flattening repeats each channel per position (nn.Flatten: its start_dim/end_dim)"),
        (("permute", torch.permute), permute, None, "reshape family: the channel dims move where the permutation puts them"),
        (("transpose", torch.transpose), transpose, None, "reshape family: the channel dims move with the swap"),
        (("split", "chunk", torch.split, torch.chunk), split, rewrite_split,
         "channel pieces are slices of the space; the compact call splits by the kept counts"),
    ]
    for keys, rule, rewrite_args, reason in rows:
        for key in keys:
            register_op(key, rule, rewrite_args=rewrite_args, reason=reason)


_register()
