"""Parameters used directly in the graph are pruned as members: functional conv / linear /
batch_norm / conv_transpose, per-channel affine parameters, functional pool/unpool, F.pad
over channels, weight-standardised convs. Every compile is exact (float64, node-level masked
original) or freezes with a reason naming the node."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compiler
import passes
from exactness import prune
from passes.verify import VERIFY_TOLERANCE

TOL = 1e-12


def _p(*shape, low=None):
    t = torch.rand(*shape) * 0.9 + 0.1 if low else torch.randn(*shape) * 0.5
    return nn.Parameter(t)


class FunctionalNet(nn.Module):
    """conv -> batch_norm -> relu -> conv -> relu -> conv_transpose -> conv -> pool -> linear, all functional."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = _p(8, 3, 3, 3), _p(8)
        self.gamma, self.beta = _p(8, low=True), _p(8)
        self.register_buffer("rm", torch.randn(8) * 0.1)
        self.register_buffer("rv", torch.rand(8) + 0.5)
        self.w2, self.b2 = _p(6, 8, 3, 3), _p(6)
        self.wt, self.bt = _p(6, 5, 2, 2), _p(5)
        self.w3 = _p(7, 5, 1, 1)
        self.lw, self.lb = _p(2, 7), _p(2)

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        y = F.relu(F.batch_norm(y, self.rm, self.rv, self.gamma, self.beta, False, 0.1, 1e-5))
        y = F.relu(F.conv2d(y, self.w2, self.b2, 1, 1))
        y = F.conv_transpose2d(y, self.wt, self.bt, stride=2)
        y = F.relu(F.conv2d(y, self.w3))
        return F.linear(F.adaptive_avg_pool2d(y, 1).flatten(1), self.lw, self.lb)


def test_functional_layers_prune_their_parameters_exactly():
    torch.manual_seed(0)
    m = FunctionalNet()
    r = prune(m, torch.zeros(2, 3, 8, 8))
    assert r.masked_rel < TOL
    widths = {k: len(v) for k, v in r.kept.items()}
    assert widths == {"w1": 4, "gamma": 4, "beta": 4, "rm": 4, "rv": 4, "w2": 3, "wt": 2, "w3": 3}, widths
    c = r.compact
    assert c.w1.shape == (4, 3, 3, 3) and c.b1.shape == (4,) and c.gamma.shape == (4,) and c.rv.shape == (4,)
    assert c.w2.shape == (3, 4, 3, 3) and c.wt.shape == (3, 2, 2, 2) and c.w3.shape == (3, 2, 1, 1)
    assert c.lw.shape == (2, 3) and isinstance(c.w1, nn.Parameter) and not isinstance(c.rm, nn.Parameter)


def test_functional_batch_norm_weight_is_the_bn_score():
    torch.manual_seed(1)
    m = FunctionalNet()
    r = prune(m, torch.zeros(1, 3, 8, 8), importance="bn")
    order = m.gamma.detach().abs().argsort(descending=True)[:4].sort().values
    assert r.kept["w1"].tolist() == order.tolist()


def test_compile_reports_functional_layers_in_kept_and_macs():
    torch.manual_seed(0)
    res = compiler.compile(FunctionalNet(), torch.zeros(1, 3, 8, 8), widths={"w1": 4, "w2": 3, "wt": 2, "w3": 3})
    assert {k: len(v) for k, v in res.kept.items() if k.startswith("w")} == {"w1": 4, "w2": 3, "wt": 2, "w3": 3}
    assert res.report["verify"]["masked_rel"] <= VERIFY_TOLERANCE  # the compile's own float64 check
    assert 0 < res.report["macs_after"] < res.report["macs_before"]


class StdConv2d(nn.Conv2d):
    """Weight standardisation (BiT / timm-style), written as projects write it."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StdConvBN(nn.Module):
    """timm's StdConv2d: standardise with F.batch_norm over a (1, out, -1) view of the weight."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        w = F.batch_norm(self.conv.weight.reshape(1, self.conv.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.conv.weight)
        return F.conv2d(x, w, self.conv.bias, 1, 1)


