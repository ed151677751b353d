"""Channel dependency analysis: which channel spaces of a traced graph must shrink together.

Every tensor value's channel dimension (dim 1) is a *space*: an array holding, per channel
position, the id of that channel's identity. The op rules (``channel_rules.py``, one row per op in ``registry.py``)
say how an op's output space relates to its inputs': a conv makes fresh ids, BN/ReLU/pool
pass ids through, ``a + b`` and pool-indices -> unpool UNITE ids element-wise (same channel
identity: the same indices must be kept), ``cat`` concatenates, ``flatten`` repeats.
A *group* is a set of identities that are created together (one producer's output) or
united with them; pruning keeps one index set per group.

Soundness first: graph inputs/outputs, ops without a rule and shape changes the table does
not prove safe FREEZE every identity they touch, and the group says why (naming the node).

>>> import torch
>>> from passes.trace import trace
>>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))
>>> [(g.size, g.frozen is None) for g in channel_groups(trace(m, torch.zeros(1, 3, 8, 8)))]
[(3, False), (8, True), (2, False)]
"""
from __future__ import annotations

from dataclasses import dataclass, field
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .unionfind import UnionFind

Space = np.ndarray  # int64 channel identity ids, one per channel position


@dataclass
class Member:
    """A module whose parameters follow a group: ``positions`` of its channel axis belong to the
    group, as group channels ``channels`` (same length). ``kind``: producer (output channels),
    consumer (input channels), norm (per-channel affine/statistics), depthwise (in == out),
    channelwise (other per-channel parameters, e.g. PReLU). A member with an ``axis`` is a
    parameter or buffer used directly in the graph (``F.conv2d(x, self.w)``, ``x * self.scale``):
    ``module`` is then its attribute path and ``axis`` the tensor dim that follows the group."""
    module: str
    kind: str
    positions: np.ndarray
    channels: np.ndarray
    node: str = ""
    axis: int | None = None


@dataclass
class Group:
    id: int
    size: int                                   # number of distinct channels
    members: list[Member] = field(default_factory=list)
    frozen: str | None = None                   # why it may not be pruned, or None
    ids: np.ndarray | None = None               # identity id of each group channel (internal)

    @property
    def prunable(self) -> bool:
        return self.frozen is None

    def names(self, kind: str | None = None) -> list[str]:
        return [m.module for m in self.members if kind is None or m.kind == kind]


@dataclass
class ModuleChannels:
    """Channel identities of one module's input and output axes (None: axis not tracked)."""
    in_ids: Space | None = None
    out_ids: Space | None = None
    kind: str = ""


class ChannelAnalysis:
    """The state rules work on: identity allocation, unions, freezing, members."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.ids = UnionFind()
        self.allocations: list[range] = []       # ids created together (one atomic space)
        self.frozen: dict[int, str] = {}        # id -> reason (first one wins)
        self.modules: dict[str, ModuleChannels] = {}
        self.member_records: list[tuple[str, str, Space, str, int | None]] = []
        self.spaces: dict[fx.Node, Any] = {}
        self.channel_axis: dict[fx.Node, int] = {}  # nodes whose space does not start at dim 1 / is n-D
        # parameters/buffers used directly (get_attr): target -> {dim: ids}, and the dim of
        # each whose kept positions are reported as its "output" channels
        self.params: dict[str, dict[int, Space]] = {}
        self.param_output_dim: dict[str, int] = {}
        self.param_uses: set[tuple[fx.Node, fx.Node]] = set()  # (user, used) edges a rule claimed
        self.param_chain: set[fx.Node] = set()   # nodes computed from a parameter inside a claim

    # --- identity bookkeeping -------------------------------------------------
    def fresh(self, n: int) -> Space:
        r = self.ids.add(n)
        self.allocations.append(r)
        return np.arange(r.start, r.stop, dtype=np.int64)

    def tie(self, a: Space, b: Space, node: fx.Node) -> bool:
        """Unite two spaces element-wise; unequal lengths cannot be tied, so both freeze."""
        if len(a) != len(b):
            self.freeze(a, f"{node.name}: cannot tie {len(a)} and {len(b)} channels")
            self.freeze(b, f"{node.name}: cannot tie {len(a)} and {len(b)} channels")
            return False
        self.ids.union_all(a.tolist(), b.tolist())
        return True

    def freeze(self, space: Any, reason: str) -> None:
        for s in flat_spaces(space):
            for i in s.tolist():
                self.frozen.setdefault(i, reason)

    def fresh_frozen(self, n: int, reason: str) -> Space:
        s = self.fresh(n)
        self.freeze(s, reason)
        return s

    # --- what rules read ------------------------------------------------------
    def space(self, arg: Any) -> Any:
        return self.spaces.get(arg) if isinstance(arg, fx.Node) else None

    @staticmethod
    def shape(node: Any) -> tuple | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if hasattr(meta, "shape") else None

    def module_io(self, name: str, in_ids: Space | None, out_ids: Space | None, kind: str, node: fx.Node) -> None:
        """Record a module's axes; a module called twice has ONE identity per axis (shared weights)."""
        seen = self.modules.get(name)
        if seen is None:
            self.modules[name] = ModuleChannels(in_ids, out_ids, kind)
            return
        for old, new in ((seen.in_ids, in_ids), (seen.out_ids, out_ids)):
            if old is not None and new is not None:
                self.tie(old, new, node)

    def member(self, module: str, kind: str, ids: Space, node: fx.Node, axis: int | None = None) -> None:
        self.member_records.append((module, kind, ids, node.name, axis))

    def param_axis(self, attr: fx.Node, dim: int, ids: Space, user: fx.Node, output: bool = False) -> None:
        """Dim ``dim`` of the parameter ``attr`` (a get_attr node) follows ``ids``; ``user`` reads
        it. One parameter has ONE identity per dim, however many ops read it."""
        dims = self.params.setdefault(attr.target, {})
        if dim in dims:
            self.tie(dims[dim], ids, user)
        else:
            dims[dim] = ids
        if output:
            self.param_output_dim.setdefault(attr.target, dim)
        self.param_uses.add((user, attr))


