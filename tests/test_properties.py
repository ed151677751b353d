"""Property tests over random small graphs: every compile is exact against the masked original."""
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import compiler
import passes
import passes.verify
from exactness import prune
from random_nets import random_nets

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The compile check masks functional members only once verify masks node by node.
NODE_LEVEL_VERIFY = hasattr(passes.verify, "MaskedGraph")


def random_scores(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.out_channels, generator=g) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1}


@SETTINGS
@given(random_nets(functional=NODE_LEVEL_VERIFY), st.floats(0.0, 0.9), st.integers(1, 4), st.integers(0, 1000))
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
@given(random_nets(functional=True), st.floats(0.0, 0.9))
def test_functional_forms_compact_equals_masked_original_in_float64(net_side, ratio):
    net, side = net_side
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = prune(net, torch.randn(2, 3, side, side), ratio=ratio, importance="l1")
    assert r.masked_rel < 1e-12
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # input left untouched


def _member_width(gm, member):
    if member.axis is not None:
        owner, _, name = member.module.rpartition(".")
        return getattr(gm.get_submodule(owner), name).shape[member.axis]
    module = gm.get_submodule(member.module)
    return module.in_channels if member.kind == "consumer" else getattr(module, "out_channels", None) \
        or getattr(module, "num_features", None) or getattr(module, "num_parameters", None)


@SETTINGS
@given(random_nets(functional=True))
def test_every_channel_belongs_to_one_group_and_members_cover_their_modules(net_side):
    net, side = net_side
    gm = passes.trace(net, torch.zeros(1, 3, side, side))
    groups = passes.channel_groups(gm)
    covered: dict[tuple[str, str], list[int]] = {}
    for g in groups:
        assert g.size >= 1
        for m in g.members:
            assert len(m.positions) == len(m.channels) and m.channels.max() < g.size
            covered.setdefault((m.module, m.kind), (m, []))[1].extend(m.positions.tolist())
    for (name, kind), (member, positions) in covered.items():
        assert sorted(positions) == list(range(_member_width(gm, member))), (name, kind)


@SETTINGS
@given(random_nets(functional=True), st.integers(0, 1000))
def test_pool_and_unpool_sides_keep_the_same_channel_indices(net_side, seed):
    net, side = net_side
    gm = passes.trace(net, torch.zeros(1, 3, side, side))
    ctx = passes.analyse(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), torch.nn.MaxUnpool2d) \
                or node.target is F.max_unpool2d:
            values, indices = ctx.spaces[node.args[0]], ctx.spaces[node.args[1]]
            assert [ctx.ids.find(i) for i in values] == [ctx.ids.find(i) for i in indices]
