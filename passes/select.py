"""Choose which channels of each prunable group to keep: the keep plan.

Two ways in. A ratio (``select``): one ranking of scores drops a fraction of the channels.
A budget (``select_budget``): a cost model in (MACs, parameters, measured latency: any sum of
per-layer costs that depend on the widths of the layer's axes, ``CostModel``), a keep plan out
that maximises the importance kept while the cost fits the budget.

Scores are made comparable across groups first (``normalize``: ``mean``, ``max``, ``std``
or ``none``): raw weight norms grow with a layer's fan-in, so one global ranking of them
strips the early, narrow layers first. ``max_ratio`` caps the fraction of any group removed.

- ``ratio``: the fraction of prunable channels removed, by one global ranking of scores;
- scopes: ``[(name, patterns, ratio), ...]``. A member (a layer) belongs to the first scope
  whose fnmatch pattern matches its module name, else to the default scope (``ratio``).
  Each scope ranks the channels by its own members' scores in its own pool and drops its
  lowest ``ratio``; a channel is removed only if EVERY pool it appears in drops it (a group
  tied across an unpool link keeps a channel either side wants: the "max of the two
  counts", with the indices tied);
- ``round_to``: kept counts rounded UP to a multiple (8 for tensor cores), capped at the size;
- ``min_channels``: never fewer (never 0);
- ``widths``: explicit kept counts, ``{group id or producer module name: n}``.

>>> import torch
>>> from passes.channels import Group
>>> g = Group(id=0, size=4)
>>> select([g], {0: torch.tensor([0.1, 0.9, 0.5, 0.2])}, ratio=0.5)[0].tolist()
[1, 2]
"""
from __future__ import annotations

import fnmatch
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .channels import Group, Member
from .count import Axis, LayerAxes
from .errors import DCPError
from .importance import channel_scores

NORMALIZE = ("none", "mean", "max", "std")
Pool = tuple[float | None, dict[int, torch.Tensor]]  # (ratio removed or None: the global one, scores)


def resolve_scopes(scopes) -> list[tuple[str, tuple[str, ...], float | None]]:
    """Normalise scopes; a scope ratio of None means the global ratio."""
    if scopes is None:
        return []
    if isinstance(scopes, str):  # model-specific presets (e.g. a network's encoder/decoder) live with the model
        raise DCPError(f"scopes must be [(name, patterns, ratio), ...], got the string {scopes!r}")
    out = []
    for name, patterns, r in scopes:
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if r is not None:
            r = float(r)
            _check_ratio(r)
        out.append((name, patterns, r))
    return out


def _scope_index(member: Member, scopes) -> int | None:
    for i, (_, patterns, _) in enumerate(scopes):
        if any(fnmatch.fnmatchcase(member.module, p) for p in patterns):
            return i
    return None


def scope_pools(model: nn.Module, groups: Sequence[Group], scopes, importance="bn",
                aggregate: str = "mean") -> list[Pool]:
    """One pool per scope (and one for members of no scope), scored by that scope's members."""
    scopes = resolve_scopes(scopes)
    pools = []
    for i in [*range(len(scopes)), None]:
        scores = channel_scores(model, groups, importance, aggregate,
                                members=lambda m, i=i: _scope_index(m, scopes) == i)
        scores = {gid: s for gid, s in scores.items() if _has_scored_member(groups[gid], scopes, i)}
        if scores:
            pools.append((None if i is None else scopes[i][2], scores))
    return pools


def _has_scored_member(group: Group, scopes, i) -> bool:
    return any(_scope_index(m, scopes) == i for m in group.members if m.kind != "consumer")


def _check_ratio(r: float) -> None:
    if not 0 <= r < 1:
        raise DCPError(f"ratio must be in [0, 1), got {r}")