def flat_spaces(value: Any) -> list[Space]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in flat_spaces(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in flat_spaces(v)]
    return []


def analyse(gm: fx.GraphModule) -> ChannelAnalysis:
    """Walk the graph once, applying each node's rule. Needs ``passes.trace`` metadata."""
    from .registry import lookup
    from .channels_last import guarded  # rules for dim 1 never see channels moved elsewhere
    ctx = ChannelAnalysis(gm)
    for node in gm.graph.nodes:
        if node.op != "output" and "tensor_meta" not in node.meta and "type" not in node.meta:
            raise ValueError(f"node '{node.name}' has no shape metadata: trace the model with passes.trace first")
        rule: Callable = lookup(gm, node).rule
        ctx.spaces[node] = rule(ctx, node) if not ctx.channel_axis else guarded(ctx, node, rule)
    _freeze_unclaimed_parameter_uses(ctx)
    _freeze_channel_counts_used_as_values(ctx)
    return ctx


# Users that take sizes as a SHAPE: a channel count there follows the pruning by construction
# (whether the reshape itself is proven is its own rule's business).
SHAPE_CONSUMERS = {"view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "new_full", torch.reshape,
                   torch.zeros, torch.ones, torch.empty,
                   # output sizes: only the spatial dims are read
                   F.max_unpool1d, F.max_unpool2d, F.max_unpool3d, F.interpolate}
SIZE_MODULES = (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d, nn.Upsample)


def _size_query(node: fx.Node):
    """``(tensor, included)`` if ``node`` reads the size of a tensor: ``included`` says whether
    the value holds the channel count (dim 1)."""
    if node.op == "call_method" and node.target in ("size", "numel") or \
            node.op == "call_function" and (node.target is torch.numel or
                                            node.target is getattr and node.args[1:] == ("shape",)):
        src = node.args[0]
        rank = len(src.meta.get("tensor_meta").shape) if hasattr(src.meta.get("tensor_meta"), "shape") else 0
        dim = node.args[1] if node.target == "size" and len(node.args) > 1 else node.kwargs.get("dim")
        return src, rank >= 2 and (dim is None or dim % rank == 1)
    return None


def _index_keeps_channel(index, rank: int) -> bool:
    if isinstance(index, int):
        return index % rank == 1
    if isinstance(index, slice):
        return 1 in range(rank)[index]
    return True


def _freeze_channel_counts_used_as_values(ctx: ChannelAnalysis) -> None:
    """``x.size(1)``, ``x.shape``, ``x.numel()`` follow the pruning: fine as a view's shape, but
    a computation with them (``y * x.size(1)``, ``torch.arange(c)``) would change values:
    then the tensor's channels freeze."""
    for node in ctx.gm.graph.nodes:
        found = _size_query(node)
        if found is None or not found[1] or ctx.space(found[0]) is None:
            continue
        src, rank = found[0], len(ctx.shape(found[0]))
        todo = [node]
        while todo:
            v = todo.pop()
            for user in v.users:
                if user.target is operator.getitem and user.args[0] is v and v.meta.get("type") is not int:
                    if _index_keeps_channel(user.args[1], rank):
                        todo.append(user)
                elif user.target in SHAPE_CONSUMERS or user.op == "call_module" and \
                        isinstance(ctx.gm.get_submodule(user.target), SIZE_MODULES):
                    continue
                elif user.op != "output" and user.meta.get("type") in (int, float, bool, torch.Size, tuple):
                    todo.append(user)  # integer arithmetic on sizes: follow where the result goes
                else:
                    ctx.freeze(ctx.space(src), f"{user.name}: computes with the channel count of "
                                               f"'{src.name}' (it would change with pruning)")


