"""The compiler on models it was not written for: torchvision CNN families.

For every model: (a) the channel analysis runs; (b) ``compiler.compile`` at ratio 0.3 keeps
the output shape, equals the masked original (compile raises otherwise) and leaves no layer
with 0 channels. Where the structure is known, the groups are checked against it.
Heavy models are ``slow``; the default run keeps one of each kind of coupling (residual
adds, SE gates, channel shuffle, concat, segmentation heads).
"""
from __future__ import annotations

import functools

import pytest
import torch
import torchvision.models as tvm
from torch import fx, nn
from torchvision.models import segmentation as seg

import compiler
import passes

slow = pytest.mark.slow

# name -> (constructor, input side). 64 px is enough for every family here.
MODELS = {
    "resnet18": (lambda: tvm.resnet18(), 64),
    "vgg11_bn": (lambda: tvm.vgg11_bn(), 64),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(), 64),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(), 64),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(), 64),
    "regnet_x_400mf": (lambda: tvm.regnet_x_400mf(), 64),
    "densenet121": (lambda: tvm.densenet121(), 64),
    "squeezenet1_0": (lambda: tvm.squeezenet1_0(), 64),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(), 64),
    "googlenet": (lambda: tvm.googlenet(aux_logits=False, init_weights=False), 64),
    "fcn_resnet50": (lambda: seg.fcn_resnet50(weights=None, weights_backbone=None), 64),
    "deeplabv3_mobilenet_v3_large":
        (lambda: seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None), 64),
    "lraspp_mobilenet_v3_large":
        (lambda: seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None), 64),
}
FAST = ("resnet18", "mobilenet_v3_small", "squeezenet1_0", "shufflenet_v2_x0_5", "lraspp_mobilenet_v3_large")
PARAMS = [pytest.param(name, marks=() if name in FAST else slow) for name in MODELS]


@functools.lru_cache(maxsize=None)
def _built(name: str) -> tuple[nn.Module, torch.Tensor]:
    make, side = MODELS[name]
    torch.manual_seed(0)
    return make().eval(), torch.randn(1, 3, side, side)


@functools.lru_cache(maxsize=None)
def _groups(name: str) -> tuple[fx.GraphModule, list]:
    model, x = _built(name)
    gm = passes.trace(model, x)
    return gm, passes.channel_groups(gm)


def _out(y):
    return y["out"] if isinstance(y, dict) else y


def _group_of(groups, module: str, kind: str = "producer"):
    hits = [g for g in groups if any(m.module == module and m.kind == kind for m in g.members)]
    assert len(hits) == 1, f"{module} ({kind}) is in {len(hits)} groups"
    return hits[0]


# --- (a) analysis ---------------------------------------------------------------------
@pytest.mark.parametrize("name", PARAMS)
def test_channel_groups_analyse(name):
    model, _ = _built(name)
    gm, groups = _groups(name)
    assert any(g.prunable for g in groups), "nothing prunable"
    convs = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    producers = {p for g in groups for p in g.names("producer")}
    assert producers <= convs
    for g in groups:
        assert g.size >= 1
        assert g.frozen is None or isinstance(g.frozen, str) and g.frozen
        if g.prunable:
            assert g.names("producer"), f"prunable group {g.id} has no producer"
    # the classifier / segmentation head output reaches the graph output: never pruned
    outputs = [g for g in groups if g.frozen and "reaches the graph output" in g.frozen]
    assert outputs
    # every op these families use has a rule (freezing for lack of one is sound but wasteful)
    assert not [g.frozen for g in groups if g.frozen and "no channel rule" in g.frozen]


# --- (b) compile ----------------------------------------------------------------------
@pytest.mark.parametrize("name", PARAMS)
def test_compile_ratio_0_3_is_exact(name):
    model, x = _built(name)
    res = compiler.compile(model, x, ratio=0.3, importance="l1")
    assert res.report["verify"]["masked_rel"] < 1e-4
    assert res.report["params_after"] < res.report["params_before"]
    with torch.no_grad():
        assert _out(res.module(x)).shape == _out(model(x)).shape
    for g in res.report["groups"]:
        assert g["kept"] >= 1, g
    for mod_name, m in res.module.named_modules():
        for attr in ("in_channels", "out_channels", "in_features", "out_features", "num_features"):
            assert getattr(m, attr, 1) >= 1, f"{mod_name}.{attr} == 0"
    assert all(len(k) >= 1 for k in res.kept.values())


