"""Group-aware sparsity of the pruning stage (network slimming on BN gammas;
docs/method.md#sparsity).

Only the BNs the compiler can prune are penalised: the "norm" members of non-frozen channel
groups (``passes.channel_groups``). After ``backward`` the L1 subgradient is added,
``grad(gamma) += lambda * sign(gamma)``, with lambda_enc = 1e-4 for encoder BNs (module name
``down*``) and lambda_dec = 1e-5 for decoder BNs (``up*``). Their beta is frozen at 0 so a
zero-gamma channel outputs exactly 0, and gamma may start at 0.5.

>>> import torch, matting
>>> model = matting.dim(width=0.125)
>>> names = prunable_norms(model, torch.zeros(1, 4, 32, 32))
>>> "up1.conv.cbr_unit.1" in names, "down1.conv1.cbr_unit.1" in names
(False, True)
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

import passes
from passes.errors import DCPError


def prunable_norms(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Qualified names of the BN layers whose channels the compiler may remove."""
    gm = passes.trace(model, example)
    names = []
    for group in passes.channel_groups(gm):
        if group.frozen is None:
            names += [m.module for m in group.members if m.kind == "norm"]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(set(names), key=lambda n: order.get(n, len(order)))


def lambda_for(name: str, lambda_enc: float, lambda_dec: float,
               encoder: Sequence[str] = ("down*",), decoder: Sequence[str] = ("up*",)) -> float:
    """The sparsity weight of one BN by its module name (glob patterns)."""
    if any(fnmatch.fnmatchcase(name, p) for p in encoder):
        return lambda_enc
    if any(fnmatch.fnmatchcase(name, p) for p in decoder):
        return lambda_dec
    raise DCPError(f"BN '{name}' matches neither encoder {list(encoder)} nor decoder {list(decoder)} patterns")


class Sparsity:
    """The L1 subgradient on chosen BN gammas; call :meth:`apply` between backward and step."""

    def __init__(self, model: nn.Module, names: Iterable[str], lambda_enc: float = 1e-4, lambda_dec: float = 1e-5,
                 encoder: Sequence[str] = ("down*",), decoder: Sequence[str] = ("up*",)):
        self.terms: list[tuple[str, nn.BatchNorm2d, float]] = []
        for name in names:
            bn = model.get_submodule(name)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.weight is None:
                raise DCPError(f"'{name}' is not an affine BatchNorm")
            self.terms.append((name, bn, lambda_for(name, lambda_enc, lambda_dec, encoder, decoder)))

    @torch.no_grad()
    def apply(self) -> None:
        for _, bn, lam in self.terms:
            if lam == 0:
                continue
            g = bn.weight
            if g.grad is None:
                g.grad = torch.zeros_like(g)
            g.grad.add_(torch.sign(g), alpha=lam)

    @torch.no_grad()
    def penalty(self) -> float:
        """``sum lambda * |gamma|``: the value of the term whose subgradient :meth:`apply` adds."""
        return float(sum(lam * bn.weight.abs().sum() for _, bn, lam in self.terms))


@torch.no_grad()
def prepare_student(model: nn.Module, names: Iterable[str], gamma_init: float | None = 0.5,
                    freeze_beta: bool = True) -> None:
    """Pruning-stage BN setup: gamma := gamma_init (if given), beta := 0 and frozen."""
    for name in names:
        bn = model.get_submodule(name)
        if gamma_init is not None:
            bn.weight.fill_(gamma_init)
        if freeze_beta:
            bn.bias.zero_()
            bn.bias.requires_grad_(False)


def bn_importance(state: nn.Module | Mapping[str, torch.Tensor], names: Iterable[str] | None = None
                  ) -> dict[str, torch.Tensor]:
    """``{BN module name: |gamma|}`` of a sparse student (module or state_dict): the scores
    ``compiler.compile(importance=...)`` takes. ``names`` limits it (default: every BN).

    A BN is recognised in a state_dict by having ``weight``, ``bias``, ``running_mean``.
    """
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    found = {k.removesuffix(".running_mean") for k in sd if k.endswith(".running_mean")}
    wanted = set(names) if names is not None else found
    missing = wanted - found
    if missing:
        raise DCPError(f"checkpoint has no BN {sorted(missing)[:3]}")
    return {n: sd[f"{n}.weight"].detach().abs().float().cpu() for n in sorted(wanted) if f"{n}.weight" in sd}


def importance_from_checkpoint(path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """``{BN name: |gamma|}`` of a pruning-stage checkpoint (``dcp train prune``'s best.pt):
    only its penalised BNs (``prunable``), or every BN of a plain state_dict."""
    from .checkpoint import extract_state_dict, read_torch_file
    obj = read_torch_file(path, trust_pickle=trust_pickle)
    names = obj.get("prunable") if isinstance(obj, Mapping) else None
    scores = bn_importance(extract_state_dict(obj), names)
    if not scores:
        raise DCPError(f"{path} has no BatchNorm layers to read gammas from")
    return scores
