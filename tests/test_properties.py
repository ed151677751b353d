"""Property tests over random small graphs: every compile is exact against the masked original."""
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import compiler
import passes
from random_nets import random_nets

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_scores(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.out_channels, generator=g) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1}


@SETTINGS
@given(random_nets(), st.floats(0.0, 0.9), st.integers(1, 4), st.integers(0, 1000))
def test_compact_equals_masked_original(net_side, ratio, round_to, seed):
    net, side = net_side
    x = torch.randn(2, 3, side, side)
    res = compiler.compile(net, x, ratio=ratio, round_to=round_to, importance=random_scores(net, seed),
                           verify_size=None)  # raises if compact != masked original
    assert res.report["verify"]["masked_rel"] < 1e-5
    with torch.no_grad():
        assert res.module(x).shape == net(x).shape
    for m in res.module.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.out_channels >= 1 and m.in_channels >= 1


@SETTINGS
@given(random_nets())
def test_every_channel_belongs_to_one_group_and_members_cover_their_modules(net_side):
    net, side = net_side
    gm = passes.trace(net, torch.zeros(1, 3, side, side))
    groups = passes.channel_groups(gm)
    covered: dict[tuple[str, str], list[int]] = {}
    for g in groups:
        assert g.size >= 1
        for m in g.members:
            assert len(m.positions) == len(m.channels) and m.channels.max() < g.size
            covered.setdefault((m.module, m.kind), []).extend(m.positions.tolist())
    for (name, kind), positions in covered.items():
        module = gm.get_submodule(name)
        width = module.in_channels if kind == "consumer" else getattr(module, "out_channels", None) \
            or getattr(module, "num_features", None) or getattr(module, "num_parameters", None)
        assert sorted(positions) == list(range(width)), (name, kind)


@SETTINGS
@given(random_nets(), st.integers(0, 1000))
def test_pool_and_unpool_sides_keep_the_same_channel_indices(net_side, seed):
    net, side = net_side
    gm = passes.trace(net, torch.zeros(1, 3, side, side))
    ctx = passes.analyse(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), torch.nn.MaxUnpool2d):
            values, indices = ctx.spaces[node.args[0]], ctx.spaces[node.args[1]]
            assert [ctx.ids.find(i) for i in values] == [ctx.ids.find(i) for i in indices]