def dropped_by_pool(ratio: float, scores: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """One ranking over the pool: the ``ratio`` lowest-scored channels are dropped."""
    ids = list(scores)
    if not ids:
        return {}
    all_scores = torch.cat([scores[i] for i in ids])
    n_drop = int(math.floor(ratio * all_scores.numel()))
    dropped = torch.zeros(all_scores.numel(), dtype=torch.bool)
    dropped[torch.argsort(all_scores, stable=True)[:n_drop]] = True
    return dict(zip(ids, dropped.split([scores[i].numel() for i in ids])))


def _round_up(n: int, multiple: int, cap: int) -> int:
    return min(cap, int(math.ceil(n / multiple) * multiple)) if multiple > 1 else n


def normalize_scores(scores: Mapping[int, torch.Tensor], how: str = "mean") -> dict[int, torch.Tensor]:
    """Per-group rescaling so that scores compare across groups: divide by the group's ``mean``
    or ``max``, ``std``: standardise (zero mean, unit deviation), ``none``: as given. The order
    within a group never changes.

    >>> normalize_scores({0: torch.tensor([1., 3.]), 1: torch.tensor([10., 30.])})[1].tolist()
    [0.5, 1.5]
    """
    if how not in NORMALIZE:
        raise DCPError(f"normalize must be one of {NORMALIZE}, got {how!r}")
    out = {}
    for gid, s in scores.items():
        s = s.float()
        if how == "mean":
            s = s / s.mean().clamp(min=1e-12)
        elif how == "max":
            s = s / s.max().clamp(min=1e-12)
        elif how == "std":
            s = (s - s.mean()) / (s.std() if s.numel() > 1 else torch.tensor(1.0)).clamp(min=1e-12)
        out[gid] = s
    return out


def floor_width(size: int, min_channels: int = 1, max_ratio: float = 1.0, round_to: int = 1) -> int:
    """The fewest channels a group of ``size`` may keep: ``min_channels`` (at least 1), at most
    ``max_ratio`` of it removed, rounded up to ``round_to``."""
    if not 0 <= max_ratio <= 1:
        raise DCPError(f"max_ratio must be in [0, 1], got {max_ratio}")
    n = max(min_channels, 1, int(math.ceil(round((1 - max_ratio) * size, 9))))
    return _round_up(n, round_to, size)


def _check_steps(round_to: int, min_channels: int) -> None:
    if round_to < 1 or min_channels < 1:
        raise DCPError(f"round_to and min_channels must be >= 1, got {round_to}, {min_channels}")


def every_producer_keeps(groups: Sequence[Group], keep: dict[int, np.ndarray], scores: Mapping[int, torch.Tensor],
                         min_channels: int = 1) -> dict[int, np.ndarray]:
    """Add back, per producer member, its best channels until it keeps ``min_channels`` (or all
    it has): one group can hold several producers (``cat([b(x), a(x)]) * gate`` ties the
    concatenation to one space), and a group-wide ranking may drop every channel of one of them,
    which would leave a layer with 0 outputs. (The added channels may break ``round_to``.)"""
    by_id = {g.id: g for g in groups}
    for gid, kept in keep.items():
        for m in by_id[gid].members:
            if m.kind != "producer":
                continue
            mine = np.unique(m.channels)
            missing = min(min_channels, len(mine)) - len(np.intersect1d(kept, mine))
            if missing > 0:
                spare = mine[~np.isin(mine, kept)]
                best = spare[torch.argsort(scores[gid][torch.as_tensor(spare)], descending=True, stable=True).numpy()]
                kept = np.union1d(kept, best[:missing])
        keep[gid] = kept
    return keep


def select(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], ratio: float = 0.5,
           round_to: int = 1, min_channels: int = 1, widths: Mapping[int | str, int] | None = None,
           pools: Sequence[Pool] | None = None, normalize: str = "none", max_ratio: float = 1.0
           ) -> dict[int, np.ndarray]:
    """``{group id: sorted kept channel indices}`` for every prunable group that has scores.
    ``scores`` order channels within a group; ``pools`` (default: one pool of ``scores`` at
    ``ratio``) decide how many go, ranked after ``normalize``; no group loses more than ``max_ratio``."""
    _check_ratio(ratio)
    _check_steps(round_to, min_channels)
    candidates = [g for g in groups if g.prunable and g.id in scores]
    removed = {g.id: torch.ones(g.size, dtype=torch.bool) for g in candidates}
    for pool_ratio, pool_scores in pools if pools is not None else [(ratio, scores)]:
        pool_ratio = ratio if pool_ratio is None else pool_ratio
        _check_ratio(pool_ratio)
        for gid, dropped in dropped_by_pool(pool_ratio, normalize_scores(pool_scores, normalize)).items():
            if gid in removed:
                removed[gid] &= dropped
    explicit = _explicit_widths(candidates, widths or {})
    keep = {}
    for g in candidates:
        n = explicit.get(g.id, g.size - int(removed[g.id].sum()))
        floor = floor_width(g.size, min_channels, max_ratio, round_to) if g.id not in explicit else 1
        n = _round_up(max(n, floor, min_channels, 1), round_to, g.size)
        order = torch.argsort(scores[g.id], descending=True, stable=True)
        if g.id not in explicit:  # survivors first, then the best of the rest (rounding, minimum)
            order = order[torch.argsort(removed[g.id][order].int(), stable=True)]
        keep[g.id] = np.sort(order[:n].numpy())
    return every_producer_keeps(groups, keep, scores, min_channels)


