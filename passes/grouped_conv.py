"""Grouped convolutions (``groups`` not 1 and not depthwise): channel rule and slicer.

A conv with ``G`` groups, ``a = in/G`` input and ``b = out/G`` output channels per group
computes output channel ``g*b + j`` from input channels ``g*a .. g*a+a-1`` only (weight
``(out, a, k...)``). The rule ties the ``G`` blocks of each axis element-wise: input channel
``g*a + i`` is the same identity as ``i`` (every group), output ``g*b + j`` the same as ``j``.
Pruning then keeps the same relative positions ``I`` (inputs) and ``J`` (outputs) in every
group, so the compact conv keeps ``groups=G`` with ``G*|I|`` inputs and ``G*|J|`` outputs.

Why this is exact. Masked original: output ``g*b + j`` (``j`` in ``J``) is
``bias[g*b+j] + sum_{i in I} W[g*b+j, i] * x[g*a+i]`` (dropped inputs are zero). Compact: its
input holds ``x[g*a+i]``, ``i`` in ``I`` ascending, at positions ``g*|I| .. g*|I|+|I|-1`` --
exactly compact group ``g``'s slice; its weight row for kept output ``g*b+j`` is
``W[g*b+j, I]`` (rows sliced by absolute output position, columns by relative input
position). Same sum, same order of groups, so compact == masked original. Input and output
need no tie to each other: they are independent index sets (as for an ungrouped conv).
Pruning whole groups instead would change ``G`` and need the two axes tied group by group;
the element-wise ties above keep ``G`` and leave each block free to shrink, and every group
keeps at least one channel (a tied identity lives in every block). Grouped *transposed*
convs freeze (their weight is ``(in, out/G, ...)``; importance by weight norm assumes
``(out, ...)``).

>>> import torch
>>> from passes import trace, channel_groups
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 6, 3, groups=2), torch.nn.Conv2d(6, 1, 1))
>>> [(g.size, g.names("producer")) for g in channel_groups(trace(m, torch.zeros(1, 3, 8, 8)))][1:3]
[(4, ['0']), (3, ['1'])]
"""
from __future__ import annotations

import numpy as np
from torch import fx, nn

from .channels import ChannelAnalysis, Space
from .errors import DCPError
from .slicers import TRANSPOSED_CONVS, set_tensor, shallow, take


def is_grouped(m: nn.Module) -> bool:
    """Grouped, and not depthwise (depthwise: groups == in == out, one channel per group)."""
    return m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def tie_blocks(ctx: ChannelAnalysis, space: Space, blocks: int, node: fx.Node) -> None:
    """Make position ``g*n + i`` the same identity as ``i`` for every block ``g``."""
    if blocks < 2 or space is None:
        return
    n = len(space) // blocks
    first = np.tile(space[:n], blocks - 1)
    ctx.tie(first, space[n:], node)


def grouped_conv(ctx: ChannelAnalysis, node: fx.Node):
    """Rule for a conv with groups > 1 that is not depthwise (see the module docstring)."""
    from .channel_rules import _first, unknown_reason
    m = ctx.gm.get_submodule(node.target)
    if isinstance(m, TRANSPOSED_CONVS):
        return unknown_reason(ctx, node, f"is a grouped transposed conv (groups={m.groups}): not pruned")
    space_in = _first(ctx, node)
    if space_in is None or len(space_in) != m.in_channels:
        return unknown_reason(ctx, node, f"is a grouped conv whose input has no {m.in_channels}-channel space")
    tie_blocks(ctx, space_in, m.groups, node)
    out = ctx.fresh(m.out_channels)
    tie_blocks(ctx, out, m.groups, node)
    ctx.member(node.target, "consumer", space_in, node)
    ctx.member(node.target, "producer", out, node)
    ctx.module_io(node.target, space_in, out, "grouped", node)
    return out


def relative_positions(keep: np.ndarray | None, per_group: int, groups: int, what: str) -> np.ndarray | None:
    """The kept positions within one group, checked to be the same in every group."""
    if keep is None:
        return None
    keep = np.asarray(keep)
    rel = keep[keep < per_group]
    expected = (rel[None, :] + per_group * np.arange(groups)[:, None]).ravel()
    if not np.array_equal(keep, expected):
        raise DCPError(f"grouped conv: kept {what} positions differ between its {groups} groups "
                       f"(a compiler bug; please report it)")
    return rel


def slice_grouped_conv(m: nn.Module, keep_in, keep_out) -> nn.Module:
    """A new grouped conv keeping ``groups``: rows by absolute output position, weight
    columns by the relative input position shared by every group.

    >>> import numpy as np, torch
    >>> small = slice_grouped_conv(torch.nn.Conv2d(4, 6, 3, groups=2), np.array([1, 3]), np.array([0, 2, 3, 5]))
    >>> tuple(small.weight.shape), small.in_channels, small.out_channels, small.groups
    ((4, 1, 3, 3), 2, 4, 2)
    """
    g = m.groups
    rel_in = relative_positions(keep_in, m.in_channels // g, g, "input")
    relative_positions(keep_out, m.out_channels // g, g, "output")
    new = shallow(m)
    w = take(take(m.weight, keep_out, 0), rel_in, 1)
    set_tensor(new, "weight", w)
    set_tensor(new, "bias", take(m.bias, keep_out, 0))
    new.out_channels, new.in_channels = w.shape[0], w.shape[1] * g
    return new
