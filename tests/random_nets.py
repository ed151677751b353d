"""Random small CNNs for property tests: conv / bn / activations / pool-with-indices / unpool /
residual add / concat / squeeze-excitation gates / depthwise convs, in any order."""
from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Hardswish, nn.LeakyReLU, lambda: nn.PReLU())


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
            elif op == "unpool":
                idx, size = pools[j]
                v = self.layers[m](cur, idx, output_size=size)
            elif op == "add":
                v = cur + vals[j]
            elif op == "cat":
                v = torch.cat([cur, vals[j]], 1)
            elif op == "se":
                v = cur * self.layers[m](cur)
            vals.append(v)
        return vals[-1]


@st.composite
def random_nets(draw, max_steps: int = 10, side: int = 8):
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
        op = draw(st.sampled_from(["conv", "bn", "act", "pool", "unpool", "add", "cat", "se", "dw", "plainpool"]))
        if op == "conv":
            conv_to(draw(st.integers(2, 8)), draw(st.sampled_from([1, 3])))
        elif op == "bn":
            add_module(nn.BatchNorm2d(c))
        elif op == "act":
            add_module(draw(st.sampled_from(ACTIVATIONS))())
        elif op == "dw":
            add_module(nn.Conv2d(c, c, 3, padding=1, groups=c))
        elif op == "pool" and h % 2 == 0:
            add_module(nn.MaxPool2d(2, 2, return_indices=True), "pool", shape=(c, h // 2))
            pools[len(shapes) - 1] = ((c, h // 2), (c, h))
        elif op == "plainpool" and h % 2 == 0:
            add_module(draw(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]))(2, 2), shape=(c, h // 2))
        elif op == "unpool" and pools:
            j = draw(st.sampled_from(sorted(pools)))
            (pc, ph), out_shape = pools[j]
            if ph != h:
                continue
            if c != pc:
                conv_to(pc)
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
    """Random BN statistics and affine so masking and slicing errors cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(1, generator=g))
