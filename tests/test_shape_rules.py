"""The reshape family, grouped convs and channels-last blocks: each pattern prunes the layers
involved AND the compact model equals the masked original in float64 (a node-level masked
reference that zeroes dropped channels on whatever dims hold them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import compiler
import passes
from passes.channels import analyse, build_groups
from passes.importance import channel_scores
from passes.rewrite import KeepMap, rewrite
from passes.select import select
from tests.random_shape_nets import (C2f, ConvNeXtBlock, Classifier, Generator, GRUNet, ResNeXtBlock, ShuffleUnit,
                                     channel_shuffle, masked_error, random_shape_nets, randomize_bn)

TOL = 1e-9  # float64: rounding is ~1e-15, a wrong channel is O(1)


def prune(model, inputs, ratio=0.4, importance="l1", widths=None):
    """trace -> groups -> plan -> compact; returns (ctx, groups, keep, compact, kept, error)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = passes.trace(model, inputs)
    ctx = analyse(gm)
    groups = build_groups(ctx)
    keep = select(groups, channel_scores(gm, groups, importance), ratio=ratio, widths=widths)
    compact, kept = rewrite(ctx, groups, keep)
    err = masked_error(compact, KeepMap(ctx, groups, keep), inputs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model was modified"
    return ctx, groups, keep, compact, kept, err


def group_of(groups, module, kind="producer"):
    hits = [g for g in groups if any(m.module == module and m.kind == kind for m in g.members)]
    assert len(hits) == 1, (module, kind, len(hits))
    return hits[0]


def shrunk(original, compact, name, attr):
    return getattr(compact.get_submodule(name), attr) < getattr(original.get_submodule(name), attr)


# --- (a) split / chunk ------------------------------------------------------------------------
def test_convgru_split_prunes_exactly():
    torch.manual_seed(0)
    model = randomize_bn(GRUNet(16))
    x = torch.randn(2, 3, 8, 8)
    ctx, groups, keep, compact, kept, err = prune(model, x, widths={"hidden.0": 5})
    assert err < TOL
    hidden = group_of(groups, "gru.ih.0")
    assert hidden.prunable and hidden.size == 8
    # r and z halves of ih, the hidden state and hh's output are one identity per channel
    assert {"hidden.0", "gru.ih.0", "gru.hh.0"} <= set(hidden.names("producer"))
    assert shrunk(model, compact, "gru.ih.0", "out_channels") and shrunk(model, compact, "gru.hh.0", "out_channels")
    split = next(n for n in compact.graph.nodes if n.target == "split" and n.args[0].target == "gru.ih.1")
    k = compact.get_submodule("gru.hh.0").out_channels
    assert list(split.args[1]) == [k, k]  # the literal self.channels became the kept counts
    assert sum(g.prunable for g in groups) >= 3


@pytest.mark.parametrize("use_split", [False, True])
def test_c2f_chunk_and_split_pieces_are_own_groups(use_split):
    torch.manual_seed(1)
    model = randomize_bn(C2f(8, 12, n=1, use_split=use_split))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 8, 8, 8), ratio=0.5)
    assert err < TOL
    pieces = [g for g in groups if "cv1.0" in g.names("producer")]
    assert len(pieces) == 2 and all(g.prunable for g in pieces)  # each half its own group
    assert shrunk(model, compact, "cv1.0", "out_channels")
    node = next(n for n in compact.graph.nodes if n.op == "call_method" and n.target in ("split", "chunk"))
    assert node.target == "split" and sum(node.args[1]) == compact.get_submodule("cv1.0").out_channels


def test_uneven_kept_pieces_compile_through_the_public_api():
    torch.manual_seed(2)
    model = randomize_bn(C2f(8, 16, n=2))
    with torch.no_grad():  # make the first half much weaker: the plan prunes the halves unevenly
        model.cv1[0].weight[:8] *= 0.01
    res = compiler.compile(model, torch.randn(1, 8, 8, 8), ratio=0.5, importance="l1")
    assert res.report["verify"]["masked_rel"] < 1e-5
    assert len(res.kept["cv1.0"]) < 16


# --- (b) grouped convs ------------------------------------------------------------------------------
def test_resnext_grouped_conv_keeps_groups_and_prunes_each_alike():
    torch.manual_seed(3)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ResNeXtBlock(16, groups=4, width_per_group=4),
                                       nn.Conv2d(16, 2, 1)))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 8, 8), widths={"1.conv1": 2, "1.conv2": 3})
    assert err < TOL
    conv = compact.get_submodule("1.conv2")
    assert conv.groups == 4 and conv.in_channels < 16 and conv.out_channels < 16
    assert conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    out = kept["1.conv2"].numpy()
    per_group = out.reshape(4, -1) - 4 * np.arange(4)[:, None]
    assert (per_group == per_group[0]).all()  # the same positions in every group
    assert group_of(groups, "1.conv1").size == 4 and group_of(groups, "1.conv2").size == 4


