"""The shape formulas of passes/shape_formulas.py against real runs, and trace metadata against a real forward."""
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st
from torch import nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

import passes
from passes.shape_formulas import FUNCTION_SHAPES, MODULE_SHAPES

small = st.integers(1, 4)
SETTINGS = settings(max_examples=150, deadline=None)


def real_shape(mod, x):
    """The real op's output shape, or None when the real op rejects the input."""
    try:
        with torch.no_grad():
            return tuple(mod(x).shape)
    except (RuntimeError, IndexError, ValueError):
        return None


def check_rule(mod, x):
    """Where the real op runs, the rule gives its shape; where it raises, the rule declines (the
    caller then runs the op, which raises). Empty outputs may be left to the op too."""
    got, real = MODULE_SHAPES[type(mod)](mod, x.to("meta")), real_shape(mod, x)
    if got is None and real is not None:
        assert 0 in real, (mod, tuple(x.shape), real)
    else:
        assert got == real, (mod, tuple(x.shape))


@SETTINGS
@given(n=st.integers(1, 3), size=st.lists(st.integers(1, 9), min_size=3, max_size=3), k=small, s=small,
       p=st.integers(0, 3), d=st.integers(1, 3), groups=st.sampled_from([1, 2]), same=st.booleans())
def test_conv_rule(n, size, k, s, p, d, groups, same):
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
    padding = "same" if same and s == 1 else p
    mod = conv(2, 4, k, stride=s, padding=padding, dilation=d, groups=groups)
    check_rule(mod, torch.randn(2, 2, *size[:n]))


@SETTINGS
@given(n=st.integers(1, 3), size=st.lists(st.integers(1, 6), min_size=3, max_size=3), k=small, s=small,
       p=st.integers(0, 3), d=small, op=st.integers(0, 3), groups=st.sampled_from([1, 2]))
def test_conv_transpose_rule(n, size, k, s, p, d, op, groups):
    conv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1]
    mod = conv(2, 4, k, stride=s, padding=p, output_padding=op, dilation=d, groups=groups)
    check_rule(mod, torch.randn(1, 2, *size[:n]))


@SETTINGS
@given(n=st.integers(1, 3), size=st.lists(st.integers(1, 9), min_size=3, max_size=3), k=small,
       s=st.one_of(st.none(), small), p=st.integers(0, 2), d=st.integers(1, 3), ceil=st.booleans(),
       avg=st.booleans(), batched=st.booleans())
def test_pool_rule(n, size, k, s, p, d, ceil, avg, batched):
    if avg:
        mod = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[n - 1](k, s, p, ceil_mode=ceil)
    else:
        mod = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[n - 1](k, s, p, dilation=d, ceil_mode=ceil)
    check_rule(mod, torch.randn(*([2] if batched else []), 3, *size[:n]))


@SETTINGS
@given(n=st.integers(1, 3), size=st.lists(st.integers(1, 9), min_size=3, max_size=3),
       out=st.lists(st.one_of(st.none(), st.integers(1, 5)), min_size=3, max_size=3), use_max=st.booleans())
def test_adaptive_pool_rule(n, size, out, use_max):
    kinds = {1: (nn.AdaptiveAvgPool1d,), 2: (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), 3: (nn.AdaptiveAvgPool3d,)}[n]
    kind = kinds[-1] if use_max else kinds[0]
    output_size = out[0] if n == 1 else tuple(out[:n])
    assume(output_size is not None)
    check_rule(kind(output_size), torch.randn(2, 3, *size[:n]))


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), start=st.integers(-4, 3), end=st.integers(-4, 3),
       features=st.integers(1, 4))
def test_linear_and_flatten_rules(shape, start, end, features):
    x = torch.randn(*shape)
    check_rule(nn.Linear(features, 3), x)
    check_rule(nn.Flatten(start, end), x)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), c=st.integers(1, 4), kind=st.sampled_from(
    ["bn1", "bn2", "bn3", "in2", "gn", "ln", "prelu", "relu"]), training=st.booleans(), stats=st.booleans())
