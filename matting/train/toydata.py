"""A tiny random matting dataset for smoke runs and tests (no files; not for real training).

Each sample is a soft ellipse of foreground colour over a background colour with noise, its
trimap the 0.5 band where alpha is neither 0 nor 1 (widened a little). Deterministic per
index and seed.

>>> s = RandomMattes(4, size=32)[0]
>>> sorted(s), tuple(s["image"].shape), sorted(s["trimap"].unique().tolist())
(['alpha', 'bg', 'fg', 'image', 'trimap'], (3, 32, 32), [0.0, 0.5, 1.0])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class RandomMattes(Dataset):
    def __init__(self, n: int = 8, size: int = 32, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        s = self.size
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        cy, cx, ry, rx = (torch.rand(4, generator=g) * torch.tensor([0.6, 0.6, 0.4, 0.4]) +
                          torch.tensor([-0.3, -0.3, 0.3, 0.3]))
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        alpha = ((1.2 - r) / 0.4).clamp(0, 1)[None]
        fg = (torch.rand(3, 1, 1, generator=g) + 0.1 * torch.randn(3, s, s, generator=g)).clamp(0, 1)
        bg = (torch.rand(3, 1, 1, generator=g) + 0.1 * torch.randn(3, s, s, generator=g)).clamp(0, 1)
        image = alpha * fg + (1 - alpha) * bg
        unknown = ((alpha > 0) & (alpha < 1)).float()[None]
        unknown = F.max_pool2d(unknown, 3, 1, 1)[0]  # widen the band by one pixel
        trimap = torch.where(unknown > 0, torch.tensor(0.5), (alpha >= 1).float())
        return {"image": image, "trimap": trimap, "alpha": alpha, "fg": fg, "bg": bg}
