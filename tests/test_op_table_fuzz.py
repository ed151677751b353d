"""Fuzz over the op table: every op the registry knows, applied on the channel dim of small
random graphs, compiles exactly (compact == masked original, float64) or freezes with a
reason; nothing raises anything but a DCPError."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import compiler
from exactness import prune
from op_catalogue import CATALOGUE
from passes import DCPError, registry

KEYS = list(registry.known_ops())
FAST = settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
CHAINS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def _name(key):
    return key if isinstance(key, str) else f"{getattr(key, '__module__', '')}.{getattr(key, '__name__', key)}"


class Chain(nn.Module):
    """stem conv -> BN -> ReLU -> the ops (each resized back to 8 x 8) -> head conv."""

    def __init__(self, c, ops, widths):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        with torch.no_grad():
            self.bn.weight.uniform_(0.1, 1.1), self.bn.bias.normal_(0, 0.1)
            self.bn.running_mean.normal_(0, 0.1), self.bn.running_var.uniform_(0.5, 2)
        self.ops = nn.ModuleList(ops)
        self.resize = [w != (8, 8) for w in widths]
        self.head = nn.Conv2d(c, 2, 1)  # replaced by build() once the last width is known

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        for op, resize in zip(self.ops, self.resize):
            y = op(y)
            if resize:
                y = F.interpolate(y, size=(8, 8))
        return self.head(y)


def build(draw, keys):
    c = draw(st.integers(2, 6))
    ops, sizes, x = [], [], torch.zeros(2, c, 8, 8)
    for key in keys:
        op = CATALOGUE[key](x.shape[1], draw).eval()
        with torch.no_grad():
            y = op(x)
        ops.append(op)
        sizes.append(tuple(y.shape[2:]))
        x = F.interpolate(y, size=(8, 8)) if tuple(y.shape[2:]) != (8, 8) else y
    net = Chain(c, ops, sizes)
    net.head = nn.Conv2d(x.shape[1], 2, 1)
    return net.eval()


# Ops that cast to a fixed dtype cannot be checked in float64: in float32, and for half a
# half-precision rounding of (float32-close) values may differ by one half ulp (~1e-3).
CASTS = {"float": (torch.float32, 1e-5), "half": (torch.float32, 1e-2)}


def check(net, ratio, keys=()):
    """Compile exactly or refuse with a DCPError; any other exception fails the test."""
    x = torch.randn(2, 3, 8, 8)
    dtype, tol = max((CASTS[k] for k in keys if k in CASTS), key=lambda c: c[1], default=(torch.float64, 1e-9))
    try:
        res = compiler.compile(net, x, ratio=ratio, importance="l1", verify_size=0)
        r = prune(net, x, ratio=ratio, importance="l1", dtype=dtype)
    except DCPError:
        return
    assert r.masked_rel < tol, r.masked_rel
    assert all(g.frozen is None or g.frozen.strip() for g in r.groups)
    assert {k: len(v) for k, v in res.kept.items()} == {k: len(v) for k, v in r.kept.items()}


def test_every_registered_op_has_a_catalogue_entry():
    missing = [_name(k) for k in KEYS if k not in CATALOGUE]
    assert not missing, f"ops without a fuzz recipe in tests/op_catalogue.py: {missing}"


@pytest.mark.parametrize("key", KEYS, ids=_name)
@FAST
@given(data=st.data(), ratio=st.sampled_from([0.3, 0.6]))
def test_each_op_compiles_exactly_or_freezes(key, data, ratio):
    check(build(data.draw, [key]), ratio, [key])


@CHAINS
@given(data=st.data(), ratio=st.floats(0.0, 0.8))
def test_random_op_chains_compile_exactly_or_freeze(data, ratio):
    keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=2, max_size=4))
    check(build(data.draw, keys), ratio, keys)


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS, ids=_name)
@SLOW
@given(data=st.data(), ratio=st.floats(0.0, 0.9))
def test_each_op_compiles_exactly_or_freezes_slow(key, data, ratio):
    check(build(data.draw, [key]), ratio, [key])


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), ratio=st.floats(0.0, 0.9))
def test_random_op_chains_compile_exactly_or_freeze_slow(data, ratio):
    keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=2, max_size=6))
    check(build(data.draw, keys), ratio, keys)
