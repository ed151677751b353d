"""passes.lower_unpool: MaxUnpool (and pool indices) lowered to dense ops, exactly equal."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import matting
from passes.errors import DCPError
from passes.lower_unpool import dense_max_unpool2d, lower_unpool


@pytest.fixture(scope="module")
def dim_pair():
    model = matting.dim(width=0.125).eval()
    return model, lower_unpool(model)


@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (2, 4, 97, 131), (1, 4, 200, 150), (1, 4, 33, 47)])
def test_lowered_dim_is_bit_identical_at_even_and_odd_sizes(dim_pair, shape):
    model, lowered = dim_pair
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(lowered(x), model(x))


def test_lowered_graph_has_no_unpool_and_no_pool_indices(dim_pair):
    _, lowered = dim_pair
    assert not any(isinstance(m, (nn.MaxUnpool2d, nn.MaxPool2d)) for m in lowered.modules())
    targets = [n.target for n in lowered.graph.nodes]
    assert targets.count(dense_max_unpool2d) == 5 and targets.count(F.max_pool2d) == 5
    assert lowered.meta["unlowered_unpools"] == {}


def test_original_model_is_left_untouched(dim_pair):
    model, _ = dim_pair
    assert isinstance(model.up1.unpool, nn.MaxUnpool2d)


def test_ties_pick_the_same_element_as_max_pool():
    # integer inputs and ReLU zeros make most windows tied: the first max in row-major order wins
    x = torch.randint(0, 3, (2, 3, 9, 11)).float()
    for inp in (x, F.relu(x - 1)):
        v, idx = F.max_pool2d(inp, 2, return_indices=True)
        values = torch.randn_like(v)  # the decoder's values, not the pooled ones
        expected = F.max_unpool2d(values, idx, 2, output_size=inp.shape[-2:])
        assert torch.equal(dense_max_unpool2d(values, inp, 2, inp.shape), expected)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), extra_h=st.integers(0, 2), extra_w=st.integers(0, 2),
       stride=st.sampled_from([2, 3]))
def test_dense_unpool_equals_max_unpool_for_any_size(h, w, extra_h, extra_w, stride):
    big_h, big_w = h * stride + min(extra_h, stride - 1), w * stride + min(extra_w, stride - 1)
    x = torch.randn(1, 2, big_h, big_w)
    v, idx = F.max_pool2d(x, stride, return_indices=True)
    assert v.shape[-2:] == (h, w)
    expected = F.max_unpool2d(v * 3, idx, stride, output_size=(big_h, big_w))
    assert torch.equal(dense_max_unpool2d(v * 3, x, stride, (big_h, big_w)), expected)


def test_functional_pool_and_unpool_without_output_size_are_lowered():
    class Net(nn.Module):
        def forward(self, x):
            v, i = F.max_pool2d(x, 2, return_indices=True)
            return F.max_unpool2d(torch.sigmoid(v), i, 2) + F.max_unpool2d(v, i, kernel_size=2, output_size=x.shape)

    lowered = lower_unpool(Net())
    assert not any(n.target in (F.max_unpool2d, F.max_pool2d_with_indices) for n in lowered.graph.nodes)
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(lowered(x), Net()(x))


class Unsafe(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool, self.unpool = pool, nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        v, i = self.pool(x)
        return self.unpool(v, i, output_size=x.shape)


@pytest.mark.parametrize("pool,reason", [
    (nn.MaxPool2d(3, 2, return_indices=True), "does not match"),
    (nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True), "does not match"),
    (nn.MaxPool2d(2, 2, padding=1, return_indices=True), "does not match"),
])
def test_unpools_that_cannot_be_proven_exact_are_refused_or_left(pool, reason):
    with pytest.raises(DCPError, match=f"cannot lower unpool 'unpool'.*{reason}"):
        lower_unpool(Unsafe(pool))
    kept = lower_unpool(Unsafe(pool), strict=False)
    assert isinstance(kept.unpool, nn.MaxUnpool2d) and reason in kept.meta["unlowered_unpools"]["unpool"]


def test_indices_from_elsewhere_are_refused():
    class Foreign(nn.Module):
        def forward(self, x, idx):
            return F.max_unpool2d(x, idx, 2)
    with pytest.raises(DCPError, match="do not provably come from a MaxPool2d"):
        lower_unpool(Foreign())
