"""Fold eval-mode BatchNorm2d into the Conv2d that feeds it (inference graphs only).

``bn(conv(x)) == conv'(x)`` with ``w' = w * g / sqrt(var + eps)`` per output channel and
``b' = (b - mean) * g / sqrt(var + eps) + beta``. A pair is folded only when that is exact
for the whole graph: the BN is in eval mode with running statistics, the conv module is
called once, and the conv's output has no user besides the BN.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
>>> gm = fold_bn(m)
>>> [type(c).__name__ for c in gm.children()]
['Conv2d', 'ReLU']
>>> x = torch.randn(1, 3, 8, 8)
>>> bool(torch.allclose(gm(x), m(x), atol=1e-6))
True
"""
from __future__ import annotations

import copy
from collections import Counter

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .trace import symbolic_trace


def _foldable(gm: fx.GraphModule, bn_node: fx.Node, calls: Counter) -> fx.Node | None:
    """The conv node that ``bn_node`` can be folded into, or None."""
    if bn_node.op != "call_module" or not isinstance(gm.get_submodule(bn_node.target), nn.BatchNorm2d):
        return None
    bn = gm.get_submodule(bn_node.target)
    if bn.training or bn.running_mean is None or calls[bn_node.target] != 1:
        return None
    conv_node = bn_node.args[0] if bn_node.args else None
    if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"):
        return None
    conv = gm.get_submodule(conv_node.target)
    if type(conv) is not nn.Conv2d or calls[conv_node.target] != 1 or len(conv_node.users) != 1:
        return None
    if conv.out_channels != bn.num_features:
        return None
    return conv_node


def fold_bn(model: nn.Module, inplace: bool = False) -> fx.GraphModule:
    """Fold every eligible Conv2d -> BatchNorm2d pair; the conv keeps its qualified name and
    gains a bias, the BN node and module disappear. Folded pairs are listed in
    ``gm.meta["folded_bn"]`` as ``{bn name: conv name}``.
    """
    gm = symbolic_trace(model) if not isinstance(model, fx.GraphModule) else model
    if not inplace:
        gm = copy.deepcopy(gm)
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = {}
    for bn_node in list(gm.graph.nodes):
        conv_node = _foldable(gm, bn_node, calls)
        if conv_node is None:
            continue
        conv, bn = gm.get_submodule(conv_node.target), gm.get_submodule(bn_node.target)
        if conv.training:  # fuse_conv_bn_eval asserts eval mode; the conv's mode does not matter
            conv = copy.deepcopy(conv).eval()
        gm.set_submodule(conv_node.target, fuse_conv_bn_eval(conv, bn))
        bn_node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(bn_node)
        folded[bn_node.target] = conv_node.target
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.meta["folded_bn"] = folded
    return gm
