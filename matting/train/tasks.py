"""What one training step computes, as modules whose ``forward(batch)`` returns the losses.

Wrapping the loss computation in a module lets DDP wrap it whole (student and 1x1 adapters
are its trainable parameters). The teacher is held outside the parameter tree (frozen,
eval mode, no grad) so DDP neither syncs nor checkpoints it.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .. import losses
from ..taps import FeatureTaps, tap_widths
from .inputs import make_input


class AlphaTask(nn.Module):
    """Teacher training: ``w_gt * L_a(pred, gt) + w_comp * L_comp`` (DIM from scratch)."""

    def __init__(self, student: nn.Module, w_gt: float = 1.0, w_comp: float = 0.0):
        super().__init__()
        self.student = student
        self.adapters = None
        self.w_gt, self.w_comp = w_gt, w_comp

    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.student(make_input(batch["image"], batch["trimap"])).float()

    def alpha_terms(self, pred: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mask = losses.unknown_mask(batch["trimap"])
        terms = {"l_gt": losses.alpha_loss(pred, batch["alpha"], mask)}
        if self.w_comp:
            if "fg" not in batch or "bg" not in batch:
                raise ValueError("w_comp > 0 needs 'fg' and 'bg' in the dataset samples")
            terms["l_comp"] = losses.composition_loss(pred, batch["fg"], batch["bg"], batch["image"], mask)
        return terms

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms = self.alpha_terms(self.predict(batch), batch)
        terms["loss"] = self.w_gt * terms["l_gt"] + self.w_comp * terms.get("l_comp", 0.0)
        return terms

    @torch.no_grad()
    def val_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The validation criterion of every stage: L_gt of the student."""
        mask = losses.unknown_mask(batch["trimap"])
        return losses.alpha_loss(self.predict(batch), batch["alpha"], mask)


class DistillTask(AlphaTask):
    """Pruning and training stage: ``L_gt + L_ts + SPKD`` (the sparsity subgradient is added
    by the trainer after backward). Adapters are built where student and teacher widths differ."""

    def __init__(self, student: nn.Module, teacher: nn.Module, taps: Sequence[str], example: torch.Tensor,
                 w_gt: float = 1.0, w_ts: float = 1.0, kd_spatial: float = 1.0, kd_channel: float = 1.0,
                 w_comp: float = 0.0):
        super().__init__(student, w_gt, w_comp)
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: no DDP sync, not in the checkpoint
        self.w_ts, self.kd = w_ts, (kd_spatial, kd_channel)
        self.student_taps = FeatureTaps(student, taps)
        self.teacher_taps = FeatureTaps(teacher, taps)
        ws, wt = tap_widths(student, taps, example), tap_widths(teacher, taps, example)
        self.adapters = losses.make_adapters(ws, wt) if ws != wt and kd_channel else None

    def close(self) -> None:
        """Remove the feature hooks (the teacher outlives this task)."""
        self.student_taps.remove()
        self.teacher_taps.remove()

    def _apply(self, fn, *args, **kwargs):
        self.teacher._apply(fn, *args, **kwargs)  # .to(device) moves the teacher too
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = make_input(batch["image"], batch["trimap"])
        with torch.no_grad():
            alpha_t = self.teacher(x).float()
            feats_t = self.teacher_taps.features
        pred = self.student(x).float()
        feats_s = self.student_taps.features
        terms = self.alpha_terms(pred, batch)
        mask = losses.unknown_mask(batch["trimap"])
        terms["l_ts"] = losses.alpha_loss(pred, alpha_t, mask)
        terms["kd"] = losses.spkd_loss(feats_s, feats_t, self.kd, self.adapters)
        terms["loss"] = (self.w_gt * terms["l_gt"] + self.w_ts * terms["l_ts"] + terms["kd"]
                         + self.w_comp * terms.get("l_comp", 0.0))
        return terms
