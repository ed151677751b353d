"""For every op the registry knows, ways to apply it to a (N, C, H, W) value's channel dim.

``CATALOGUE[key](c, draw)`` returns an ``Op``: a module whose forward maps a (N, c, 8, 8)
tensor through that op (with whatever it needs around it: pool indices for an unpool, a
rank change for 1-d/3-d ops, a parameter for a functional conv) back to a 4-D tensor.
``draw(strategy)`` picks among variants, channel-moving ones included (they must freeze).
Run an ``Op`` once eagerly before tracing it (``Op.to4`` learns its output rank then).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import fx, nn

fx.wrap("len")


class Op(nn.Module):
    """Applies ``fn(self, x)``; parameters and submodules it needs are attributes."""

    def __init__(self, fn, **attrs):
        super().__init__()
        self.fn = fn
        for k, v in attrs.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(self, x)

    def to4(self, y):
        """Back to a 4-D value with channels on dim 1 (the next op's input). The rank is read
        on the eager probe run (a traced value's rank is not a Python int)."""
        if not isinstance(y, fx.Proxy):
            self.tuple_out, y0 = isinstance(y, (tuple, list)), y[0] if isinstance(y, (tuple, list)) else y
            self.rank = y0.dim()
        if self.tuple_out:
            y = y[0]
        for _ in range(4 - self.rank):
            y = y.unsqueeze(-1)
        return y


def _p(*shape, positive=False):
    return nn.Parameter(torch.rand(*shape) + 0.5 if positive else torch.randn(*shape) * 0.5)


def _pass(factory):
    return lambda c, draw: Op(lambda s, x: s.to4(s.m(x)), m=factory(c))


def _fn(fn):
    return lambda c, draw: Op(lambda s, x: s.to4(fn(x)))


def _rank(c, draw, make, rank):
    """Apply a 1-d (rank 3) or 3-d (rank 5) module ``make(c)`` and come back to rank 4."""
    if rank == 3:
        return Op(lambda s, x: s.to4(s.m(x.flatten(2))), m=make(c))
    return Op(lambda s, x: s.m(x.unsqueeze(2)).mean(2), m=make(c))


def _norm(cls, rank):
    def build(c, draw):
        kw = draw(st.sampled_from([{}, {"affine": True, "track_running_stats": True}])) \
            if "Instance" in cls.__name__ else {}
        m = cls(c, **kw)
        if getattr(m, "running_var", None) is not None:
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
        if getattr(m, "weight", None) is not None:
            with torch.no_grad():
                m.weight.uniform_(0.1, 1.1), m.bias.normal_(0, 0.1)
        return _rank(c, draw, lambda _: m, rank) if rank != 4 else Op(lambda s, x: s.m(x), m=m)
    return build


def _conv(cls, rank):
    def build(c, draw):
        transposed = "Transpose" in cls.__name__
        depthwise = not transposed and draw(st.booleans())
        cout = c if depthwise else draw(st.integers(1, 6))
        m = cls(c, cout, 1, groups=c if depthwise else 1)
        return _rank(c, draw, lambda _: m, rank) if rank != 4 else Op(lambda s, x: s.m(x), m=m)
    return build


def _pool_unpool(pool_fn, unpool_fn, rank, **modules):
    """max pool with indices then max unpool, in ``rank`` dims (functional or module forms):
    ``pool(s, x)``, ``unpool(s, values, indices, size)``; ``modules`` become submodules."""
    def build(c, draw):
        def fn(s, x):
            x = x.flatten(2) if rank == 3 else x.unsqueeze(2) if rank == 5 else x
            v, i = pool_fn(s, x)
            y = unpool_fn(s, v, i, x.shape[2:])
            return y.unsqueeze(-1) if rank == 3 else y.mean(2) if rank == 5 else y
        return Op(fn, **{k: factory() for k, factory in modules.items()})
    return build


def _mod_pool(pool_cls, unpool_cls, rank):
    k = (1, 2, 2) if rank == 5 else 2
    return _pool_unpool(lambda s, x: s.pool(x), lambda s, v, i, size: s.unpool(v, i, output_size=size), rank,
                        pool=lambda: pool_cls(k, k, return_indices=True), unpool=lambda: unpool_cls(k, k))


def _fn_pool(pool_fn, unpool_fn, rank):
    k = (1, 2, 2) if rank == 5 else 2
    return _pool_unpool(lambda s, x: pool_fn(x, k, k, return_indices=True),
                        lambda s, v, i, size: unpool_fn(v, i, k, k, output_size=size), rank)


def _elementwise(op):
    """``op`` on x and another value: a tied tensor, a broadcast (1, C, 1, 1) parameter, a
    (C, 1, 1) buffer, a size-1 channel, a scalar, or a (1, 1, 1, W) that broadcasts spatially."""
    def build(c, draw):
        kind = draw(st.sampled_from(["tensor", "param", "buffer", "one", "scalar", "spatial"]))
        m = Op(None)
        if kind == "param":
            m.other = _p(1, c, 1, 1, positive=True)
        elif kind in ("buffer", "spatial"):
            m.register_buffer("other", torch.rand(c, 1, 1) + 0.5 if kind == "buffer" else torch.rand(1, 1, 1, 8) + 0.5)

        def fn(s, x):
            y = {"tensor": lambda: torch.sigmoid(x) + 0.5, "one": lambda: x.mean(1, keepdim=True).abs() + 0.5,
                 "scalar": lambda: 2.0}.get(kind, lambda: s.other)()
            return op(x.clone(), y) if op in (operator.iadd, operator.imul) else op(x, y)
        m.fn = fn
        return m
    return build


def _method(name, *args):
    return lambda c, draw: Op(lambda s, x: s.to4(getattr(x.clone() if name.endswith("_") else x, name)(*args)))


def _linear(functional):
    """On pooled (N, C) features (prunable), or on the last dim of a 4-D value (must freeze)."""
    def build(c, draw):
        cout, pooled = draw(st.integers(1, 5)), draw(st.booleans())
        if functional:
            w, b = (_p(cout, c), _p(cout)) if pooled else (_p(cout, 8), _p(cout))
            return Op(lambda s, x: s.to4(F.linear(x.mean((2, 3)) if pooled else x, s.w, s.b)), w=w, b=b)
        m = nn.Linear(c if pooled else 8, cout)
        return Op(lambda s, x: s.to4(s.m(x.mean((2, 3)) if pooled else x)), m=m)
    return build


def _fconv(fn, transposed, rank):
    def build(c, draw):
        cout = draw(st.integers(1, 5))
        shape = (c, cout) if transposed else (cout, c)
        op = Op(lambda s, x: fn(x, s.w, s.b), w=_p(*shape, *[1] * (rank - 2)), b=_p(cout))
        return _rank(c, draw, lambda _: op, rank) if rank != 4 else op
    return build


def _fnorm(which):
    def build(c, draw):
        rm, rv = torch.randn(c) * 0.1, torch.rand(c) + 0.5
        m = Op(None, w=_p(c, positive=True), b=_p(c))
        m.register_buffer("rm", rm), m.register_buffer("rv", rv)
        groups = draw(st.sampled_from([c, 1]))
        m.fn = {"batch": lambda s, x: F.batch_norm(x, s.rm, s.rv, s.w, s.b, False, 0.1, 1e-5),
                "instance": lambda s, x: F.instance_norm(x, None, None, s.w, s.b),
                "group": lambda s, x: F.group_norm(x, groups, s.w, s.b),
                "prelu": lambda s, x: F.prelu(x, s.w)}[which]
        return m
    return build


def _pad(c, draw):
    """Spatial pads, channel pads, a cropping channel pad, a batch pad."""
    widths = draw(st.sampled_from([(1, 1), (0, 1, 2, 0), (0, 0, 0, 0, 1, 2), (0, 0, 0, 0, 0, 3),
                                   (1, 0, 0, 0, -1, 1), (0, 0, 0, 0, 1, 0, 1, 0)]))
    value = draw(st.sampled_from([0.0, 0.3]))
    return Op(lambda s, x: F.pad(x, widths, value=value))


def _cat(fn):
    def build(c, draw):
        dim = draw(st.sampled_from([1, 2, -1]))
        return Op(lambda s, x: fn([x, torch.relu(x)], dim))
    return build


def _getitem(c, draw):
    index = draw(st.sampled_from(["spatial", "channel", "full", "none"]))
    return Op({"spatial": lambda s, x: x[:, :, 1:, :], "channel": lambda s, x: x[:, : max(1, c // 2)],
               "full": lambda s, x: x[:], "none": lambda s, x: x[:, :, None].squeeze(2)}[index])


def _reduce(fn, method=False):
    def build(c, draw):
        dims = draw(st.sampled_from([(2, 3), (1,), (3,)]))
        keep = draw(st.booleans())
        f = (lambda x: getattr(x, fn)(dims, keepdim=keep)) if method else (lambda x: fn(x, dims, keepdim=keep))
        return Op(lambda s, x: s.to4(f(x)))
    return build


def _shape_op(variants):
    def build(c, draw):
        return Op(draw(st.sampled_from(variants)))
    return build


_RESHAPES = [lambda s, x: x.view(x.shape[0], x.shape[1], -1).view(x.shape),
             lambda s, x: x.view(x.shape[0], -1).unsqueeze(-1).unsqueeze(-1),
             lambda s, x: x.reshape(x.shape[0], 2, -1, 8)]
_PERMUTES = [lambda s, x: x.permute(0, 1, 3, 2), lambda s, x: x.permute(0, 2, 1, 3)]
_TRANSPOSES = [lambda s, x: x.transpose(2, 3), lambda s, x: x.transpose(1, 2)]


def _split(fn):
    def build(c, draw):
        dim, size = draw(st.sampled_from([1, 2])), draw(st.integers(1, 4))
        return Op(lambda s, x: torch.cat(fn(x, size, dim), dim))
    return build


ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
               nn.Tanh, nn.ELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity)


def _torchvision_sd(c, draw):
    from torchvision.ops import StochasticDepth
    return Op(lambda s, x: s.m(x), m=StochasticDepth(0.2, "row"))


def _torchvision_sd_fn(c, draw):
    from torchvision.ops import stochastic_depth
    return Op(lambda s, x: stochastic_depth(x, 0.2, "row", False))


CATALOGUE = {
    **{cls: _pass(lambda c, cls=cls: cls()) for cls in ACT_MODULES},
    nn.Dropout1d: lambda c, draw: _rank(c, draw, lambda _: nn.Dropout1d(), 3),
    nn.Dropout3d: lambda c, draw: _rank(c, draw, lambda _: nn.Dropout3d(), 5),
    nn.AvgPool1d: lambda c, draw: _rank(c, draw, lambda _: nn.AvgPool1d(2), 3),
    nn.AvgPool2d: _pass(lambda c: nn.AvgPool2d(2)),
    nn.AvgPool3d: lambda c, draw: _rank(c, draw, lambda _: nn.AvgPool3d((1, 2, 2)), 5),
    nn.AdaptiveAvgPool1d: lambda c, draw: _rank(c, draw, lambda _: nn.AdaptiveAvgPool1d(4), 3),
    nn.AdaptiveAvgPool2d: _pass(lambda c: nn.AdaptiveAvgPool2d(3)),
    nn.AdaptiveAvgPool3d: lambda c, draw: _rank(c, draw, lambda _: nn.AdaptiveAvgPool3d((1, 2, 2)), 5),
    nn.AdaptiveMaxPool1d: lambda c, draw: _rank(c, draw, lambda _: nn.AdaptiveMaxPool1d(4), 3),
    nn.AdaptiveMaxPool2d: _pass(lambda c: nn.AdaptiveMaxPool2d(3)),
    nn.AdaptiveMaxPool3d: lambda c, draw: _rank(c, draw, lambda _: nn.AdaptiveMaxPool3d((1, 2, 2)), 5),
    nn.Upsample: _pass(lambda c: nn.Upsample(scale_factor=2)),
    nn.UpsamplingNearest2d: _pass(lambda c: nn.UpsamplingNearest2d(scale_factor=2)),
    nn.UpsamplingBilinear2d: _pass(lambda c: nn.UpsamplingBilinear2d(scale_factor=2)),
    nn.Conv1d: _conv(nn.Conv1d, 3), nn.Conv2d: _conv(nn.Conv2d, 4), nn.Conv3d: _conv(nn.Conv3d, 5),
    nn.ConvTranspose1d: _conv(nn.ConvTranspose1d, 3), nn.ConvTranspose2d: _conv(nn.ConvTranspose2d, 4),
    nn.ConvTranspose3d: _conv(nn.ConvTranspose3d, 5),
    nn.Linear: _linear(False),
    nn.BatchNorm1d: _norm(nn.BatchNorm1d, 3), nn.BatchNorm2d: _norm(nn.BatchNorm2d, 4),
    nn.BatchNorm3d: _norm(nn.BatchNorm3d, 5), nn.InstanceNorm1d: _norm(nn.InstanceNorm1d, 3),
    nn.InstanceNorm2d: _norm(nn.InstanceNorm2d, 4), nn.InstanceNorm3d: _norm(nn.InstanceNorm3d, 5),
    nn.GroupNorm: lambda c, draw: Op(lambda s, x: s.m(x), m=nn.GroupNorm(draw(st.sampled_from([c, 1])), c)),
    nn.LayerNorm: lambda c, draw: Op(lambda s, x: s.m(x), m=nn.LayerNorm(draw(st.sampled_from([[8], [8, 8], [c, 8, 8]])))),
    nn.PReLU: lambda c, draw: Op(lambda s, x: s.m(x), m=nn.PReLU(draw(st.sampled_from([1, c])))),
    nn.MaxPool1d: _mod_pool(nn.MaxPool1d, nn.MaxUnpool1d, 3), nn.MaxPool2d: _mod_pool(nn.MaxPool2d, nn.MaxUnpool2d, 4),
    nn.MaxPool3d: lambda c, draw: _rank(c, draw, lambda _: nn.MaxPool3d((1, 2, 2)), 5),
    nn.MaxUnpool1d: _mod_pool(nn.MaxPool1d, nn.MaxUnpool1d, 3),
    nn.MaxUnpool2d: _mod_pool(nn.MaxPool2d, nn.MaxUnpool2d, 4),
    nn.MaxUnpool3d: _mod_pool(nn.MaxPool3d, nn.MaxUnpool3d, 5),
    nn.Flatten: lambda c, draw: Op(lambda s, x: s.to4(s.m(x)), m=nn.Flatten(draw(st.sampled_from([1, 2])))),
    "torchvision.ops.stochastic_depth.StochasticDepth": _torchvision_sd,
    "torchvision.ops.stochastic_depth.stochastic_depth": _torchvision_sd_fn,
    **{f: _fn(f) for f in (F.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.hardtanh,
                           F.elu, torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, operator.neg, operator.pos)},
    # as models call them: F.dropout(x, p, self.training), traced in eval
    F.dropout: _fn(lambda x: F.dropout(x, 0.5, False)), F.dropout2d: _fn(lambda x: F.dropout2d(x, 0.5, False)),
    torch.clamp: _fn(lambda x: torch.clamp(x, -0.5, 0.5)),
    F.interpolate: _fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear")),
    F.avg_pool1d: _fn(lambda x: F.avg_pool1d(x.flatten(2), 2).unsqueeze(-1)),
    F.avg_pool2d: _fn(lambda x: F.avg_pool2d(x, 2)),
    F.avg_pool3d: _fn(lambda x: F.avg_pool3d(x.unsqueeze(2), (1, 2, 2)).mean(2)),
    F.adaptive_avg_pool1d: _fn(lambda x: F.adaptive_avg_pool1d(x.flatten(2), 3).unsqueeze(-1)),
    F.adaptive_avg_pool2d: _fn(lambda x: F.adaptive_avg_pool2d(x, 3)),
    F.adaptive_avg_pool3d: _fn(lambda x: F.adaptive_avg_pool3d(x.unsqueeze(2), (1, 3, 3)).mean(2)),
    F.adaptive_max_pool1d: _fn(lambda x: F.adaptive_max_pool1d(x.flatten(2), 3).unsqueeze(-1)),
    F.adaptive_max_pool2d: _fn(lambda x: F.adaptive_max_pool2d(x, 3)),
    F.adaptive_max_pool3d: _fn(lambda x: F.adaptive_max_pool3d(x.unsqueeze(2), (1, 3, 3)).mean(2)),
    F.pad: _pad,
    F.max_pool1d: _fn(lambda x: F.max_pool1d(x.flatten(2), 2).unsqueeze(-1)),
    F.max_pool2d: _fn(lambda x: F.max_pool2d(x, 2)),
    F.max_pool3d: _fn(lambda x: F.max_pool3d(x.unsqueeze(2), (1, 2, 2)).mean(2)),
    F.max_pool1d_with_indices: _fn_pool(F.max_pool1d, F.max_unpool1d, 3),
    F.max_pool2d_with_indices: _fn_pool(F.max_pool2d, F.max_unpool2d, 4),
    F.max_pool3d_with_indices: _fn_pool(F.max_pool3d, F.max_unpool3d, 5),
    F.max_unpool1d: _fn_pool(F.max_pool1d, F.max_unpool1d, 3),
    F.max_unpool2d: _fn_pool(F.max_pool2d, F.max_unpool2d, 4),
    F.max_unpool3d: _fn_pool(F.max_pool3d, F.max_unpool3d, 5),
    F.conv1d: _fconv(F.conv1d, False, 3), F.conv2d: _fconv(F.conv2d, False, 4), F.conv3d: _fconv(F.conv3d, False, 5),
    F.conv_transpose1d: _fconv(F.conv_transpose1d, True, 3), F.conv_transpose2d: _fconv(F.conv_transpose2d, True, 4),
    F.conv_transpose3d: _fconv(F.conv_transpose3d, True, 5),
    F.linear: _linear(True),
    F.layer_norm: lambda c, draw: Op(lambda s, x, shape=draw(st.sampled_from([(8,), (8, 8), (c, 8, 8)])):
                                     F.layer_norm(x, shape)),
    F.batch_norm: _fnorm("batch"), F.instance_norm: _fnorm("instance"), F.group_norm: _fnorm("group"),
    F.prelu: _fnorm("prelu"),
    **{op: _elementwise(op) for op in (operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                                       operator.imul, torch.add, torch.sub, torch.mul, torch.div)},
    torch.cat: _cat(torch.cat), torch.concat: _cat(torch.concat), operator.getitem: _getitem,
    torch.mean: _reduce(torch.mean), torch.sum: _reduce(torch.sum), torch.amax: _reduce(torch.amax),
    torch.squeeze: _fn(lambda x: torch.squeeze(torch.unsqueeze(x, 2), 2)),
    torch.unsqueeze: _fn(lambda x: torch.unsqueeze(x, 2).mean(2)),
    getattr: _fn(lambda x: x * (x.shape[2] / 8)),
    len: _fn(lambda x: x * len(x)),
    torch.flatten: _fn(lambda x: torch.flatten(x, 1)),
    torch.reshape: _shape_op([lambda s, x: torch.reshape(x, (x.shape[0], -1, 1, 1)),
                              lambda s, x: torch.reshape(x, (x.shape[0], 2, -1, 8))]),
    torch.permute: _shape_op([lambda s, x: torch.permute(x, (0, 1, 3, 2)), lambda s, x: torch.permute(x, (0, 2, 1, 3))]),
    torch.transpose: _shape_op([lambda s, x: torch.transpose(x, 2, 3), lambda s, x: torch.transpose(x, 1, 2)]),
    torch.split: _split(torch.split), torch.chunk: _split(lambda x, n, d: torch.chunk(x, n, d)),
    **{m: _method(m) for m in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "neg", "contiguous", "clone",
                               "detach", "float")},
    "clamp": _method("clamp", -0.5, 0.5), "clamp_": _method("clamp_", -0.5, 0.5),
    "half": _fn(lambda x: x.half().float()), "to": _fn(lambda x: x.to(x.dtype)),
    "type_as": _fn(lambda x: x.type_as(x)),
    **{m: _fn(lambda x, m=m: x * getattr(x, m)() if m != "size" else x * x.size(1)) for m in ("size", "dim", "numel",
                                                                                            "ndimension")},
    **{m: _elementwise(lambda a, b, m=m: getattr(a.clone() if m.endswith("_") else a, m)(b))
       for m in ("add", "add_", "sub", "mul", "mul_", "div", "div_")},
    "mean": _reduce("mean", True), "sum": _reduce("sum", True), "amax": _reduce("amax", True),
    "squeeze": _fn(lambda x: x.unsqueeze(2).squeeze(2)), "unsqueeze": _fn(lambda x: x.unsqueeze(2).mean(2)),
    "view": _shape_op(_RESHAPES), "reshape": _shape_op([lambda s, x: x.reshape(x.shape[0], -1, 1, 1)] + _RESHAPES[2:]),
    "flatten": _fn(lambda x: x.flatten(1)), "permute": _shape_op(_PERMUTES), "transpose": _shape_op(_TRANSPOSES),
    "split": _split(lambda x, n, d: x.split(n, d)), "chunk": _split(lambda x, n, d: x.chunk(n, d)),
}