def test_grouped_conv_with_channel_multiplier_and_conv1d():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv1d(2, 6, 3), nn.Conv1d(6, 12, 3, groups=3), nn.ReLU(), nn.Conv1d(12, 6, 1, groups=3),
                          nn.Conv1d(6, 1, 1)).eval()
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 2, 16), widths={"1": 2, "3": 1})
    assert err < TOL
    assert compact.get_submodule("1").groups == 3 and shrunk(model, compact, "1", "out_channels")


def test_grouped_transposed_conv_freezes_with_its_name():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2), nn.Conv2d(8, 1, 1))
    groups = passes.channel_groups(passes.trace(model, torch.zeros(1, 3, 4, 4)))
    g = group_of(groups, "0")
    assert g.frozen and g.frozen.startswith("_1:") and "grouped transposed conv" in g.frozen


# --- (c) channel shuffle ------------------------------------------------------------------------------
@pytest.mark.parametrize("literal,permute", [(False, False), (True, False), (True, True)])
def test_shuffle_unit_prunes_exactly(literal, permute):
    torch.manual_seed(5)
    unit = dict(c=24, mid=12, groups=3, literal=literal, permute=permute, grouped_out=False)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), ShuffleUnit(**unit), ShuffleUnit(**unit),
                                       nn.Conv2d(24, 2, 1)))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 8, 8), widths={"1.g1.0": 2})
    assert err < TOL
    g = group_of(groups, "1.g1.0")
    assert g.prunable and g.size == 4  # 12 channels = 3 shuffle rows x 4 columns, pruned alike in every row
    assert compact.get_submodule("1.g1.0").out_channels == 6 and compact.get_submodule("1.g1.0").groups == 3
    assert compact.get_submodule("1.g2.0").in_channels == 6
    if literal:  # the literal sizes in the view/reshape calls follow the pruning
        split, merge = [n for n in compact.graph.nodes if n.target in ("view", "reshape")][:2]
        assert split.args[2:4] == (3, 2) and merge.args[2] == 6  # (groups, columns kept), then 3 x 2


def test_shuffle_between_grouped_convs_prunes_all_or_nothing():
    """ShuffleNet v1: the shuffle deals each group of g1 across every group of g2, so no
    proper subset of g1's channels keeps g2's groups equal: one identity, exact."""
    torch.manual_seed(5)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), ShuffleUnit(24, 12, 3), nn.Conv2d(24, 2, 1)))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert err < TOL
    assert group_of(groups, "1.g1.0").size == 1


def test_torchvision_shufflenet_v2_unit_prunes_through_chunk_and_shuffle():
    from torchvision.models.shufflenetv2 import InvertedResidual
    torch.manual_seed(6)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), InvertedResidual(16, 32, 2),
                                       InvertedResidual(32, 32, 1), InvertedResidual(32, 32, 1), nn.Conv2d(32, 2, 1)))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 16, 16), ratio=0.5)
    assert err < TOL
    # the stage's shuffled channels: one group per chunk piece (unit 2's right half, unit 3's halves)
    trunk = [g for g in groups if "1.branch1.2" in g.names("producer")]
    assert len(trunk) == 3 and all(g.prunable for g in trunk)
    assert all("1.branch2.5" in g.names("producer") for g in trunk)
    assert any("3.branch2.5" in g.names("producer") for g in trunk)
    assert len(kept["1.branch1.2"]) < 16
    assert compact.get_submodule("4").in_channels < 32


def test_shuffle_is_a_permutation_the_rule_proves():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 6, 1)

        def forward(self, x):
            return channel_shuffle(self.conv(x), 2)

    ctx = analyse(passes.trace(Shuffle(), torch.zeros(1, 2, 3, 3)))
    out = next(n for n in ctx.gm.graph.nodes if n.op == "output").args[0]
    conv_ids = ctx.modules["conv"].out_ids
    assert [ctx.ids.find(i) for i in ctx.spaces[out]] == [ctx.ids.find(conv_ids[j]) for j in (0, 3, 1, 4, 2, 5)]


# --- (d) channels-last ----------------------------------------------------------------------------
def test_convnext_block_prunes_the_hidden_linear_and_freezes_the_normalised_channels():
    torch.manual_seed(6)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvNeXtBlock(8), ConvNeXtBlock(8),
                                       nn.Conv2d(8, 2, 1)))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert err < TOL
    hidden = group_of(groups, "1.pwconv1")
    assert hidden.prunable and hidden.size == 32 and "1.pwconv2" in hidden.names("consumer")
    assert compact.get_submodule("1.pwconv1").out_features < 32 and compact.get_submodule("1.pwconv2").in_features < 32
    trunk = group_of(groups, "0")
    assert trunk.frozen and "normalises across channels" in trunk.frozen and trunk.frozen.startswith("_1_norm:")


