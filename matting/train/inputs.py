"""The network input and the batch protocol every training stage reads.

A batch is a dict: ``image`` (B, 3, H, W) in [0, 1], ``trimap`` (B, 1, H, W) in {0, 0.5, 1},
``alpha`` (B, 1, H, W) in [0, 1]; optionally ``fg``/``bg`` (B, 3, H, W) for the compositional
loss. The network sees ImageNet-normalised RGB plus the trimap (docs/method.md#teacher).

>>> import torch
>>> x = make_input(torch.zeros(1, 3, 4, 4), torch.full((1, 1, 4, 4), 0.5))
>>> tuple(x.shape), round(x[0, 0, 0, 0].item(), 3), x[0, 3, 0, 0].item()
((1, 4, 4, 4), -2.118, 0.5)
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from passes.errors import DCPError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REQUIRED = ("image", "trimap", "alpha")


def make_input(image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] + (B, 1, H, W) trimap in [0, 1] -> the (B, 4, H, W) DIM input."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return torch.cat([(image - mean) / std, trimap], dim=1)


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch (as float32) to ``device``; check the protocol once here."""
    missing = [k for k in REQUIRED if k not in batch]
    if missing:
        raise DCPError(f"dataset samples lack {missing}: expected keys {list(REQUIRED)}")
    return {k: v.to(device, dtype=torch.float32, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}
