"""Random small CNNs for property tests: conv / bn / activations / pool-with-indices / unpool /
residual add / concat / squeeze-excitation gates / depthwise convs, in any order; with
``functional=True`` also the forms other projects write: F.conv2d / F.batch_norm on
parameters, weight-standardised convs, per-channel affine parameters, F.max_pool2d with
indices / F.max_unpool2d, F.pad over channels. Every BN and parameter is random."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Hardswish, nn.LeakyReLU, lambda: nn.PReLU())


class FConv(nn.Module):
    """A conv written functionally on its own parameters."""

    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.empty(c_out))
        self.padding = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class StdConv(FConv):
    """Weight standardisation per output channel (BiT-style)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, padding=self.padding)


class FBatchNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.empty(c)), nn.Parameter(torch.empty(c))
        self.register_buffer("running_mean", torch.empty(c))
        self.register_buffer("running_var", torch.empty(c))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-5)


class Affine(nn.Module):
    """``x * scale + shift`` with a (1, C, 1, 1) parameter and a (C, 1, 1) buffer."""

    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(1, c, 1, 1))
        self.register_buffer("shift", torch.empty(c, 1, 1))

    def forward(self, x):
        return x * self.scale + self.shift


class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(c))

    def forward(self, x):
        return self.gamma.view(1, -1, 1, 1) * x


class ChannelPad(nn.Module):
    def __init__(self, before, after, value):
        super().__init__()
        self.pad, self.value = (0, 0, 0, 0, before, after), value

    def forward(self, x):
        return F.pad(x, self.pad, value=self.value)


class RandomNet(nn.Module):
    """Interprets a program: each step reads the latest value and appends a new one."""

    def __init__(self, program: list[tuple], layers: list[nn.Module]):
        super().__init__()
        self.program = program
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        vals, pools = [x], {}
        for op, m, j in self.program:
            cur = vals[-1]
            if op == "mod":
                v = self.layers[m](cur)
            elif op == "pool":
                v, idx = self.layers[m](cur)
                pools[len(vals)] = (idx, cur.size())
            elif op == "fpool":
                v, idx = F.max_pool2d(cur, 2, 2, return_indices=True)
                pools[len(vals)] = (idx, cur.size())
            elif op == "unpool":
                idx, size = pools[j]
                v = self.layers[m](cur, idx, output_size=size)
            elif op == "funpool":
                idx, size = pools[j]
                v = F.max_unpool2d(cur, idx, 2, 2, output_size=size[2:])
            elif op == "add":
                v = cur + vals[j]
            elif op == "cat":
                v = torch.cat([cur, vals[j]], 1)
            elif op == "se":
                v = cur * self.layers[m](cur)
            vals.append(v)
        return vals[-1]


PLAIN_OPS = ["conv", "bn", "act", "pool", "unpool", "add", "cat", "se", "dw", "plainpool"]
FUNCTIONAL_OPS = ["fconv", "stdconv", "fbn", "affine", "layerscale", "fpool", "pad"]