def _freeze_unclaimed_parameter_uses(ctx: ChannelAnalysis) -> None:
    """A sliced parameter changes EVERY read of it: if any read is not one a rule proved
    (e.g. ``self.w.sum()`` next to ``F.conv2d(x, self.w)``), its channels freeze."""
    for target, dims in ctx.params.items():  # a layer called as a module AND read as a parameter
        owner = target.rpartition(".")[0]
        if owner in ctx.modules:
            for ids in [*dims.values(), ctx.modules[owner].in_ids, ctx.modules[owner].out_ids]:
                if ids is not None:
                    ctx.freeze(ids, f"'{target}' is read directly and through its module '{owner}'")
    attrs = [n for n in ctx.gm.graph.nodes if n.op == "get_attr" and n.target in ctx.params]
    for attr in attrs:
        todo, seen = [attr], set()
        while todo:
            v = todo.pop()
            for user in v.users:
                if (user, v) not in ctx.param_uses:
                    for ids in ctx.params[attr.target].values():
                        ctx.freeze(ids, f"{user.name}: also reads the parameter '{attr.target}' in a way "
                                        f"no rule proves")
                elif user in ctx.param_chain and user not in seen:
                    seen.add(user)
                    todo.append(user)


def channel_groups(gm: fx.GraphModule) -> list[Group]:
    """The coupled channel groups of a traced graph, in order of first appearance."""
    return build_groups(analyse(gm))


def build_groups(ctx: ChannelAnalysis) -> list[Group]:
    uf = ctx.ids
    root = uf.roots()  # id -> the identity of its channel (array lookups: no Python loop per id)
    allocs = ctx.allocations
    in_order = root[np.concatenate([np.arange(a.start, a.stop) for a in allocs])] if allocs else root[:0]
    alloc_of = np.repeat(np.arange(len(allocs)), [len(a) for a in allocs])  # aligned with in_order
    channels, gid, chan, bounds = _number_channels(in_order, _group_roots(alloc_of, in_order, len(uf)))
    gid_of_root, chan_of_root = np.full(len(uf), -1), np.full(len(uf), -1)
    gid_of_root[channels], chan_of_root[channels] = gid, chan
    by_group = channels[np.argsort(gid, kind="stable")]
    groups = [Group(id=g, size=e - s, ids=by_group[s:e]) for g, (s, e) in enumerate(zip(bounds, bounds[1:]))]
    frozen_ids = np.fromiter(ctx.frozen, dtype=np.int64, count=len(ctx.frozen))
    for g, reason in zip(gid_of_root[root[frozen_ids]].tolist(), ctx.frozen.values()):
        groups[g].frozen = groups[g].frozen or reason
    for module, kind, ids, node, axis in ctx.member_records:
        r = root[ids]
        gids = gid_of_root[r]
        for g in np.unique(gids).tolist():
            pos = np.nonzero(gids == g)[0]
            groups[g].members.append(Member(module, kind, pos, chan_of_root[r[pos]], node, axis))
    for g in groups:
        if g.frozen is None and not any(m.kind == "producer" for m in g.members):
            g.frozen = "no producer layer (its channels come from the input or a constant)"
    return groups


def _group_roots(alloc_of: np.ndarray, roots: np.ndarray, n: int) -> np.ndarray:
    """Identities created together belong to one group (a producer keeps one index set): join the
    allocations that share a channel; label every channel root (of ``n``) with its joined allocations.
    ``roots[k]`` is the channel of the k-th allocated id, ``alloc_of[k]`` its allocation."""
    by_root = np.argsort(roots, kind="stable")
    same = roots[by_root[1:]] == roots[by_root[:-1]]
    pairs = np.unique(np.stack([alloc_of[by_root[:-1]][same], alloc_of[by_root[1:]][same]], 1), axis=0)
    joined = UnionFind()
    joined.add(int(alloc_of.max()) + 1 if len(alloc_of) else 0)
    joined.union_all(pairs[:, 0].tolist(), pairs[:, 1].tolist())
    group_root = np.full(n, -1, dtype=np.int64)
    group_root[roots] = joined.roots()[alloc_of]
    return group_root


def _number_channels(in_order: np.ndarray, group_root: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Channels (distinct roots of the allocated ids, in allocation order) in order of first
    appearance, their group (groups numbered in order of first appearance too), their index
    within the group, and each group's slice bounds."""
    roots, first = np.unique(in_order, return_index=True)
    channels = roots[np.argsort(first, kind="stable")]
    tops, top_first, top_of_channel = np.unique(group_root[channels], return_index=True, return_inverse=True)
    number = np.empty(len(tops), dtype=np.int64)
    number[np.argsort(top_first, kind="stable")] = np.arange(len(tops))
    gid = number[top_of_channel]
    sizes = np.bincount(gid, minlength=len(tops))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    order = np.argsort(gid, kind="stable")
    chan = np.empty(len(channels), dtype=np.int64)
    chan[order] = np.arange(len(channels)) - np.repeat(bounds[:-1], sizes)
    return channels, gid, chan, bounds.tolist()


def group_index(ctx: ChannelAnalysis, groups: list[Group]) -> dict[int, tuple[int, int]]:
    """identity root -> (group id, channel within group)."""
    out = {}
    for g in groups:
        for ch, r in enumerate(g.ids.tolist()):
            out[r] = (g.id, ch)
    return out