def _explicit_widths(groups: Sequence[Group], widths: Mapping[int | str, int]) -> dict[int, int]:
    by_name = {name: g for g in groups for name in g.names("producer")}
    by_id = {g.id: g for g in groups}
    out = {}
    for key, n in widths.items():
        g = by_id.get(key) if isinstance(key, int) else by_name.get(key)
        if g is None:
            raise DCPError(f"width given for '{key}', which is not a prunable group or producer layer")
        if not 1 <= int(n) <= g.size:
            raise DCPError(f"width {n} for '{key}' is outside 1..{g.size}")
        out[g.id] = int(n)
    return out


# --- a budget: a cost model in, a keep plan out -------------------------------------------------
LayerCostFn = Callable[[int, float | None, float], float]  # (layer index, input width, output width)


class CostModel:
    """A network's cost as a sum over layers (``count.LayerAxes``), each a function of its input
    and output axes' widths (the input width is None where it does not matter: depthwise).
    A producer's width therefore changes its consumers' cost too.

    >>> from passes.count import Axis, LayerAxes
    >>> layers = [LayerAxes("a", 100, Axis((), 3), Axis(((0, 8),), 0)),
    ...           LayerAxes("b", 80, Axis(((0, 8),), 0), Axis((), 2))]
    >>> CostModel.macs(layers, {0: 8}).total({0: 4})
    90.0
    """

    def __init__(self, layers: Sequence[LayerAxes], layer_cost: LayerCostFn, sizes: Mapping[int, int]):
        self.layers, self.layer_cost, self.sizes = list(layers), layer_cost, dict(sizes)
        self.touching: dict[int, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for axis in (layer.inputs, layer.outputs):
                for gid, _ in axis.shares if axis is not None else ():
                    self.touching.setdefault(gid, [])
                    if i not in self.touching[gid]:
                        self.touching[gid].append(i)

    @classmethod
    def macs(cls, layers: Sequence[LayerAxes], sizes: Mapping[int, int]) -> "CostModel":
        def cost(i, w_in, w_out):
            layer = layers[i]
            scale = w_out / max(layer.outputs.size, 1)
            return layer.macs * scale * (1.0 if w_in is None else w_in / max(layer.inputs.size, 1))
        return cls(layers, cost, sizes)

    def width(self, axis: Axis, kept: Mapping[int, int]) -> float:
        return axis.fixed + sum(n * kept.get(g, self.sizes[g]) / self.sizes[g] for g, n in axis.shares)

    def layer(self, i: int, kept: Mapping[int, int]) -> float:
        layer = self.layers[i]
        w_in = None if layer.inputs is None else self.width(layer.inputs, kept)
        return float(self.layer_cost(i, w_in, self.width(layer.outputs, kept)))

    def total(self, kept: Mapping[int, int]) -> float:
        return float(sum(self.layer(i, kept) for i in range(len(self.layers))))


def kept_importance(scores: Mapping[int, torch.Tensor], keep: Mapping[int, np.ndarray], normalize: str = "mean") -> float:
    """The fraction of the (normalised) importance of the groups in ``keep`` that the plan keeps.

    >>> kept_importance({0: torch.tensor([1., 3.])}, {0: np.array([1])}, "none")
    0.75
    """
    norm = normalize_scores({g: scores[g] for g in keep}, normalize)
    total = sum(float(s.sum()) for s in norm.values())
    kept = sum(float(norm[g][torch.as_tensor(np.asarray(k), dtype=torch.long)].sum()) for g, k in keep.items())
    return kept / max(total, 1e-30)


def reachable_widths(size: int, floor: int, round_to: int) -> list[int]:
    """Widths a group may take, widest first: its size, then the multiples of ``round_to``
    below it, down to ``floor``."""
    steps = range(size - 1, floor - 1, -1) if round_to == 1 else range((size - 1) // round_to * round_to,
                                                                          floor - 1, -round_to)
    return [size, *[w for w in steps if w >= max(floor, 1)]]


def _fill_back(kept: dict, ladders: Mapping[int, list], prefix: Mapping[int, np.ndarray], cost: CostModel,
               budget: float) -> None:
    """Give blocks back while the budget allows: the last removal steps (up to ``lookahead``
    blocks at once) can undershoot the budget by a lot, and the slack buys importance back.
    Each step re-adds the one block that gains the most importance per unit of cost."""
    total = cost.total(kept)
    while True:
        best = None
        for gid, ladder in ladders.items():
            up = min((w for w in ladder if w > kept[gid]), default=None)
            if up is None:
                continue
            touching = cost.touching.get(gid, [])
            added = sum(cost.layer(i, {**kept, gid: up}) - cost.layer(i, kept) for i in touching)
            if total + added <= budget:
                gain = prefix[gid][up] - prefix[gid][kept[gid]]
                value = gain / max(added, 1e-12 * max(abs(total), 1))
                if best is None or value > best[0]:
                    best = (value, gid, up)
        if best is None:
            return
        kept[best[1]] = best[2]
        total = cost.total(kept)  # exact (not the running sum): the budget test must not drift


def select_budget(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], cost: CostModel, budget: float,
                  round_to: int = 1, min_channels: int = 1, max_ratio: float = 0.9, normalize: str = "mean",
                  widths: Mapping[int | str, int] | None = None, lookahead: int = 4) -> dict[int, np.ndarray]:
    """The keep plan that keeps the most (normalised) importance with ``cost.total(plan) <= budget``.

    A greedy knapsack in blocks (a Lagrangian / marginal-utility heuristic): every group starts
    whole; each step removes, from one group, its lowest-scored block of channels (down to the
    next reachable width: a multiple of ``round_to``), choosing the move that loses the least
    importance per unit of cost saved. Savings are re-evaluated from the cost model as widths
    change (a group's saving depends on its neighbours' widths: producer x consumer), only for
    the groups that share a layer with the one just narrowed. A move may look up to
    ``lookahead`` blocks ahead (the whole way down when no group saves within that), so a
    staircase cost (latency flat between kernel widths, as measured tables show) is crossed
    rather than stalled on. Groups stop at
    ``floor_width`` (``min_channels``, ``max_ratio``); ``widths`` fixes groups. Raises
    ``DCPError`` when even every group at its floor costs more than ``budget``.

    >>> from passes.channels import Group
    >>> from passes.count import Axis, LayerAxes
    >>> groups = [Group(id=0, size=4), Group(id=1, size=4)]
    >>> layers = [LayerAxes("a", 40, None, Axis(((0, 4),), 0)), LayerAxes("b", 4, None, Axis(((1, 4),), 0))]
    >>> scores = {0: torch.tensor([1., 1., 1., 1.]), 1: torch.tensor([1., 1., 1., 4.])}
    >>> {g: k.tolist() for g, k in select_budget(groups, scores, CostModel.macs(layers, {0: 4, 1: 4}), 30,
    ...                                            max_ratio=0.75).items()}
    {0: [0, 1], 1: [0, 1, 2, 3]}
    """
    _check_steps(round_to, min_channels)
    candidates = [g for g in groups if g.prunable and g.id in scores]
    norm = normalize_scores({g.id: scores[g.id] for g in candidates}, normalize)
    explicit = _explicit_widths(candidates, widths or {})
    order = {g.id: torch.argsort(scores[g.id], descending=True, stable=True) for g in candidates}
    prefix = {g.id: np.concatenate([[0.0], np.cumsum(norm[g.id][order[g.id]].double().numpy())]) for g in candidates}
    kept = {g.id: explicit.get(g.id, g.size) for g in candidates}
    ladders = {g.id: reachable_widths(g.size, floor_width(g.size, min_channels, max_ratio, round_to), round_to)
               for g in candidates if g.id not in explicit}
    neighbours = {gid: {s for i in cost.touching.get(gid, []) for axis in (cost.layers[i].inputs, cost.layers[i].outputs)
                        if axis is not None for s, _ in axis.shares} for gid in ladders}
    total = cost.total(kept)

    def best_move(gid, reach=lookahead):
        ladder, now = ladders[gid], kept[gid]
        lower = [w for w in ladder if w < now][:reach]
        before = sum(cost.layer(i, kept) for i in cost.touching.get(gid, []))
        best = None
        for w in lower:
            saved = before - sum(cost.layer(i, {**kept, gid: w}) for i in cost.touching.get(gid, []))
            if saved > 1e-12 * max(abs(total), 1):
                price = (prefix[gid][now] - prefix[gid][w]) / saved
                if best is None or price < best[0]:
                    best = (price, w, saved)
        return best

    moves = {gid: best_move(gid) for gid in ladders}
    while total > budget:
        live = [(m[0], gid) for gid, m in moves.items() if m is not None]
        if not live:  # no saving within the lookahead (a measured cost need not fall monotonically): look further
            moves = {gid: best_move(gid, reach=len(ladders[gid])) for gid in ladders}
            live = [(m[0], gid) for gid, m in moves.items() if m is not None]
        if not live:
            raise DCPError(f"cannot reach the budget: every prunable group is at its floor (max_ratio "
                           f"{max_ratio}, min_channels {min_channels}) and the cost is still "
                           f"{total / max(budget, 1e-30):.2f}x the budget")
        _, gid = min(live)
        kept[gid] = moves[gid][1]
        total = cost.total(kept)
        for other in neighbours[gid] | {gid}:
            if other in ladders:
                moves[other] = best_move(other)
    _fill_back(kept, ladders, prefix, cost, budget)
    keep = {g.id: np.sort(order[g.id][:kept[g.id]].numpy()) for g in candidates}
    return every_producer_keeps(groups, keep, scores, min_channels)