def test_shape_keeping_rules_check_the_channel_count(shape, c, kind, training, stats):
    mod = {"bn1": lambda: nn.BatchNorm1d(c, track_running_stats=stats),
           "bn2": lambda: nn.BatchNorm2d(c, track_running_stats=stats),
           "bn3": lambda: nn.BatchNorm3d(c, track_running_stats=stats),
           "in2": lambda: nn.InstanceNorm2d(c, affine=True, track_running_stats=stats),
           "gn": lambda: nn.GroupNorm(2 if c % 2 == 0 else 1, c),
           "ln": lambda: nn.LayerNorm(shape[-2:]), "prelu": lambda: nn.PReLU(c), "relu": nn.ReLU}[kind]()
    x = torch.randn(*shape)
    if kind == "in2" and x.dim() == 3:  # unbatched: channels are dim 0, left to the op itself
        assert MODULE_SHAPES[type(mod)](mod, x.to("meta")) is None
        return
    check_rule(mod.train(training), x)


@SETTINGS
@given(a=st.lists(st.integers(1, 3), max_size=4), b=st.lists(st.integers(1, 3), max_size=4),
       op=st.sampled_from([operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul]),
       dtypes=st.sampled_from([(torch.float32, torch.float32), (torch.float64, torch.float32),
                               (torch.float16, torch.float64)]),
       scalar=st.sampled_from([None, 2, 0.5, True]))
def test_binary_rule_broadcasts_and_promotes_as_the_real_op(a, b, op, dtypes, scalar):
    x = torch.ones(a, dtype=dtypes[0])
    y = torch.ones(b, dtype=dtypes[1]) if scalar is None else scalar
    try:
        real = op(x, y)
    except RuntimeError:
        real = None
    got = FUNCTION_SHAPES[op]((x.to("meta"), y.to("meta") if scalar is None else y), {})
    if got is None:  # declined: the op fails, a bool operand, nothing to broadcast (0-dim and numbers)
        assert real is None or scalar is True or real.dim() == 0
    else:
        assert real is not None and got == (tuple(real.shape), real.dtype)


@SETTINGS
@given(n=st.integers(1, 3), size=st.lists(st.integers(1, 7), min_size=3, max_size=3),
       mode=st.sampled_from(["nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear"]),
       out=st.one_of(st.integers(1, 9), st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)),
       scale=st.one_of(st.none(), st.sampled_from([0.5, 1.7, 2, 3.0, 0.26]),
                       st.lists(st.sampled_from([0.5, 2.0, 1.25]), min_size=1, max_size=3).map(tuple)),
       align=st.sampled_from([None, False, True]), positional=st.booleans())
def test_interpolate_rule(n, size, mode, out, scale, align, positional):
    x = torch.randn(1, 2, *size[:n])
    kwargs = {"size": None if scale is not None else out, "scale_factor": scale, "mode": mode, "align_corners": align}
    args = (x, *kwargs.values()) if positional else (x,)
    kwargs = {} if positional else kwargs
    try:
        real = F.interpolate(*args, **kwargs)
    except (RuntimeError, ValueError, NotImplementedError, TypeError):
        real = None
    got = FUNCTION_SHAPES[F.interpolate]((x.to("meta"), *args[1:]), kwargs)
    if got is None:
        assert real is None, (args[1:], kwargs)
    else:
        assert real is not None and got == (tuple(real.shape), real.dtype), (args[1:], kwargs)


# --- the whole trace against a real forward ------------------------------------------------
def layout(shape, stride):
    """Strides that matter: a size-1 dim's stride is arbitrary (CPU and meta kernels differ there)."""
    return tuple(st for size, st in zip(shape, stride) if size != 1)


def assert_metadata_matches_a_real_forward(model, x, leaf_modules=()):
    gm = passes.trace(model, x, leaf_modules)
    real = {}
    with torch.no_grad():
        interp = torch.fx.Interpreter(gm)
        run_node = interp.run_node

        def keep(n):
            real[n.name] = run_node(n)
            return real[n.name]
        interp.run_node = keep
        interp.run(x)
    for n in gm.graph.nodes:
        if isinstance(real[n.name], torch.Tensor):
            meta, value = n.meta["tensor_meta"], real[n.name]
            assert (tuple(meta.shape), meta.dtype) == (tuple(value.shape), value.dtype), n.name
            if x.is_contiguous():  # torch's meta conv returns row-major where the CPU one keeps channels-last
                assert (layout(meta.shape, meta.stride), meta.memory_format) == \
                    (layout(value.shape, value.stride()), _extract_tensor_metadata(value).memory_format), n.name
            assert n.meta["type"] is torch.Tensor and n.meta["val"].shape == value.shape
    return gm


