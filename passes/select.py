"""Choose which channels of each prunable group to keep: the keep plan.

- ``ratio``: the fraction of prunable channels removed, by one global ranking of scores;
- scopes: ``[(name, patterns, ratio), ...]``. A member (a layer) belongs to the first scope
  whose fnmatch pattern matches its module name, else to the default scope (``ratio``).
  Each scope ranks the channels by its own members' scores in its own pool and drops its
  lowest ``ratio``; a channel is removed only if EVERY pool it appears in drops it (a group
  tied across an unpool link keeps a channel either side wants: the paper's "max of the two
  counts", with the indices tied). ``PAPER_SCOPES``: the paper's encoder / decoder pools;
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
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .channels import Group, Member
from .errors import DCPError
from .importance import channel_scores

PAPER_SCOPES = (("encoder", ("down*",), None), ("decoder", ("up*",), None))
Pool = tuple[float | None, dict[int, torch.Tensor]]  # (ratio removed or None: the global one, scores)


def resolve_scopes(scopes) -> list[tuple[str, tuple[str, ...], float | None]]:
    """Normalise scopes; ``"paper"`` is PAPER_SCOPES; a scope ratio of None means the global ratio."""
    if scopes is None:
        return []
    if scopes == "paper":
        scopes = PAPER_SCOPES
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


def select(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], ratio: float = 0.5,
           round_to: int = 1, min_channels: int = 1, widths: Mapping[int | str, int] | None = None,
           pools: Sequence[Pool] | None = None) -> dict[int, np.ndarray]:
    """``{group id: sorted kept channel indices}`` for every prunable group that has scores.
    ``scores`` order channels within a group; ``pools`` (default: one pool of ``scores`` at
    ``ratio``) decide how many go."""
    _check_ratio(ratio)
    if round_to < 1 or min_channels < 1:
        raise DCPError(f"round_to and min_channels must be >= 1, got {round_to}, {min_channels}")
    candidates = [g for g in groups if g.prunable and g.id in scores]
    removed = {g.id: torch.ones(g.size, dtype=torch.bool) for g in candidates}
    for pool_ratio, pool_scores in pools if pools is not None else [(ratio, scores)]:
        pool_ratio = ratio if pool_ratio is None else pool_ratio
        _check_ratio(pool_ratio)
        for gid, dropped in dropped_by_pool(pool_ratio, pool_scores).items():
            if gid in removed:
                removed[gid] &= dropped
    explicit = _explicit_widths(candidates, widths or {})
    keep = {}
    for g in candidates:
        n = explicit.get(g.id, g.size - int(removed[g.id].sum()))
        n = _round_up(max(n, min_channels, 1), round_to, g.size)
        order = torch.argsort(scores[g.id], descending=True, stable=True)
        if g.id not in explicit:  # survivors first, then the best of the rest (rounding, minimum)
            order = order[torch.argsort(removed[g.id][order].int(), stable=True)]
        keep[g.id] = np.sort(order[:n].numpy())
    return keep


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