@st.composite
def random_nets(draw, max_steps: int = 10, side: int = 8, functional: bool = False):
    layers, program = [], []
    shapes = [(3, side)]  # (channels, spatial side) of every value
    pools = {}  # value index of a pool output -> (pool's output shape, input shape)

    def add_module(m, op="mod", j=None, shape=None):
        layers.append(m)
        program.append((op, len(layers) - 1, j))
        shapes.append(shape or shapes[-1])

    def conv_to(c_out, k=1):
        add_module(nn.Conv2d(shapes[-1][0], c_out, k, padding=k // 2), shape=(c_out, shapes[-1][1]))

    conv_to(draw(st.integers(2, 6)), 3)
    for _ in range(draw(st.integers(1, max_steps))):
        c, h = shapes[-1]
        op = draw(st.sampled_from(PLAIN_OPS + (FUNCTIONAL_OPS if functional else [])))
        if op == "conv":
            conv_to(draw(st.integers(2, 8)), draw(st.sampled_from([1, 3])))
        elif op in ("fconv", "stdconv"):
            c_out = draw(st.integers(2, 8))
            cls = FConv if op == "fconv" else StdConv
            add_module(cls(c, c_out, draw(st.sampled_from([1, 3]))), shape=(c_out, h))
        elif op == "fbn":
            add_module(FBatchNorm(c))
        elif op == "affine":
            add_module(Affine(c))
        elif op == "layerscale":
            add_module(LayerScale(c))
        elif op == "pad":
            before, after = draw(st.integers(0, 2)), draw(st.integers(0, 2))
            add_module(ChannelPad(before, after, draw(st.sampled_from([0.0, 0.5]))), shape=(c + before + after, h))
        elif op == "bn":
            add_module(nn.BatchNorm2d(c))
        elif op == "act":
            add_module(draw(st.sampled_from(ACTIVATIONS))())
        elif op == "dw":
            add_module(nn.Conv2d(c, c, 3, padding=1, groups=c))
        elif op in ("pool", "fpool") and h % 2 == 0:
            if op == "pool":
                add_module(nn.MaxPool2d(2, 2, return_indices=True), "pool", shape=(c, h // 2))
            else:
                program.append(("fpool", None, None))
                shapes.append((c, h // 2))
            pools[len(shapes) - 1] = ((c, h // 2), (c, h), op == "fpool")
        elif op == "plainpool" and h % 2 == 0:
            add_module(draw(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]))(2, 2), shape=(c, h // 2))
        elif op == "unpool" and pools:
            j = draw(st.sampled_from(sorted(pools)))
            (pc, ph), out_shape, functional_pool = pools[j]
            if ph != h:
                continue
            if c != pc:
                conv_to(pc)
            if functional_pool:
                program.append(("funpool", None, j))
                shapes.append(out_shape)
            else:
                add_module(nn.MaxUnpool2d(2, 2), "unpool", j, shape=out_shape)
        elif op in ("add", "cat"):
            same_side = [i for i, s in enumerate(shapes[:-1]) if s[1] == h and i > 0]
            if not same_side:
                continue
            j = draw(st.sampled_from(same_side))
            if op == "add":
                if shapes[j][0] != c:
                    conv_to(shapes[j][0])
                program.append(("add", None, j))
                shapes.append(shapes[j])
            else:
                program.append(("cat", None, j))
                shapes.append((c + shapes[j][0], h))
        elif op == "se":
            gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(1, c // 2), 1), nn.ReLU(),
                                 nn.Conv2d(max(1, c // 2), c, 1), nn.Sigmoid())
            add_module(gate, "se")
    conv_to(1)  # the alpha head: its output reaches the graph output and stays
    net = RandomNet(program, layers)
    _randomise(net, draw(st.integers(0, 2**16)))
    return net.eval(), side


def _randomise(net: nn.Module, seed: int) -> None:
    """Random BN statistics and affine (and every functional layer's parameters), so masking
    and slicing errors cannot hide behind defaults."""
    g = torch.Generator().manual_seed(seed)

    def fill(t, low=None):
        t.copy_(torch.rand(t.shape, generator=g) + low if low is not None else torch.randn(t.shape, generator=g))

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, FBatchNorm)):
                fill(m.running_mean), fill(m.running_var, 0.5), fill(m.weight), fill(m.bias)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(1, generator=g))
            elif isinstance(m, FConv):
                fill(m.weight), fill(m.bias)
                m.weight.mul_(m.weight[0].numel() ** -0.5)
            elif isinstance(m, Affine):
                fill(m.scale, 0.5), fill(m.shift)
            elif isinstance(m, LayerScale):
                fill(m.gamma, 0.1)

def trained_looking_bn(model: nn.Module, seed: int) -> nn.Module:
    """BN statistics like a trained teacher's: the ones that made the float32 check reject correct models."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.01)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model.eval()
