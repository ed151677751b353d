"""Regressions for the two ways torch-pruning 1.6 gets pool/unpool networks wrong.

MaxUnpool needs its value input to carry the SAME channels as the indices of the pool
that made them (docs/method.md#teacher). torch-pruning does not see the indices edge (indices
have no grad_fn): uniform pruning keeps different channels on the two sides (silently
wrong), global pruning crashes at the unpool. Our compiler must tie the two sides, keep the
same indices on both, and emit a compact model equal to the masked original; also when
the decoder concatenates an encoder feature with the unpooled tensor (a U-Net-style skip).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import compiler
import matting
import passes


def cbr(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), *([nn.ReLU()] if relu else []))


class SegNet(nn.Module):
    """Two pool/unpool pairs, DIM-style: the decoder conv before each unpool must produce
    the encoder's channels."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.mid = cbr(3, 8), cbr(8, 16), cbr(16, 16)
        self.pool1 = nn.MaxPool2d(2, 2, return_indices=True)
        self.pool2 = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool2, self.unpool1 = nn.MaxUnpool2d(2, 2), nn.MaxUnpool2d(2, 2)
        self.dec2 = cbr(16, 8, relu=False)
        self.dec1 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        e1 = self.enc1(x)
        p1, i1 = self.pool1(e1)
        e2 = self.enc2(p1)
        p2, i2 = self.pool2(e2)
        y = self.unpool2(self.mid(p2), i2, output_size=e2.shape)
        y = self.unpool1(self.dec2(y), i1, output_size=e1.shape)
        return self.dec1(y)


class SkipSegNet(SegNet):
    """The same, plus concat skips: each decoder conv also sees the encoder feature."""

    def __init__(self):
        super().__init__()
        self.dec2 = cbr(16 + 16, 8, relu=False)
        self.dec1 = nn.Conv2d(8 + 8, 1, 3, padding=1)

    def forward(self, x):
        e1 = self.enc1(x)
        p1, i1 = self.pool1(e1)
        e2 = self.enc2(p1)
        p2, i2 = self.pool2(e2)
        u2 = self.unpool2(self.mid(p2), i2, output_size=e2.shape)
        u1 = self.unpool1(self.dec2(torch.cat([e2, u2], 1)), i1, output_size=e1.shape)
        return self.dec1(torch.cat([u1, e1], 1))


# which conv's output must keep the same channels as which (both sides of an unpool)
PAIRS = (("enc1.0", "dec2.0"), ("enc2.0", "mid.0"))


def _model(cls):
    torch.manual_seed(0)
    m = cls().eval()
    with torch.no_grad():  # distinct BN statistics, so a wrong channel would show
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1), mod.running_var.uniform_(0.5, 2), mod.bias.uniform_(-1, 1)
    return m


def _masked_forward(model: nn.Module, kept: dict, x: torch.Tensor) -> torch.Tensor:
    """The original with every dropped output channel zeroed, built from ``kept`` alone
    (independent of the compiler's own masking)."""
    handles = []
    for name, keep in kept.items():
        def hook(mod, args, out, keep=keep):
            mask = torch.zeros(out.shape[1])
            mask[keep] = 1
            return out * mask.view(1, -1, 1, 1)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("cls", [SegNet, SkipSegNet])
def test_groups_tie_both_sides_of_each_unpool(cls):
    groups = passes.channel_groups(passes.trace(cls().eval(), torch.zeros(1, 3, 16, 16)))
    for enc, dec in PAIRS:
        (g,) = [g for g in groups if enc in g.names("producer")]
        assert sorted(g.names("producer")) == sorted([enc, dec])
        assert g.prunable