class Conv2dSame(nn.Conv2d):
    """TF 'SAME' padding before the conv, as timm's Conv2dSame (static pad here)."""

    def forward(self, x):
        return F.conv2d(F.pad(x, [0, 1, 0, 1]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.1, 1), bn.bias.normal_(0, 0.1), bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def _std_net(conv_cls):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8), nn.ReLU(), conv_cls(8, 6, 3, padding=1), _bn(6),
                         nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()


def test_weight_standardised_conv_prunes_outputs_and_freezes_inputs():
    torch.manual_seed(0)
    m = _std_net(StdConv2d)
    r = prune(m, torch.zeros(1, 3, 8, 8))
    assert r.masked_rel < TOL
    assert len(r.kept["3.weight"]) == 3 and r.compact.get_submodule("3").bias.shape == (3,)
    assert "0" not in r.kept  # its channels are the standardised conv's inputs
    frozen = next(g for g in r.groups if "0" in g.names("producer"))
    assert "standardised" in frozen.frozen and "conv2d" in frozen.frozen


def test_timm_std_conv_with_batch_norm_on_the_weight_freezes_with_a_reason():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), StdConvBN(8, 6), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    r = prune(m, torch.zeros(1, 3, 8, 8))
    assert r.masked_rel < TOL and set(r.kept) == set()
    reasons = [g.frozen for g in r.groups if g.size in (6, 8) and g.members]
    assert reasons and all("weight computed in the graph" in why for why in reasons), reasons


def test_conv2d_same_subclass_prunes_both_sides():
    torch.manual_seed(0)
    m = _std_net(Conv2dSame)
    r = prune(m, torch.zeros(1, 3, 9, 9))
    assert r.masked_rel < TOL and len(r.kept["0"]) == 4 and len(r.kept["3.weight"]) == 3


def test_a_parameter_read_elsewhere_freezes():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = _p(8, 3, 1, 1)
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, x):
            return self.head(F.conv2d(x, self.w)) + self.w.sum()

    groups = passes.channel_groups(passes.trace(M(), torch.zeros(1, 3, 4, 4)))
    g = next(g for g in groups if "w" in g.names("producer"))
    assert not g.prunable and "also reads the parameter 'w'" in g.frozen


# --- per-channel parameters in elementwise ops -----------------------------------------------
class Affine(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)
        self.register_buffer("shift", torch.randn(c, 1, 1))

    def forward(self, x):
        return x * self.scale + self.shift


class LayerScaleBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(c) + 0.1)

    def forward(self, x):
        return x + self.conv(x) * self.gamma.view(1, -1, 1, 1)


def test_per_channel_parameters_are_sliced_as_members():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Affine(8), nn.ReLU(), nn.Conv2d(8, 6, 1), LayerScaleBlock(6),
                      nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    r = prune(m, torch.zeros(1, 3, 8, 8), importance="l1")
    assert r.masked_rel < TOL
    assert len(r.kept["0"]) == 4 and len(r.kept["3"]) == 3
    c = r.compact
    assert c.get_submodule("1").scale.shape == (1, 4, 1, 1) and c.get_submodule("1").shift.shape == (4, 1, 1)
    assert c.get_submodule("4").gamma.shape == (3,)


def test_a_view_spelling_the_channel_count_freezes():
    class Literal(LayerScaleBlock):
        def forward(self, x):
            return x + self.conv(x) * self.gamma.view(1, 6, 1, 1)

    m = nn.Sequential(nn.Conv2d(3, 6, 1), Literal(6), nn.Conv2d(6, 2, 1)).eval()
    groups = passes.channel_groups(passes.trace(m, torch.zeros(1, 3, 4, 4)))
    assert not next(g for g in groups if "0" in g.names("producer")).prunable


