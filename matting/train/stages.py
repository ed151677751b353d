"""The three training stages as functions over plain modules (the CLI loads models/artifacts).

- :func:`train_teacher`: DIM from scratch (or whatever init the caller gave it), L_gt (+ L_comp).
- :func:`train_prune`: the pruning stage. Student = the teacher's architecture, initialised
  at random (the paper) or from the teacher; prunable BNs get gamma := gamma_init and beta
  frozen at 0; loss L_gt + L_ts + SPKD plus the group-aware sparsity subgradient.
- :func:`train_finetune`: the training stage on a compiled (compact) student, distilled from
  the teacher; init inherited (weights in the artifact) or from scratch (the paper).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..model import DIM, TAP_MODULES
from ..sparsity import Sparsity, prepare_student, prunable_norms
from .loop import Trainer, seed_everything
from .tasks import AlphaTask, DistillTask


def reset_parameters(model: nn.Module, gamma_init: float | None = None) -> nn.Module:
    """Re-initialise every module that knows how (convs, BNs ...); BN gamma := gamma_init if given."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
        if gamma_init is not None and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.fill_(gamma_init)
    return model


def _meta(model: nn.Module, stage: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"stage": stage, **extra}
    if isinstance(model, DIM):  # lets load_dim / --model read best.pt and last.pt
        meta.update(arch="dim", widths=dict(model.widths))
    return meta


def _distill_kwargs(cfg: dict[str, Any]) -> dict[str, float]:
    return {k: cfg[k] for k in ("w_gt", "w_ts", "kd_spatial", "kd_channel", "w_comp")}


def train_teacher(model: nn.Module, train_set: Dataset, val_set: Dataset | None, cfg: dict[str, Any],
                  out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train a matting network on L_gt (+ w_comp * compositional loss)."""
    task = AlphaTask(model, cfg["w_gt"], cfg["w_comp"])
    return Trainer(task, cfg, out, meta=_meta(model, "teacher")).fit(train_set, val_set, resume)


def make_sparse_student(teacher: nn.Module, example: torch.Tensor, cfg: dict[str, Any]) -> tuple[nn.Module, Sparsity]:
    """The pruning-stage student: a copy of the teacher's architecture, BNs set up for slimming."""
    seed_everything(cfg["seed"])
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    if cfg["init"] == "random":
        reset_parameters(student)
    names = prunable_norms(student, example)
    prepare_student(student, names, cfg["gamma_init"], cfg["freeze_beta"])
    sparsity = Sparsity(student, names, cfg["lambda_enc"], cfg["lambda_dec"], cfg["encoder"], cfg["decoder"])
    return student, sparsity


def train_prune(teacher: nn.Module, train_set: Dataset, val_set: Dataset | None, cfg: dict[str, Any],
                out: str | Path, example: torch.Tensor, resume: bool = False,
                taps: tuple[str, ...] = TAP_MODULES) -> tuple[nn.Module, dict[str, Any]]:
    """Run the pruning stage; returns the sparse student (last epoch) and the fit summary.
    ``out/best.pt`` holds the best sparse student, its gammas are the compiler's importance."""
    student, sparsity = make_sparse_student(teacher, example, cfg)
    task = DistillTask(student, teacher, taps, example, **_distill_kwargs(cfg))
    meta = _meta(student, "prune", prunable=[n for n, _, _ in sparsity.terms])
    try:
        result = Trainer(task, cfg, out, after_backward=sparsity.apply, meta=meta).fit(train_set, val_set, resume)
    finally:
        task.close()
    return student, result


def train_finetune(student: nn.Module, teacher: nn.Module, train_set: Dataset, val_set: Dataset | None,
                   cfg: dict[str, Any], out: str | Path, example: torch.Tensor, resume: bool = False,
                   taps: tuple[str, ...] = TAP_MODULES) -> tuple[nn.Module, dict[str, Any]]:
    """Run the training stage on a compact student (e.g. ``compiler.load(artifact)``)."""
    seed_everything(cfg["seed"])
    student.train().requires_grad_(True)
    if cfg["init"] == "scratch":
        reset_parameters(student, cfg["gamma_init"])
    task = DistillTask(student, teacher, taps, example, **_distill_kwargs(cfg))
    try:
        result = Trainer(task, cfg, out, meta=_meta(student, "finetune")).fit(train_set, val_set, resume)
    finally:
        task.close()
    return student, result
