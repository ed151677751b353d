"""Split/chunk along the channel dim (part of the reshape family, see ``shape_rules``).

Each piece is a slice of the input's space, and the channels of each piece become groups
of their own: the allocations (ids created together) are refined so none mixes identities
of different pieces, so pruning keeps at least one channel in every piece (an empty piece
has no compact form). The compact call is ``split`` with the kept count of each piece
(``rewrite_split``): a ``chunk`` of pieces pruned to unequal sizes is no longer a chunk.
Tying the pieces instead would keep the chunk but couple unrelated channels: in ShuffleNet
v2 the chunk after every shuffle would fold each stage onto a handful of channels.

>>> import torch
>>> from passes import trace, channel_groups
>>> class CSP(torch.nn.Module):
...     def __init__(self):
...         super().__init__(); self.cv1, self.m, self.cv2 = (torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(4, 4, 3, padding=1),
...                                                           torch.nn.Conv2d(8, 2, 1))
...     def forward(self, x):
...         a, b = self.cv1(x).chunk(2, dim=1)
...         return self.cv2(torch.cat([a, self.m(b)], 1))
>>> [(g.size, g.names("producer")) for g in channel_groups(trace(CSP(), torch.zeros(1, 3, 4, 4))) if g.prunable]
[(4, ['cv1']), (4, ['cv1']), (4, ['m'])]
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from .channel_rules import _arg
from .channels import ChannelAnalysis
from .errors import DCPError
from .shape_rules import _state, _why, axis_of, carry, freeze_node, record, shrink_flags


def all_roots(ctx: ChannelAnalysis) -> np.ndarray:
    """The root of every id (vectorised pointer jumping over the union-find's parents)."""
    parent = np.asarray(ctx.ids.parent, dtype=np.int64)
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def separate_pieces(ctx: ChannelAnalysis, pieces: tuple) -> None:
    """Refine the allocations so none mixes channels whose identities lie in different pieces
    (or in a piece and in none): each piece's channels become groups of their own, so
    pruning keeps at least one channel of every piece (an empty piece has no compact form)."""
    roots = all_roots(ctx)
    label = np.full(len(roots), -1, dtype=np.int64)  # -1: in no piece, -2: in several
    for k, piece in enumerate(pieces):
        r = roots[piece]
        label[r] = np.where((label[r] == -1) | (label[r] == k), k, -2)
    refined = []
    for alloc in ctx.allocations:
        lab = label[roots[alloc.start:alloc.stop]]
        if (lab == lab[0]).all():
            refined.append(alloc)
            continue
        cuts = [0, *(np.nonzero(lab[1:] != lab[:-1])[0] + 1).tolist(), len(lab)]
        refined += [range(alloc.start + a, alloc.start + b) for a, b in zip(cuts, cuts[1:])]
    ctx.allocations[:] = refined


def split(ctx: ChannelAnalysis, node: fx.Node):
    """split/chunk: along the channel dim each piece is a slice of the space (its channels
    their own groups); along another dim every piece keeps the space."""
    src = node.args[0]
    space = ctx.space(src)
    pieces = node.meta.get("tensor_meta")
    if space is None:
        return None
    if not isinstance(space, np.ndarray) or not isinstance(pieces, (tuple, list)):
        return freeze_node(ctx, node, f"{_why(node)} splits a value with several channel spaces")
    rank = len(ctx.shape(src))
    dim = _arg(node, 2, "dim", 0) % rank
    axis = axis_of(ctx, src)
    if not axis <= dim < axis + space.ndim:
        return record(ctx, node, tuple(space for _ in pieces), axis)
    if space.ndim > 1:  # the split dim carries the channels on
        if not shrink_flags(ctx, src, space)[dim - axis]:
            return freeze_node(ctx, node, f"{_why(node)} splits a channel dim that cannot shrink")
        space = np.moveaxis(carry(ctx, space, dim - axis, node), dim - axis, 0)
        space, axis = space.reshape(space.shape[0], -1)[:, 0].copy(), dim
    sizes = [p.shape[dim] for p in pieces]
    starts = np.cumsum([0] + sizes)
    out = tuple(space[s:s + n] for s, n in zip(starts.tolist(), sizes))
    separate_pieces(ctx, out)
    _state(ctx, "splits")[node] = dim
    return record(ctx, node, out, axis)


def rewrite_split(node: fx.Node, keep_map):
    """A channel split becomes ``split(x, [kept per piece], dim)`` (a chunk too)."""
    dim = _state(keep_map.ctx, "splits").get(node)
    if dim is None:
        return None
    pieces = keep_map.ctx.spaces[node]
    counts = []
    for i, piece in enumerate(pieces):
        kept = keep_map.kept_positions(piece)
        counts.append(len(piece) if kept is None else len(kept))
        if counts[-1] == 0 and len(piece):
            raise DCPError(f"{node.name}: the plan keeps no channel of split piece {i} (its channels are tied "
                           f"to channels kept elsewhere); raise min_channels or prune less")
    if counts == [len(p) for p in pieces]:
        return None
    target = "split" if node.op == "call_method" else torch.split
    return (node.args[0], counts), {"dim": dim}, target
