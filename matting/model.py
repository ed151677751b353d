"""The Deep Image Matting teacher (its common PyTorch form; docs/method.md#teacher).

Module names match the public checkpoint (``down1.conv1.cbr_unit.0.weight`` ...), so its
state_dict loads with ``strict=True``. Widths are data: ``dim(width=0.25)`` scales every
internal width, ``dim(widths={...})`` sets any of them explicitly.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

# (block name, number of convs, default output width) of the VGG16 encoder.
ENCODER = (("down1", 2, 64), ("down2", 2, 128), ("down3", 3, 256), ("down4", 3, 512), ("down5", 3, 512))
DECODER = ("up5", "up4", "up3", "up2", "up1")
# The distillation taps: encoder features after ReLU and pool (docs/method.md#losses).
TAP_MODULES = ("down2.maxpool_with_argmax", "down3.maxpool_with_argmax",
               "down4.maxpool_with_argmax", "down5.maxpool_with_argmax")


def default_widths(width: float = 1.0) -> dict[str, int]:
    """Output width of every conv, keyed ``down1.conv1`` ... ``up2.conv`` (up1 is the 1-channel output)."""
    widths: dict[str, int] = {}
    for block, n_convs, channels in ENCODER:
        for i in range(1, n_convs + 1):
            widths[f"{block}.conv{i}"] = max(1, round(channels * width))
    # Each decoder stage outputs the width of the encoder stage it unpools into next.
    widths["up5.conv"] = widths["down4.conv3"]
    widths["up4.conv"] = widths["down3.conv3"]
    widths["up3.conv"] = widths["down2.conv2"]
    widths["up2.conv"] = widths["down1.conv2"]
    return widths


class CBR(nn.Module):
    """Conv2d(bias) -> BatchNorm2d -> optional ReLU, stored as ``cbr_unit`` like the public code."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, relu: bool = True):
        super().__init__()
        layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=True), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.cbr_unit = nn.Sequential(*layers)

    def forward(self, x):
        return self.cbr_unit(x)


class Down(nn.Module):
    """2 or 3 conv-bn-relu then a 2x2 max-pool that returns its indices and the pre-pool size."""

    def __init__(self, cin: int, couts: list[int]):
        super().__init__()
        for i, cout in enumerate(couts, start=1):
            self.add_module(f"conv{i}", CBR(cin, cout))
            cin = cout
        self.n_convs = len(couts)
        self.maxpool_with_argmax = nn.MaxPool2d(2, 2, return_indices=True)

    def forward(self, x):
        for i in range(1, self.n_convs + 1):
            x = getattr(self, f"conv{i}")(x)
        unpooled_shape = x.size()
        x, indices = self.maxpool_with_argmax(x)
        return x, indices, unpooled_shape


class Up(nn.Module):
    """Max-unpool with the encoder's indices, then a 5x5 conv + BN with no ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.conv = CBR(cin, cout, kernel=5, relu=False)

    def forward(self, x, indices, output_shape):
        x = self.unpool(x, indices, output_size=output_shape)
        return self.conv(x)


class DIM(nn.Module):
    """DIM encoder-decoder: (N, 4, H, W) RGB-normalised + trimap/255 -> alpha (N, 1, H, W) in [0, 1]."""

    def __init__(self, widths: Mapping[str, int] | None = None, in_channels: int = 4):
        super().__init__()
        w = dict(default_widths())
        unknown = set(widths or {}) - set(w)
        if unknown:
            raise ValueError(f"unknown layer widths {sorted(unknown)}; known: {sorted(w)}")
        w.update(widths or {})
        self.widths = w
        self.in_channels = in_channels
        cin = in_channels
        for block, n_convs, _ in ENCODER:
            couts = [w[f"{block}.conv{i}"] for i in range(1, n_convs + 1)]
            self.add_module(block, Down(cin, couts))
            cin = couts[-1]
        self.up5 = Up(w["down5.conv3"], w["up5.conv"])
        self.up4 = Up(w["up5.conv"], w["up4.conv"])
        self.up3 = Up(w["up4.conv"], w["up3.conv"])
        self.up2 = Up(w["up3.conv"], w["up2.conv"])
        self.up1 = Up(w["up2.conv"], 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        x1, i1, s1 = self.down1(x)
        x2, i2, s2 = self.down2(x1)
        x3, i3, s3 = self.down3(x2)
        x4, i4, s4 = self.down4(x3)
        x5, i5, s5 = self.down5(x4)
        x = self.up5(x5, i5, s5)
        x = self.up4(x, i4, s4)
        x = self.up3(x, i3, s3)
        x = self.up2(x, i2, s2)
        x = self.up1(x, i1, s1)
        return self.sigmoid(x)


def dim(width: float = 1.0, widths: Mapping[str, int] | None = None, in_channels: int = 4) -> DIM:
    """Build the DIM teacher (random init). ``width`` scales every internal width;
    ``widths`` overrides single layers, e.g. ``{"down1.conv1": 32}``.

    >>> sum(p.numel() for p in dim().parameters())
    25582595
    """
    if not 0 < width <= 4:
        raise ValueError(f"width must be in (0, 4], got {width}")
    w = default_widths(width)
    w.update(widths or {})
    return DIM(w, in_channels=in_channels)