# --- the paper's link written functionally ---------------------------------------------------
class FunctionalUnpool(nn.Module):
    def __init__(self, functional=True):
        super().__init__()
        self.functional = functional
        self.enc, self.bn = nn.Conv2d(3, 8, 3, padding=1), _bn(8)
        self.mid, self.dec = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.pool, self.unpool = nn.MaxPool2d(2, 2, return_indices=True), nn.MaxUnpool2d(2, 2)
        self.head = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.bn(self.enc(x)))
        p, i = F.max_pool2d(y, 2, 2, return_indices=True) if self.functional else self.pool(y)
        z = self.dec(F.relu(self.mid(p)))
        u = F.max_unpool2d(z, i, 2, 2, output_size=y.shape[2:]) if self.functional else \
            self.unpool(z, i, output_size=y.shape[2:])
        return self.head(F.relu(u))


@pytest.mark.parametrize("functional", [True, False])
def test_functional_pool_unpool_prunes_like_the_module_form(functional):
    torch.manual_seed(0)
    m = FunctionalUnpool(functional).eval()
    r = prune(m, torch.zeros(1, 3, 8, 10))
    assert r.masked_rel < TOL
    assert torch.equal(r.kept["enc"], r.kept["dec"]) and len(r.kept["enc"]) == 4 and len(r.kept["mid"]) == 3
    lowered = passes.lower_unpool(r.compact)
    x = torch.randn(2, 3, 8, 10)
    with torch.no_grad():
        assert torch.equal(lowered(x), r.compact(x))
    assert not any(n.target is F.max_unpool2d for n in lowered.graph.nodes)


# --- F.pad over channels -----------------------------------------------------------------------
class ChannelPad(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8 + sum(pad[4:6]), 4, 1)

    def forward(self, x):
        return self.b(F.pad(F.relu(self.a(x)), self.pad, value=0.5))


def test_padded_channels_are_fixed_and_the_rest_prune_exactly():
    torch.manual_seed(0)
    r = prune(ChannelPad((1, 1, 0, 0, 2, 1)).eval(), torch.zeros(1, 3, 6, 6))
    assert r.masked_rel < TOL and len(r.kept["a"]) == 4 and r.compact.b.in_channels == 7
    assert any(g.size == 2 and "padded in by F.pad" in g.frozen for g in r.groups)


@pytest.mark.parametrize("pad", [(0, 0, 0, 0, -2, 1), (0, 0, 0, 0, 0, 0, 1, 0)])
def test_cropping_or_batch_pads_freeze_with_a_reason(pad):
    m = ChannelPad(pad if len(pad) == 6 else (0, 0, 0, 0, 0, 0)).eval()
    m.pad = pad
    res = compiler.compile(m, torch.zeros(1, 3, 6, 6))
    assert res.kept == {} and any("pads the channel or batch dim" in (g["frozen"] or "") for g in res.report["groups"])


def test_the_float64_reference_catches_a_wrong_slice():
    """The exactness helper itself can fail: swap two kept channels of a sliced parameter."""
    import exactness
    torch.manual_seed(0)
    m = FunctionalNet()
    right = prune(m, torch.zeros(1, 3, 8, 8))
    original = exactness.rewrite

    def wrong(ctx, groups, keep):
        compact, kept = original(ctx, groups, keep)
        with torch.no_grad():
            compact.gamma.copy_(compact.gamma.flip(0))
        return compact, kept

    exactness.rewrite = wrong
    try:
        assert prune(m, torch.zeros(1, 3, 8, 8)).masked_rel > 1e-3 > right.masked_rel
    finally:
        exactness.rewrite = original


def test_a_layer_used_as_module_and_as_parameter_freezes():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 1, 1)

        def forward(self, x):
            return self.head(self.conv(x) + F.conv2d(x, self.conv.weight))

    groups = passes.channel_groups(passes.trace(Shared(), torch.zeros(1, 3, 4, 4)))
    g = next(g for g in groups if "conv" in g.names("producer"))
    assert not g.prunable and "read directly and through its module 'conv'" in g.frozen
