"""Per-channel importance scores for each prunable group.

Sources: ``"bn"`` (|gamma| of the group's norm layers or ``F.batch_norm`` weights; groups
without one fall back to ``"l1"``), ``"l1"`` / ``"l2"`` (norm of each producer's
output-channel weights, module or ``F.conv2d``/``F.linear`` parameter), or a map
``{module name: Tensor[C]}`` of scores over a module's OUTPUT channels (e.g. the sparse
student's gammas). A group's channel score aggregates its members' scores: ``mean``
(default: groups tied across an unpool have two norms, and must not look twice as
important as a plain layer), ``sum`` or ``max``.

>>> import torch
>>> from passes import trace, channel_groups
>>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 1, 1))
>>> with torch.no_grad(): _ = m[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
>>> groups = channel_groups(trace(m, torch.zeros(1, 1, 4, 4)))
>>> channel_scores(m, groups, "bn")[1].tolist()
[0.5, 2.0, 1.0]
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .channels import Group, Member
from .errors import DCPError

AGGREGATES = ("sum", "mean", "max")
OUTPUT_KINDS = ("producer", "norm", "depthwise", "channelwise")


def _weight_norm(module: nn.Module, p: int) -> torch.Tensor:
    w = module.weight.detach().float()
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        w = w.transpose(0, 1)
    return w.flatten(1).norm(p=p, dim=1)


def _param_scores(model: nn.Module, member: Member, source) -> torch.Tensor | None:
    """A parameter used directly in the graph: ``F.batch_norm``'s weight is a "bn" source,
    an ``F.conv2d``/``F.linear`` weight an "l1"/"l2" one (norm over its other dims)."""
    owner, _, name = member.module.rpartition(".")
    t = getattr(model.get_submodule(owner), name).detach().float().movedim(member.axis, 0)
    if source == "bn" and member.kind == "norm":
        return t.abs().cpu()
    if source in ("l1", "l2") and member.kind == "producer":
        return t.flatten(1).norm(p=1 if source == "l1" else 2, dim=1).cpu()
    return None


def _member_scores(model: nn.Module, member: Member, source) -> torch.Tensor | None:
    """Scores over the member's channel positions, or None if this source says nothing about it."""
    if isinstance(source, Mapping):
        if member.kind in OUTPUT_KINDS and member.module in source:
            return torch.as_tensor(source[member.module]).detach().float().abs().cpu()
        return None
    if member.axis is not None:
        return _param_scores(model, member, source)
    module = model.get_submodule(member.module)
    if source == "bn":
        if member.kind == "norm" and getattr(module, "weight", None) is not None:
            return module.weight.detach().float().abs().cpu()
        return None
    if source in ("l1", "l2") and member.kind == "producer":
        return _weight_norm(module, 1 if source == "l1" else 2).cpu()
    return None


def _aggregate(group: Group, parts: list[tuple[np.ndarray, torch.Tensor]], how: str) -> torch.Tensor:
    total = torch.zeros(group.size)
    count = torch.zeros(group.size)
    for channels, values in parts:
        idx = torch.as_tensor(channels)
        if how == "max":
            total = total.scatter_reduce(0, idx, values, reduce="amax", include_self=True)
        else:
            total.index_add_(0, idx, values)
        count.index_add_(0, idx, torch.ones_like(values))
    return total / count.clamp(min=1) if how == "mean" else total


def channel_scores(model: nn.Module, groups: list[Group], importance="bn", aggregate: str = "mean",
                   members: Callable[[Member], bool] | None = None) -> dict[int, torch.Tensor]:
    """``{group id: Tensor[group.size]}`` for every prunable group; ``members`` filters which
    members speak (e.g. only the encoder's, for a scope's pool)."""
    if aggregate not in AGGREGATES:
        raise DCPError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if isinstance(importance, Mapping):
        _check_keys(model, groups, importance)
    elif importance not in ("bn", "l1", "l2"):
        raise DCPError(f"importance must be bn, l1, l2 or a {{module: scores}} map, got {importance!r}")
    scores = {}
    for g in groups:
        if not g.prunable:
            continue
        for source in (importance, "bn", "l1"):  # fall back when a source says nothing of this group
            parts = []
            for m in g.members:
                if members is not None and not members(m):
                    continue
                s = _member_scores(model, m, source)
                if s is not None:
                    if s.numel() <= int(m.positions.max()):
                        raise DCPError(f"importance for '{m.module}' has {s.numel()} values, "
                                       f"the module has more channels")
                    parts.append((m.channels, s[torch.as_tensor(m.positions)]))
            if parts:
                scores[g.id] = _aggregate(g, parts, aggregate)
                break
    return scores


def _check_keys(model: nn.Module, groups: list[Group], importance: Mapping) -> None:
    members = {m.module for g in groups for m in g.members if m.kind in OUTPUT_KINDS}
    unknown = [k for k in importance if k not in members]
    if unknown:
        names = dict(model.named_modules())
        what = "is not a module of the model" if unknown[0] not in names else "has no prunable output channels"
        raise DCPError(f"importance key '{unknown[0]}' {what} ({len(unknown)} unmatched keys)")