# --- structure we know ----------------------------------------------------------------
def test_resnet18_residual_adds_tie_each_stage():
    _, groups = _groups("resnet18")
    stages = {
        "layer1": {"conv1", "layer1.0.conv2", "layer1.1.conv2"},  # stem feeds layer1's adds
        "layer2": {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"},
        "layer3": {"layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"},
        "layer4": {"layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"},
    }
    for stage, producers in stages.items():
        g = _group_of(groups, f"{stage}.1.conv2")
        assert set(g.names("producer")) == producers, stage
        assert g.prunable
    for stage in stages:  # the first conv of each block is free: its own group
        for block in (0, 1):
            g = _group_of(groups, f"{stage}.{block}.conv1")
            assert g.names("producer") == [f"{stage}.{block}.conv1"] and g.prunable
    fc = _group_of(groups, "fc")
    assert fc.frozen and fc.frozen.startswith("fc:")


def test_mobilenet_v3_se_gate_ties_to_block_channels():
    from torchvision.ops import SqueezeExcitation
    model, _ = _built("mobilenet_v3_small")
    _, groups = _groups("mobilenet_v3_small")
    se_blocks = [n for n, m in model.named_modules() if isinstance(m, SqueezeExcitation)]
    assert len(se_blocks) >= 5
    for se in se_blocks:
        block, k = se.rsplit(".", 1)  # features.N.block . index of the SE inside the block
        gate = _group_of(groups, f"{se}.fc2")
        # the gate multiplies the depthwise output: same channels, same group
        assert f"{block}.{int(k) - 1}.0" in gate.names("depthwise"), se
        assert f"{block}.{int(k) + 1}.0" in gate.names("consumer"), se
        assert f"{se}.fc1" in gate.names("consumer"), se
        squeeze = _group_of(groups, f"{se}.fc1")
        assert squeeze is not gate and squeeze.prunable


def test_shufflenet_stage_prunes_through_chunk_and_shuffle():
    model, x = _built("shufflenet_v2_x0_5")
    _, groups = _groups("shufflenet_v2_x0_5")
    for stage, units in (("stage2", 4), ("stage3", 8), ("stage4", 4)):
        # a stage's shuffled channels: one group per chunk piece (units 2.. right halves, last left half)
        trunk = [g for g in groups if f"{stage}.0.branch1.2" in g.names("producer")]
        assert units - 1 <= len(trunk) <= units and all(g.prunable for g in trunk), stage  # stage3 runs out of halves
        assert {f"{stage}.{u}.branch2.5" for u in range(units)} <= {p for g in trunk for p in g.names("producer")}
    assert _group_of(groups, "stage3.1.branch2.0").prunable  # a right branch's own channels
    res = compiler.compile(model, x, ratio=0.5, importance="l1")
    assert res.report["verify"]["masked_rel"] < 1e-4
    assert len(res.kept["stage3.0.branch1.2"]) < 48 and res.module.get_submodule("stage3.1.branch2.5").out_channels < 48
    chunks = [n for n in res.module.graph.nodes if n.op == "call_method" and n.target in ("chunk", "split")]
    assert any(n.target == "split" for n in chunks)  # chunks of pruned pieces became splits


def test_regnet_grouped_convs_prune_each_group_alike():
    model, x = _built("regnet_x_400mf")
    _, groups = _groups("regnet_x_400mf")
    grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert len(grouped) == 22
    for name in grouped:
        assert _group_of(groups, name).prunable, name
        assert _group_of(groups, name, "consumer").prunable, name
    assert sum(g.prunable for g in groups) >= 45
    res = compiler.compile(model, x, ratio=0.3, importance="l1")
    assert res.report["verify"]["masked_rel"] < 1e-4
    for name in grouped:
        before, after = model.get_submodule(name), res.module.get_submodule(name)
        assert after.groups == before.groups and after.in_channels % after.groups == 0
    assert any(res.module.get_submodule(n).out_channels < model.get_submodule(n).out_channels for n in grouped)


@slow
def test_convnext_hidden_linears_prune_and_layernormed_channels_freeze():
    from passes.channels import analyse, build_groups
    from passes.importance import channel_scores
    from passes.rewrite import KeepMap, rewrite
    from passes.select import select
    from tests.random_shape_nets import masked_error
    torch.manual_seed(0)
    model, x = tvm.convnext_tiny().eval(), torch.randn(1, 3, 32, 32)
    gm = passes.trace(model, x)
    ctx = analyse(gm)
    groups = build_groups(ctx)
    hidden = [g for g in groups if g.prunable]
    assert len(hidden) == 18  # one per block: Linear(C, 4C) -> GELU -> Linear(4C, C)
    assert all(len(g.names("producer")) == 1 and g.names("producer")[0].endswith("block.3") for g in hidden)
    trunk = _group_of(groups, "features.0.0")
    assert "normalises across channels" in trunk.frozen
    keep = select(groups, channel_scores(gm, groups, "l1"), ratio=0.5)
    compact, kept = rewrite(ctx, groups, keep)
    assert masked_error(compact, KeepMap(ctx, groups, keep), (x,)) < 1e-9
    assert compact.get_submodule("features.1.0.block.3").out_features < 384
    res = compiler.compile(model, x, ratio=0.5, importance="l1")  # the public path, its own float64 check
    assert res.report["verify"]["masked_rel"] < 1e-9 and len(res.kept["features.1.0.block.3"]) < 384


@slow
def test_densenet_concat_maps_each_layer_to_its_offset():
    _, groups = _groups("densenet121")
    g = _group_of(groups, "features.denseblock1.denselayer1.conv2")
    assert g.size == 32 and g.prunable
    where = {m.module: m.positions.tolist() for m in g.members if m.kind == "consumer"}
    # denselayer k's input is cat(stem 64, layer1 32, ..., layer k-1 32): layer1 at 64..95
    for k in range(2, 7):
        assert where[f"features.denseblock1.denselayer{k}.conv1"] == list(range(64, 96))
    assert where["features.transition1.conv"] == list(range(64, 96))


@slow
def test_efficientnet_stochastic_depth_passes_channels_through():
    _, groups = _groups("efficientnet_b0")
    # block 2.1 adds stochastic_depth(block(x)) to x = block 2.0's output: one prunable group
    g = _group_of(groups, "features.2.1.block.3.0")
    assert set(g.names("producer")) == {"features.2.0.block.3.0", "features.2.1.block.3.0"}
    assert g.prunable


# --- (c) latency tables ----------------------------------------------------------------
@pytest.mark.parametrize("name", PARAMS)
def test_latency_tables_build_at_every_width_they_price(name, tmp_path):
    """Every unit of every model rebuilds at every grid point of its table (depthwise, grouped,
    linear, transposed) and runs; then a latency-budget selection and rewrite go through. A
    fake clock (the unit's MACs) and a crop of the input keep this fast and timing-free."""
    from compiler.latency_fit import fit_latency, latency_model
    from passes.count import layer_axes
    from passes.importance import channel_scores
    from passes.select import select_budget
    model, x = _built(name)
    gm = passes.trace(model, x)
    ctx = passes.analyse(gm)
    groups = passes.build_groups(ctx)
    layers = layer_axes(ctx, groups)

    def clock(unit, xx):
        crop = xx[(slice(None), slice(None), *(slice(0, 32) for _ in xx.shape[2:]))]
        unit(crop)  # raises if the widths do not fit together
        return 1e-3 + sum(p.numel() for p in unit.parameters()) * crop[0, 0].numel() * 1e-9
    _, tables, stats = latency_model(gm, groups, layers, "torch-cpu", round_to=8, grid_points=3, cache=tmp_path,
                                     timer=clock)
    assert stats["measured"] > 0 and len(tables) == len(layers)
    scores = channel_scores(gm, groups, "l1")
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, round_to=8)  # noqa: E731
    measure = lambda models: {k: passes.count(m, x)[1] / 1e9 for k, m in models.items()}  # noqa: E731
    keep, rep = fit_latency(gm, ctx, groups, layers, x, 0.7, choose, round_to=8, grid_points=3, cache=tmp_path,
                            timer=clock, measure=measure, rounds=1)
    assert len(rep["layers"]) == len(layers) and any(len(k) < g.size for g in groups for gid, k in keep.items()
                                                     if gid == g.id)
