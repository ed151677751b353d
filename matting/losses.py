"""Losses of both DCP stages (docs/method.md#losses): alpha loss, SPKD distillation, composition.

Total loss of the pruning and the training stage: ``L_gt + L_ts + KD`` (all weights 1), where
``L_gt = alpha_loss(student, gt, m)``, ``L_ts = alpha_loss(student, teacher, m)`` and KD is
:func:`spkd_loss`, SUMMED over the tapped layers (the public code's ``loss =`` bug, which
keeps only down5, is not copied). The sparsity term is a subgradient, see ``matting.sparsity``.

>>> import torch
>>> p, g, m = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
>>> round(alpha_loss(p, g, m).item(), 4)
0.5
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

EPS = 1e-6          # alpha loss epsilon (the Charbonnier term)
NORM_EPS = 1e-7     # SPKD normalisation epsilon (as the public SPKD code)


def unknown_mask(trimap: torch.Tensor) -> torch.Tensor:
    """1 where the trimap is unknown (0.5 in [0, 1] units, i.e. 128/255), else 0."""
    return ((trimap > 0.25) & (trimap < 0.75)).to(trimap.dtype)


def alpha_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``sum(sqrt(((p - g) * m)^2 + eps^2)) / (sum(m) + eps)`` over the whole batch."""
    diff = (pred - gt) * mask
    return torch.sqrt(diff * diff + eps * eps).sum() / (mask.sum() + eps)


def composition_loss(pred: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, image: torch.Tensor,
                     mask: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """DIM's compositional loss (optional; DCP does not use it): the alpha-composite of the true
    fg/bg with the predicted alpha against the image, over the unknown region of every channel.
    ``fg``, ``bg``, ``image`` are (B, 3, H, W) in [0, 1]; ``pred``, ``mask`` (B, 1, H, W)."""
    comp = pred * fg + (1 - pred) * bg
    diff = (comp - image) * mask
    return torch.sqrt(diff * diff + eps * eps).sum() / (mask.sum() * image.shape[1] + eps)


def _flat(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(f.shape[0], f.shape[1], -1).float()


def _normalise(f: torch.Tensor, dim: int) -> torch.Tensor:
    return f / (f.norm(dim=dim, keepdim=True) + NORM_EPS)


def spatial_similarity(f: torch.Tensor) -> torch.Tensor:
    """S = F^T F of position-normalised features: (B, HW, HW). Quadratic in HW: tests only."""
    fn = _normalise(_flat(f), dim=1)
    return fn.transpose(1, 2) @ fn


def channel_similarity(f: torch.Tensor) -> torch.Tensor:
    """G = F F^T of channel-normalised features: (B, C, C)."""
    fn = _normalise(_flat(f), dim=2)
    return fn @ fn.transpose(1, 2)


def spatial_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """``mean((S_t - S_s)^2)`` without the HW x HW matrices.

    With A = normalised teacher (B, Ct, N) and S the student's (B, Cs, N):
    ``sum_ij (A^T A - S^T S)_ij^2 = ||A A^T||^2 - 2 ||A S^T||^2 + ||S S^T||^2`` (Frobenius),
    exact, in O(C^2) memory instead of O(N^2): the down2 matrix at 320 input is 6400 x 6400
    per image, its Gram form 128 x 128. The student may be narrower than the teacher.
    """
    if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ValueError(f"spatial term needs equal batch and HW, got {tuple(fs.shape)} vs {tuple(ft.shape)}")
    with torch.autocast(device_type=fs.device.type, enabled=False):
        # float64: the three terms are ~N^2 each and cancel down to N^2 * loss; in float32 a
        # loss of 1e-6 would come out 4 % off, 1e-8 several times off. The matrices are C x C,
        # so double precision costs little (about 3 GFLOP per 320 x 320 image at full width).
        a, s = _normalise(_flat(ft), dim=1).double(), _normalise(_flat(fs), dim=1).double()
        n = a.shape[2]
        total = (_sq(a @ a.transpose(1, 2)) - 2 * _sq(a @ s.transpose(1, 2)) + _sq(s @ s.transpose(1, 2)))
        # clamp: rounding can push an exactly-zero difference a hair below 0
        return (total.clamp_min(0).sum() / (a.shape[0] * n * n)).float()


def _sq(m: torch.Tensor) -> torch.Tensor:
    return (m * m).sum(dim=(1, 2))


def spatial_loss_direct(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """The textbook form of :func:`spatial_loss` (builds HW x HW): the reference for tests."""
    return (spatial_similarity(ft) - spatial_similarity(fs)).pow(2).mean()


def channel_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """``mean((G_t - G_s)^2)``; needs equal channel counts (adapt the student first)."""
    if fs.shape[1] != ft.shape[1]:
        raise ValueError(f"channel term needs equal widths, got {fs.shape[1]} vs {ft.shape[1]}: use adapters")
    with torch.autocast(device_type=fs.device.type, enabled=False):
        return (channel_similarity(ft) - channel_similarity(fs)).pow(2).mean()


def make_adapters(student_widths: Sequence[int], teacher_widths: Sequence[int]) -> nn.ModuleList:
    """Bias-free 1x1 convs student -> teacher width for the channel term (Identity where equal)."""
    return nn.ModuleList(nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1, bias=False)
                         for cs, ct in zip(student_widths, teacher_widths))


def spkd_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
              weights: tuple[float, float] = (1.0, 1.0), adapters: Sequence[nn.Module] | None = None
              ) -> torch.Tensor:
    """SPKD: ``sum over layers of w0 * spatial + w1 * channel``.

    ``adapters[i]`` maps the student's layer i to the teacher's width for the channel term
    (the spatial term compares HW x HW matrices and needs none). Teacher features are
    treated as constants.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"need the same non-zero number of layers, got {len(student_feats)} and {len(teacher_feats)}")
    w0, w1 = weights
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        ft = ft.detach()
        if w0:
            total = total + w0 * spatial_loss(fs, ft)
        if w1:
            fa = adapters[i](fs) if adapters is not None else fs
            total = total + w1 * channel_loss(fa, ft)
    return total
