"""The reshape-family patterns as real projects write them, a float64 masked reference that
knows where each node's channels are, and random small graphs mixing the patterns.

Patterns: RVM's ConvGRU (``split(self.channels, dim=1)``), a YOLO C2f/CSP block (``chunk(2, 1)``
and ``split((c, c), 1)``), a ResNeXt bottleneck (grouped 3x3), ShuffleNet v1 units (grouped 1x1
+ channel shuffle, computed or literal sizes), a ConvNeXt block (channels-last LayerNorm / Linear
/ GELU / Linear / ``gamma * x``), a channels-last MLP without a norm, a generator head
(``fc(z).view(-1, C, 4, 4)`` -> ConvTranspose2d) and flatten-into-Linear classifiers.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from passes.verify import verify


# --- the patterns ---------------------------------------------------------------------------------
class ConvGRU(nn.Module):
    """Robust Video Matting's recurrent decoder cell (model/decoder.py), one frame."""

    def __init__(self, channels, kernel_size=3, padding=1):
        super().__init__()
        self.channels = channels
        self.ih = nn.Sequential(nn.Conv2d(channels * 2, channels * 2, kernel_size, padding=padding), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(channels * 2, channels, kernel_size, padding=padding), nn.Tanh())

    def forward(self, x, h):
        r, z = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
        c = self.hh(torch.cat([x, r * h], dim=1))
        h = (1 - z) * h + z * c
        return h


class GRUNet(nn.Module):
    """RVM's BottleneckBlock: half the channels through the GRU (``split(..., dim=-3)``)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.hidden = nn.Sequential(nn.Conv2d(3, c // 2, 3, padding=1), nn.Tanh())
        self.gru = ConvGRU(c // 2)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, img):
        x, r = self.stem(img), self.hidden(img)
        a, b = x.split(self.gru.channels, dim=-3)
        b = self.gru(b, r)
        return self.head(torch.cat([a, b], dim=-3))


class C2f(nn.Module):
    """YOLOv8's C2f (CSP with two convs): ``chunk(2, 1)`` or ``split((c, c), 1)``."""

    def __init__(self, c1=8, c2=12, n=1, use_split=False):
        super().__init__()
        self.c, self.use_split = c2 // 2, use_split
        self.cv1 = nn.Sequential(nn.Conv2d(c1, 2 * self.c, 1, bias=False), nn.BatchNorm2d(2 * self.c), nn.SiLU())
        self.cv2 = nn.Sequential(nn.Conv2d((2 + n) * self.c, c2, 1, bias=False), nn.BatchNorm2d(c2), nn.SiLU())
        self.m = nn.ModuleList(nn.Sequential(nn.Conv2d(self.c, self.c, 3, padding=1), nn.BatchNorm2d(self.c), nn.SiLU())
                               for _ in range(n))

    def forward(self, x):
        y = self.cv1(x)
        a, b = y.split((self.c, self.c), 1) if self.use_split else y.chunk(2, 1)
        ys = [a, b]
        for m in self.m:
            ys.append(m(ys[-1]) + ys[-1])
        return self.cv2(torch.cat(ys, 1))


class ResNeXtBlock(nn.Module):
    """torchvision's Bottleneck with groups (resnext50_32x4d), width ``groups * width_per_group``."""

    def __init__(self, c=16, groups=4, width_per_group=4):
        super().__init__()
        w = groups * width_per_group
        self.conv1, self.bn1 = nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, w, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(w)
        self.conv3, self.bn3 = nn.Conv2d(w, c, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + x)


