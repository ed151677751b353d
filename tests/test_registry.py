"""The op registry: one row per op (rule + slicer + reason), MRO lookup, rewrite_args hooks."""
import pytest
import torch
from torch import fx, nn

import compiler
import passes
from passes import channel_rules as R
from passes import registry
from passes.slicers import slice_conv, slice_norm


WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
            nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
            nn.GroupNorm, nn.PReLU)


def test_every_row_has_a_reason_and_modules_with_weights_have_slicers():
    for key, entry in registry.known_ops().items():
        assert entry.reason and "\n" not in entry.reason, key
    for cls in WEIGHTED:
        assert registry.known_ops()[cls].slicer is not None, cls


@pytest.mark.parametrize("cls", [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                 nn.ConvTranspose3d])
def test_every_conv_has_rule_and_slicer(cls):
    entry = registry.lookup_module(cls(2, 3, 1))
    assert entry.rule is R.conv and entry.slicer is slice_conv


@pytest.mark.parametrize("cls", [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm3d])
def test_every_norm_has_rule_and_slicer(cls):
    entry = registry.lookup_module(cls(3))
    assert entry.rule is R.norm and entry.slicer is slice_norm


def test_conv3d_and_batchnorm3d_prune_exactly():
    m = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 1, 1)).eval()
    with torch.no_grad():
        m[1].weight.uniform_(0.1, 1), m[1].running_mean.normal_(), m[1].running_var.uniform_(0.5, 2)
    res = compiler.compile(m, torch.zeros(1, 2, 6, 6, 6), ratio=0.5)
    assert len(res.kept["0"]) == 4 and res.module.get_submodule("1").num_features == 4
    assert res.report["verify"]["masked_rel"] < 1e-5


class PlainSubConv(nn.Conv2d):
    """A subclass that only changes construction: computes what Conv2d computes."""
    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, padding=1)


class OwnForwardConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


class OwnConvForward(nn.Conv2d):
    def _conv_forward(self, x, w, b):  # how weight-standardised convs are often written
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return super()._conv_forward(x, w, b)


def _leaf_net(conv_cls):
    return nn.Sequential(conv_cls(3, 8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()


def test_a_leaf_subclass_without_own_computation_uses_its_bases_row():
    m = _leaf_net(PlainSubConv)
    res = compiler.compile(m, torch.zeros(1, 3, 8, 8), ratio=0.5, leaf_modules=(PlainSubConv,))
    assert len(res.kept["0"]) == 4 and type(res.module.get_submodule("0")) is PlainSubConv
    assert res.report["verify"]["masked_rel"] < 1e-5


class MyBN(nn.BatchNorm2d):
    pass


class MyReLU(nn.ReLU):
    pass


def test_leaf_subclasses_of_norms_and_activations_use_their_bases_rows():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), MyBN(8), MyReLU(), nn.Conv2d(8, 2, 1)).eval()
    with torch.no_grad():
        m[1].weight.uniform_(0.1, 1), m[1].running_mean.normal_(), m[1].running_var.uniform_(0.5, 2)
    res = compiler.compile(m, torch.zeros(1, 3, 8, 8), widths={"0": 3}, leaf_modules=(MyBN, MyReLU))
    assert res.kept["1"].tolist() == res.kept["0"].tolist() and res.module.get_submodule("1").num_features == 3
    assert registry.lookup_module(MyReLU()) is registry.lookup_module(nn.ReLU())


@pytest.mark.parametrize("cls, method", [(OwnForwardConv, "forward"), (OwnConvForward, "_conv_forward")])
def test_a_leaf_subclass_that_redefines_its_computation_freezes_with_a_reason(cls, method):
    m = nn.Sequential(cls(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    gm = passes.trace(m, torch.zeros(1, 3, 8, 8), leaf_modules=(cls,))
    groups = passes.channel_groups(gm)
    g = next(g for g in groups if "2" in g.names("consumer"))
    assert not g.prunable and f"redefines {method}()" in g.frozen and "'0'" not in g.frozen and "_0" in g.frozen


def test_register_op_rejects_bad_keys_and_reasons():
    with pytest.raises(ValueError):
        passes.register_op(nn.ReLU, R.same, reason="")
    with pytest.raises(TypeError):
        passes.register_op(int, R.same, reason="not a module")
    with pytest.raises(TypeError):
        passes.register_op(torch.relu, R.same, slicer=slice_conv, reason="functions have no slicer")


# --- rewrite_args: a literal channel count in a call follows the pruning -----------------
@fx.wrap
def checked_channels(x, channels):
    """Identity that insists on a literal channel count (as split sizes / view shapes do)."""
    if x.shape[1] != channels:
        raise RuntimeError(f"expected {channels} channels, got {x.shape[1]}")
    return x


class Checked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 6, 1), nn.Conv2d(6, 1, 1)

    def forward(self, x):
        return self.b(checked_channels(torch.relu(self.a(x)), 6))


def _rewrite_channels(node, keep_map):
    kept = keep_map.kept_positions(keep_map.ctx.space(node.args[0]))
    return None if kept is None else ((node.args[0], len(kept)), {})


@pytest.fixture
def checked_row():
    yield lambda hook: passes.register_op(checked_channels, R.same, rewrite_args=hook,
                                          reason="identity; its literal is the input's channel count")
    registry._CALLABLES.pop(checked_channels, None)


def test_without_rewrite_args_the_literal_breaks_the_compact_model(checked_row):
    checked_row(None)
    with pytest.raises(passes.DCPError, match="cannot run.*checked_channels"):
        compiler.compile(Checked().eval(), torch.zeros(1, 2, 4, 4), ratio=0.5)


def test_rewrite_args_updates_the_literal_and_the_compile_is_exact(checked_row):
    checked_row(_rewrite_channels)
    res = compiler.compile(Checked().eval(), torch.zeros(1, 2, 4, 4), ratio=0.5)
    assert len(res.kept["a"]) == 3 and res.report["verify"]["masked_rel"] < 1e-5
    call = next(n for n in res.module.graph.nodes if n.target is checked_channels)
    assert call.args[1] == 3