def test_skip_concat_maps_the_same_channels_twice():
    groups = passes.channel_groups(passes.trace(SkipSegNet().eval(), torch.zeros(1, 3, 16, 16)))
    (g,) = [g for g in groups if "enc2.0" in g.names("producer")]
    (consumer,) = [m for m in g.members if m.module == "dec2.0" and m.kind == "consumer"]
    # cat([e2, unpool(mid)]): both halves are the one group, channel for channel
    assert consumer.positions.tolist() == list(range(32))
    assert consumer.channels.tolist() == list(range(16)) * 2


@pytest.mark.parametrize("cls", [SegNet, SkipSegNet])
def test_compile_keeps_the_same_indices_on_both_sides(cls):
    model, x = _model(cls), torch.randn(2, 3, 16, 16)
    res = compiler.compile(model, x, ratio=0.5, importance="l1", verify_size=None)
    for enc, dec in PAIRS:
        assert torch.equal(res.kept[enc], res.kept[dec]), (enc, dec)
        assert 1 <= len(res.kept[enc]) < model.get_submodule(enc).out_channels
    with torch.no_grad():
        compact = res.module(x)
    expected = _masked_forward(model, res.kept, x)
    assert compact.shape == (2, 1, 16, 16)
    assert torch.allclose(compact, expected, atol=1e-5, rtol=1e-5)
    assert res.report["verify"]["masked_rel"] < 1e-5
    assert res.report["verify"]["unmasked_rel"] > 1e-3  # it really pruned something


def test_dim_unpool_pairs_keep_the_same_indices():
    model, x = matting.dim(width=0.125).eval(), torch.randn(1, 4, 32, 32)
    pairs = (("down1.conv2", "up2.conv"), ("down2.conv2", "up3.conv"),
             ("down3.conv3", "up4.conv"), ("down4.conv3", "up5.conv"))
    halve = {f"{enc}.cbr_unit.0": model.widths[enc] // 2 for enc, _ in pairs}  # prune every pair
    res = compiler.compile(model, x, ratio=0.5, importance="l1", widths=halve)
    for enc, dec in pairs:
        a, b = res.kept[f"{enc}.cbr_unit.0"], res.kept[f"{dec}.cbr_unit.0"]
        assert torch.equal(a, b) and len(a) == model.widths[enc] // 2, (enc, dec)
        assert torch.equal(res.kept[f"{enc}.cbr_unit.1"], a)  # the BN follows its conv
    assert res.report["verify"]["masked_rel"] < 1e-5


# --- the peer's failure modes (documents why the tests above exist) --------------------
def _torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    if not tp.__version__.startswith("1.6"):
        pytest.skip(f"documents torch-pruning 1.6 behaviour, found {tp.__version__}")
    return tp


def _kept_by_bias(original: nn.Conv2d, pruned: nn.Conv2d) -> list[int]:
    """Which of the original output channels a pruned conv kept (biases are distinct)."""
    return [int((original.bias == b).nonzero()[0]) for b in pruned.bias]


def _tp_prune(tp, model, x, global_pruning: bool):
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[model.dec1],
                                       global_pruning=global_pruning)
    pruner.step()


def test_torch_pruning_uniform_keeps_different_channels_across_unpool():
    tp = _torch_pruning()
    model, x = _model(SegNet), torch.randn(1, 3, 16, 16)
    original = copy.deepcopy(model)
    _tp_prune(tp, model, x, global_pruning=False)
    model(x)  # runs: the counts happen to agree ...
    differ = [(enc, dec) for enc, dec in PAIRS
              if _kept_by_bias(original.get_submodule(enc), model.get_submodule(enc))
              != _kept_by_bias(original.get_submodule(dec), model.get_submodule(dec))]
    assert differ, "torch-pruning kept the same channels on both sides of an unpool"  # ... the channels do not


def test_torch_pruning_global_crashes_at_unpool():
    tp = _torch_pruning()
    model, x = _model(SegNet), torch.randn(1, 3, 16, 16)
    _tp_prune(tp, model, x, global_pruning=True)
    with pytest.raises(RuntimeError, match="indices"):
        model(x)