def channel_shuffle(x, groups: int):
    """torchvision.models.shufflenetv2.channel_shuffle, verbatim."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, residual. With
    ``literal`` the shuffle is written with the channel count as Python ints."""

    def __init__(self, c=24, mid=12, groups=3, literal=False, permute=False, grouped_out=True):
        super().__init__()
        self.groups, self.mid, self.literal, self.permute = groups, mid, literal, permute
        self.g1 = nn.Sequential(nn.Conv2d(c, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.g2 = nn.Sequential(nn.Conv2d(mid, c, 1, groups=groups if grouped_out else 1, bias=False),
                                nn.BatchNorm2d(c))

    def shuffle(self, x):
        if not self.literal:
            return channel_shuffle(x, self.groups)
        b, _, h, w = x.shape
        if self.permute:
            x = x.reshape(b, self.groups, self.mid // self.groups, h, w).permute(0, 2, 1, 3, 4)
            return x.reshape(b, self.mid, h, w)
        return x.view(b, self.groups, self.mid // self.groups, h, w).transpose(1, 2).contiguous().view(b, self.mid, h, w)

    def forward(self, x):
        return F.relu(x + self.g2(self.dw(self.shuffle(self.g1(x)))))


class ConvNeXtBlock(nn.Module):
    """facebookresearch/ConvNeXt's Block (channels-last LayerNorm, layer scale ``gamma``)."""

    def __init__(self, dim=8, layer_scale_init_value=1e-1, norm=True):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm else nn.Identity()
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.rand(dim)) if norm else None

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return input + x


class Generator(nn.Module):
    """A DCGAN-style head: features folded into channels, ``fc(z).view(-1, C, 4, 4)``."""

    def __init__(self, nz=8, c=16):
        super().__init__()
        self.c = c
        self.fc = nn.Linear(nz, c * 4 * 4)
        self.up = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.ConvTranspose2d(c, c // 2, 4, 2, 1),
                                nn.BatchNorm2d(c // 2), nn.ReLU(), nn.Conv2d(c // 2, 1, 3, padding=1))

    def forward(self, z):
        return self.up(self.fc(z).view(-1, self.c, 4, 4))


class Classifier(nn.Module):
    """conv features into a Linear head, flattened four common ways."""

    def __init__(self, how="module", c=6):
        super().__init__()
        self.how, self.c = how, c
        self.features = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(5))
        self.flatten = nn.Flatten()
        self.fc = nn.Sequential(nn.Linear(c * 5 * 5, 10), nn.ReLU(), nn.Linear(10, 2))

    def forward(self, x):
        x = self.features(x)
        if self.how == "module":
            x = self.flatten(x)
        elif self.how == "function":
            x = torch.flatten(x, 1)
        elif self.how == "size":
            x = x.view(x.size(0), -1)
        else:  # LeNet: the feature count as a literal
            x = x.view(-1, self.c * 5 * 5)
        return self.fc(x)


# --- float64 masked reference -------------------------------------------------------------------
def masked_error(compact: nn.Module, keep_map, inputs: tuple) -> float:
    """max |compact - masked original| / max |masked original|, float64 (``passes.verify``:
    dropped channels zeroed wherever they lie, boxes of channel dims included)."""
    return verify(compact, keep_map, inputs).masked_rel


def randomize_bn(model: nn.Module, gen: torch.Generator | None = None) -> nn.Module:
    """Random BN statistics and affine (defaults hide wrong slicing)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.2, 1.5, generator=gen)
                m.bias.normal_(0, 0.5, generator=gen)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.3, 2.0, generator=gen)
    return model.eval()


# --- random graphs ---------------------------------------------------------------------------------
class RandomShapeNet(nn.Module):
    """A chain of pattern blocks on (N, C, 8, 8), C changing only where a block says so."""

    def __init__(self, blocks: list[tuple[str, nn.Module]]):
        super().__init__()
        self.kinds = [k for k, _ in blocks]
        self.blocks = nn.ModuleList(m for _, m in blocks)

    def forward(self, x):
        for kind, block in zip(self.kinds, self.blocks):
            if kind == "chunk":
                a, b = block[0](x).chunk(2, dim=1)
                x = torch.cat([block[1](a), b], 1)
            elif kind == "split":
                a, b = block[0](x).split([block[2], block[3]], dim=1)
                x = torch.cat([b, block[1](a)], 1)
            elif kind == "fold":  # through a Linear on the flattened features and back
                n, c, h, w = x.shape
                x = block(x.flatten(1)).view(n, -1, h, w)
            else:
                x = block(x)
        return x


@st.composite
def random_shape_nets(draw, max_blocks: int = 4):
    """(model, input): a stem conv, then blocks drawn from the reshape-family patterns."""
    c = draw(st.sampled_from([6, 12]))
    blocks = [("mod", nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()))]
    for _ in range(draw(st.integers(1, max_blocks))):
        divisors = [g for g in (2, 3) if c % g == 0]
        kinds = ["convnext", "mlp", "fold", "resnext"] + (["grouped", "shuffle"] if divisors else []) \
            + (["chunk"] if c % 2 == 0 else []) + (["split"] if c >= 2 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "grouped":
            g = draw(st.sampled_from(divisors))
            out = g * draw(st.integers(1, 3))
            blocks.append(("mod", nn.Sequential(nn.Conv2d(c, out, 3, padding=1, groups=g), nn.BatchNorm2d(out))))
            c = out
        elif kind == "shuffle":
            blocks.append(("mod", ShuffleUnit(c, mid=c, groups=draw(st.sampled_from(divisors)), literal=draw(st.booleans()),
                                              permute=draw(st.booleans()), grouped_out=draw(st.booleans()))))
        elif kind == "chunk":
            blocks.append(("chunk", _Parts(nn.Conv2d(c, c, 1), nn.Sequential(
                nn.Conv2d(c // 2, c // 2, 3, padding=1), nn.BatchNorm2d(c // 2), nn.ReLU()))))
        elif kind == "split":
            a = draw(st.integers(1, c - 1))
            blocks.append(("split", _Parts(nn.Conv2d(c, c, 1), nn.Conv2d(a, a, 1), a, c - a)))
        if kind in ("chunk", "split"):
            # a cat tied by a later residual add can leave one producer of the cat with no channel
            # (a known limitation of min_channels per group, split or not): fuse the pieces first
            blocks.append(("mod", nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))))
        elif kind == "convnext":
            blocks.append(("mod", ConvNeXtBlock(c)))
        elif kind == "mlp":
            blocks.append(("mod", ConvNeXtBlock(c, norm=False)))
        elif kind == "fold":
            blocks.append(("fold", nn.Linear(c * 8 * 8, c * 8 * 8)))
        else:
            blocks.append(("mod", ResNeXtBlock(c, groups=2, width_per_group=draw(st.integers(1, 3)))))
    blocks.append(("mod", nn.Conv2d(c, 2, 1)))
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    return randomize_bn(RandomShapeNet(blocks)), torch.randn(2, 3, 8, 8)


class _Parts(nn.Module):
    """Indexable parts of a split block: modules, then the piece sizes."""

    def __init__(self, *parts):
        super().__init__()
        self.mods = nn.ModuleList(p for p in parts if isinstance(p, nn.Module))
        self.parts = parts

    def __getitem__(self, i):
        p = self.parts[i]
        return self.mods[i] if isinstance(p, nn.Module) else p


__all__ = ["ConvGRU", "GRUNet", "C2f", "ResNeXtBlock", "ShuffleUnit", "ConvNeXtBlock", "Generator", "Classifier",
           "Masked", "masked_error", "randomize_bn", "random_shape_nets", "channel_shuffle"]