def test_channels_last_blocks_compile_through_the_public_api():
    torch.manual_seed(6)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvNeXtBlock(8), ConvNeXtBlock(8, norm=False),
                                       nn.Conv2d(8, 2, 1)))
    res = compiler.compile(model, torch.randn(1, 3, 8, 8), widths={"1.pwconv1": 12, "2.pwconv1": 20})
    assert res.report["verify"]["masked_rel"] < 1e-9
    assert len(res.kept["1.pwconv1"]) == 12 and "0" not in res.kept  # the LayerNorm'ed trunk is frozen
    assert res.module.get_submodule("2.pwconv1").out_features == 20


def test_channels_last_mlp_without_norm_prunes_the_channels_too():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvNeXtBlock(8, norm=False), nn.Conv2d(8, 2, 1)).eval()
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 8, 8), widths={"0": 5, "1.pwconv1": 20})
    assert err < TOL
    trunk = group_of(groups, "0")
    assert trunk.prunable and set(trunk.names("producer")) == {"0", "1.pwconv2"}
    assert compact.get_submodule("1.pwconv1").in_features < 8


def test_gamma_on_the_last_dim_freezes_with_a_reason():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.gamma = nn.Conv2d(3, 4, 1), nn.Linear(4, 4), nn.Parameter(torch.ones(4))

        def forward(self, x):
            return (self.gamma * self.fc(self.conv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2) + 1

    groups = passes.channel_groups(passes.trace(Scaled(), torch.zeros(1, 3, 4, 4)))
    g = group_of(groups, "fc")
    assert g.frozen.startswith("mul:") and "over the channels on dim 3" in g.frozen
    assert group_of(groups, "conv").prunable


def test_ops_without_an_axis_aware_rule_freeze_moved_channels():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):  # pooling a channels-last tensor pools over W and C: not per channel
            return nn.functional.avg_pool2d(self.conv(x).permute(0, 2, 3, 1), 2)

    groups = passes.channel_groups(passes.trace(Pooled(), torch.zeros(1, 3, 4, 4)))
    g = group_of(groups, "conv")
    assert g.frozen.startswith("avg_pool2d:") and "channels on dim 3" in g.frozen


# --- (e) features folded into channels, flatten into Linear --------------------------------------
def test_generator_head_prunes_the_linear_in_blocks():
    torch.manual_seed(8)
    model = randomize_bn(Generator(8, 16))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(3, 8), ratio=0.5)
    assert err < TOL
    g = group_of(groups, "fc")
    assert g.prunable and g.size == 16
    fc = kept["fc"].numpy().reshape(-1, 16)  # blocks of h*w = 16 features
    assert (fc == fc[:, :1] + np.arange(16)).all() and fc.shape[0] < 16
    assert compact.get_submodule("up.2").in_channels == fc.shape[0]
    view = next(n for n in compact.graph.nodes if n.target == "view")
    assert view.args[2] == fc.shape[0]  # the literal C rewritten


@pytest.mark.parametrize("how", ["module", "function", "size", "literal"])
def test_flatten_into_linear_every_way(how):
    torch.manual_seed(9)
    model = randomize_bn(Classifier(how))
    ctx, groups, keep, compact, kept, err = prune(model, torch.randn(2, 3, 10, 10), ratio=0.5)
    assert err < TOL
    assert group_of(groups, "features.0").prunable
    assert compact.get_submodule("fc.0").in_features == 25 * len(kept["features.0"]) < 150


def test_flatten_module_reads_its_own_start_dim():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.flat, self.fc = nn.Conv2d(3, 4, 1), nn.Flatten(2), nn.Linear(16, 3)

        def forward(self, x):  # (N, 4, 16) -> Linear over the 16 positions: channels stay on dim 1
            return self.fc(self.flat(self.conv(x))).sum(-1)

    groups = passes.channel_groups(passes.trace(Seq(), torch.zeros(1, 3, 4, 4)))
    assert "flat" not in " ".join(g.frozen or "" for g in groups)


def test_merging_channels_into_the_batch_freezes_naming_the_node():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            y = self.conv(x)
            return y.reshape(-1, 4, 4, 4).mean((1, 2, 3))

    groups = passes.channel_groups(passes.trace(Heads(), torch.zeros(2, 3, 4, 4)))
    g = group_of(groups, "conv")
    assert g.frozen.startswith("reshape:") and "batch" in g.frozen


# --- random graphs --------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_shape_nets(), st.floats(0.1, 0.8))
def test_random_shape_nets_are_exact(net, ratio):
    model, x = net
    ctx, groups, keep, compact, kept, err = prune(model, x, ratio=ratio)
    assert err < TOL
    with torch.no_grad():
        assert compact(x).shape == model(x).shape
    for name, m in compact.named_modules():
        for attr in ("in_channels", "out_channels", "in_features", "out_features"):
            assert getattr(m, attr, 1) >= 1, (name, attr)
