"""The channel analysis finds every coupling, with no hand-written channel list."""
import operator

import pytest
import torch
from torch import nn

import matting
import passes

UNPOOL_COUPLINGS = [  # encoder conv whose output channels are the decoder conv's (docs/method.md#teacher)
    ("down1.conv2.cbr_unit.0", "up2.conv.cbr_unit.0"),
    ("down2.conv2.cbr_unit.0", "up3.conv.cbr_unit.0"),
    ("down3.conv3.cbr_unit.0", "up4.conv.cbr_unit.0"),
    ("down4.conv3.cbr_unit.0", "up5.conv.cbr_unit.0"),
]


@pytest.fixture(scope="module")
def dim_groups():
    return passes.channel_groups(passes.trace(matting.dim(width=0.25), torch.zeros(1, 4, 64, 64)))


def group_of(groups, module, kind="producer"):
    return next(g for g in groups if module in g.names(kind))


def test_the_unpool_couplings_are_one_group_each(dim_groups):
    for encoder, decoder in UNPOOL_COUPLINGS:
        g = group_of(dim_groups, encoder)
        assert sorted(g.names("producer")) == sorted([encoder, decoder]) and g.prunable
        # both sides' channel i is the same group channel i: same indices, not just the same count
        members = {m.module: m for m in g.members if m.kind == "producer"}
        assert members[encoder].channels.tolist() == members[decoder].channels.tolist()


def test_down5_output_feeds_up5_unpool_and_is_its_own_group(dim_groups):
    g = group_of(dim_groups, "down5.conv3.cbr_unit.0")
    assert g.names("producer") == ["down5.conv3.cbr_unit.0"]
    assert "up5.conv.cbr_unit.0" in g.names("consumer") and g.prunable


def test_output_layer_and_input_are_frozen(dim_groups):
    out = group_of(dim_groups, "up1.conv.cbr_unit.0")
    assert out.size == 1 and "graph output" in out.frozen
    inp = group_of(dim_groups, "down1.conv1.cbr_unit.0", "consumer")
    assert "graph input" in inp.frozen
    assert sum(g.prunable for g in dim_groups) == 13  # 18 convs - 4 tied pairs - 1 output


def test_residual_add_and_se_gate_tie_channels():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 8, 1),
                                      nn.Sigmoid())
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, x):
            y = self.a(x)
            y = y + self.b(y)
            return self.head(y * self.gate(y))

    groups = passes.channel_groups(passes.trace(Block(), torch.zeros(1, 3, 8, 8)))
    g = group_of(groups, "a")
    assert sorted(g.names("producer")) == ["a", "b", "gate.3"]
    assert group_of(groups, "gate.1").size == 2


def test_concat_offsets_map_consumer_inputs_to_both_groups():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(10, 1, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    groups = passes.channel_groups(passes.trace(Cat(), torch.zeros(1, 3, 4, 4)))
    consumer_a = next(m for m in group_of(groups, "a").members if m.kind == "consumer")
    consumer_b = next(m for m in group_of(groups, "b").members if m.kind == "consumer")
    assert consumer_a.positions.tolist() == [0, 1, 2, 3]
    assert consumer_b.positions.tolist() == list(range(4, 10))


class Weird(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv, self.head, self.op = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), op

    def forward(self, x):
        return self.head(self.op(self.conv(x)))


@pytest.mark.parametrize("op,expected", [
    (lambda y: torch.roll(y, 1, 1), "no channel rule for call_function roll"),
    (lambda y: y.view(y.size(0), y.size(1), -1).view(y.shape), None),  # keeps (N, C, ...): fine
    (lambda y: y.view(1, 8, -1).view(y.shape), None),  # the literal 8 is rewritten (shape_rules)
    (lambda y: y.flatten(1).view(y.size(0), -1, 4, 4), None),  # flattened and folded back: followed
    (lambda y: y.reshape(-1, 4, 4, 4).reshape(y.shape), "merges the channels with the batch dim"),
    (lambda y: torch.softmax(y, 1), "no channel rule"),
    (lambda y: y[:, :4].repeat(1, 2, 1, 1), "indexes the channel dim"),
])
def test_unknown_or_ambiguous_ops_freeze_with_the_node_named(op, expected):
    groups = passes.channel_groups(passes.trace(Weird(op), torch.zeros(1, 3, 4, 4)))
    g = group_of(groups, "conv")
    if expected is None:
        assert g.prunable
    else:
        assert g.frozen is not None and expected in g.frozen


def test_grouping_needs_shapes():
    gm = torch.fx.symbolic_trace(nn.Conv2d(1, 2, 1))
    with pytest.raises(ValueError, match="passes.trace"):
        passes.channel_groups(gm)


def test_module_called_twice_has_one_identity():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.mix, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return self.head(self.mix(self.mix(self.conv(x))))

    groups = passes.channel_groups(passes.trace(Shared(), torch.zeros(1, 3, 4, 4)))
    # mix maps its own output back into its input: in and out channels are one identity
    assert group_of(groups, "conv") is group_of(groups, "mix")


class _SizeUser(nn.Module):
    """SE written with sizes (x.size() into view: follows pruning) or a channel count used as a value."""

    def __init__(self, as_value):
        super().__init__()
        self.as_value = as_value
        self.conv, self.fc, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8), nn.Conv2d(8, 1, 1)

    def forward(self, x):
        y = self.conv(x)
        b, c, _, _ = y.size()
        gate = torch.sigmoid(self.fc(y.mean((2, 3)).view(b, c))).view(b, c, 1, 1)
        y = y * gate
        if self.as_value:
            y = y / y.size(1)  # a mean over channels written by hand: changes with pruning
        return self.head(y)


def test_channel_counts_as_shapes_follow_pruning_but_as_values_freeze():
    x = torch.zeros(1, 3, 8, 8)
    groups = passes.channel_groups(passes.trace(_SizeUser(False), x))
    assert group_of(groups, "conv").prunable
    groups = passes.channel_groups(passes.trace(_SizeUser(True), x))
    frozen = group_of(groups, "conv").frozen
    assert frozen == "truediv: computes with the channel count of 'mul' (it would change with pruning)"
