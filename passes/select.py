"""Choose which channels of each prunable group to keep: the keep plan.

- ``ratio``: the fraction of prunable channels removed, by one global ranking of scores
  (within a scope, if scopes are given);
- ``scopes``: ``[(name, patterns, ratio), ...]``; a group belongs to the first scope whose
  fnmatch pattern matches one of its producers (groups of no scope use ``ratio``).
  ``PAPER_SCOPES`` reproduces the paper's separate encoder / decoder thresholds; a group
  tied across an unpool link belongs to the encoder pool;
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

from .channels import Group
from .errors import DCPError

PAPER_SCOPES = (("encoder", ("down*",), None), ("decoder", ("up*",), None))


def resolve_scopes(scopes, ratio: float) -> list[tuple[str, tuple[str, ...], float]]:
    """Normalise scopes; ``"paper"`` is PAPER_SCOPES; a scope ratio of None means ``ratio``."""
    if scopes is None:
        return []
    if scopes == "paper":
        scopes = PAPER_SCOPES
    out = []
    for name, patterns, r in scopes:
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        out.append((name, patterns, ratio if r is None else float(r)))
    return out


def scope_of(group: Group, scopes) -> int | None:
    producers = group.names("producer")
    for i, (_, patterns, _) in enumerate(scopes):
        if any(fnmatch.fnmatchcase(p, pat) for p in producers[:1] for pat in patterns):
            return i
    return None


def _check_ratio(r: float) -> None:
    if not 0 <= r < 1:
        raise DCPError(f"ratio must be in [0, 1), got {r}")


def removal_counts(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], ratio: float) -> dict[int, int]:
    """One global ranking: the ``ratio`` lowest-scored channels of the pool are removed."""
    ids = [g.id for g in groups]
    if not ids:
        return {}
    all_scores = torch.cat([scores[i] for i in ids])
    owner = torch.cat([torch.full((scores[i].numel(),), k) for k, i in enumerate(ids)])
    n_remove = int(math.floor(ratio * all_scores.numel()))
    order = torch.argsort(all_scores, stable=True)[:n_remove]
    removed = torch.bincount(owner[order], minlength=len(ids))
    return {i: int(removed[k]) for k, i in enumerate(ids)}


def _round_up(n: int, multiple: int, cap: int) -> int:
    return min(cap, int(math.ceil(n / multiple) * multiple)) if multiple > 1 else n


def select(groups: Sequence[Group], scores: Mapping[int, torch.Tensor], ratio: float = 0.5,
           scopes=None, round_to: int = 1, min_channels: int = 1,
           widths: Mapping[int | str, int] | None = None) -> dict[int, np.ndarray]:
    """``{group id: sorted kept channel indices}`` for every prunable group that has scores."""
    _check_ratio(ratio)
    if round_to < 1 or min_channels < 1:
        raise DCPError(f"round_to and min_channels must be >= 1, got {round_to}, {min_channels}")
    scopes = resolve_scopes(scopes, ratio)
    for _, _, r in scopes:
        _check_ratio(r)
    candidates = [g for g in groups if g.prunable and g.id in scores]
    pools: dict[int | None, list[Group]] = {}
    for g in candidates:
        pools.setdefault(scope_of(g, scopes), []).append(g)
    removed: dict[int, int] = {}
    for scope, members in pools.items():
        removed.update(removal_counts(members, scores, ratio if scope is None else scopes[scope][2]))
    explicit = _explicit_widths(candidates, widths or {})
    keep = {}
    for g in candidates:
        n = explicit.get(g.id, g.size - removed[g.id])
        n = _round_up(max(n, min_channels, 1), round_to, g.size)
        top = torch.argsort(scores[g.id], descending=True, stable=True)[:n]
        keep[g.id] = np.sort(top.numpy())
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