LAYERS = {
    "conv": lambda c: nn.Conv2d(c, c, 3, padding=1), "strided": lambda c: nn.Conv2d(c, c, 3, stride=2),
    "tconv": lambda c: nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1),
    "bn": nn.BatchNorm2d, "relu": lambda c: nn.ReLU(), "hswish": lambda c: nn.Hardswish(),
    "maxpool": lambda c: nn.MaxPool2d(2, ceil_mode=True), "avgpool": lambda c: nn.AvgPool2d(3, 1, 1),
    "gn": lambda c: nn.GroupNorm(1, c), "dw": lambda c: nn.Conv2d(c, c, 3, padding=1, groups=c),
}


KEEPS_SHAPE = {"conv", "bn", "relu", "hswish", "avgpool", "gn", "dw"}


class Chain(nn.Module):
    def __init__(self, names, c):
        super().__init__()
        self.layers = nn.ModuleList(LAYERS[k](c) for k in names)
        self.residual = [k in KEEPS_SHAPE and i % 2 == 1 for i, k in enumerate(names)]
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        for layer, residual in zip(self.layers, self.residual):
            y = layer(x)
            x = y + x * 0.5 if residual else F.relu(y)
        x = F.interpolate(x, size=(x.shape[-2] + 1, x.shape[-1] * 2), mode="bilinear", align_corners=False)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)) * torch.sigmoid(x.mean())


@settings(max_examples=25, deadline=None)
@given(names=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=6), c=st.integers(1, 4),
       side=st.integers(9, 16), dtype=st.sampled_from([torch.float32, torch.float64]), channels_last=st.booleans())
def test_trace_metadata_matches_a_real_forward(names, c, side, dtype, channels_last):
    model = Chain(names, c).to(dtype).eval()
    x = torch.randn(2, c, side, side, dtype=dtype)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError:  # downsampled below a kernel: tracing must fail too, naming the node
        with pytest.raises(passes.DCPError, match="shape propagation failed at node"):
            passes.trace(model, x)
        return
    assert_metadata_matches_a_real_forward(model, x)


def test_hooks_and_subclasses_are_run_not_guessed():
    class Wider(nn.Conv2d):  # a subclass may change forward(): the formula is for nn.Conv2d only
        def forward(self, x):
            return torch.cat([super().forward(x)] * 2, 1)

    hooked = nn.Conv2d(3, 4, 3)
    hooked.register_forward_hook(lambda mod, args, out: out[:, :2])
    patched = nn.MaxPool2d(2)
    patched.forward = lambda x: x[:, :, ::3]  # on the instance, as some wrappers do
    model = nn.Sequential(hooked, Wider(2, 3, 1), patched)
    gm = assert_metadata_matches_a_real_forward(model, torch.randn(1, 3, 8, 8), leaf_modules=(Wider,))
    assert [tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op == "call_module"] == \
        [(1, 2, 6, 6), (1, 6, 6, 6), (1, 6, 2, 6)]


def test_a_shape_error_names_the_node():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(5, 4, 3))
    with pytest.raises(passes.DCPError, match="node '_1' \\(call_module 1\\).*5 channels"):
        passes.trace(model, torch.randn(1, 3, 8, 8))


def test_an_op_that_cannot_run_on_meta_falls_back_to_fake_tensors():
    class CpuConstant(nn.Module):  # a tensor made inside forward lives on the CPU: meta * CPU fails
        def forward(self, x):
            return nn.functional.relu(x) * torch.ones(1, x.shape[1], 1, 1) + 1.5

    model = nn.Sequential(nn.Conv2d(3, 4, 3), CpuConstant())
    assert_metadata_matches_a_real_forward(model, torch.randn(2, 3, 7, 7))
