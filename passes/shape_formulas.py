"""Output shapes of the common layers by formula, so shape propagation skips their meta kernels.

Running a conv, a pool or an elementwise op on meta tensors goes through Python reference
kernels (tens to hundreds of microseconds per op); the formulas below cost about one.
A rule returns the output shape, or ``None`` when its formula does not cover the case
(other argument forms, a shape the op would reject): the caller then runs the op on meta
tensors, which also raises the op's own error. Rules assume what the caller checks first:
floating, contiguous inputs and, for modules, parameters of the input's dtype and no hooks.
tests/test_shape_formulas.py checks every rule against real runs on random shapes.

>>> import torch
>>> x = torch.empty(2, 3, 9, 9, device="meta")
>>> MODULE_SHAPES[torch.nn.Conv2d](torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), x)
(2, 8, 5, 5)
>>> MODULE_SHAPES[torch.nn.MaxPool2d](torch.nn.MaxPool2d(2, ceil_mode=True), x)
(2, 3, 5, 5)
>>> FUNCTION_SHAPES[torch.add]((x, torch.empty(3, 1, 1, device="meta")), {})
((2, 3, 9, 9), torch.float32)
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


def _pair(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def window_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> int | None:
    """Output length of a sliding window (conv / pool), as ATen's ``pooling_output_shape``;
    under 1 where the op rejects the input."""
    if stride < 1 or kernel < 1 or dilation < 1:
        return None
    span = size + 2 * padding - dilation * (kernel - 1) - 1  # may be negative: // rounds down as ATen
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window may not start inside the right padding
    return out


def _spatial(x: torch.Tensor, n: int, kernel, stride, padding, dilation, ceil_mode=False) -> tuple | None:
    sizes = [window_size(*a, ceil_mode) for a in zip(x.shape[-n:], _pair(kernel, n), _pair(stride, n),
                                                      _pair(padding, n), _pair(dilation, n))]
    return None if None in sizes else tuple(sizes)


# --- modules: rule(module, input) -> output shape or None ------------------------------
def conv(mod: nn.Module, x: torch.Tensor) -> tuple | None:
    n = len(mod.kernel_size)
    if x.dim() != n + 2 or x.shape[1] != mod.in_channels or mod.padding_mode != "zeros":
        return None
    if isinstance(mod.padding, str):
        if mod.padding != "valid":  # "same" keeps the size
            return (x.shape[0], mod.out_channels, *x.shape[2:])
        padding = 0
    else:
        padding = mod.padding
    sizes = _spatial(x, n, mod.kernel_size, mod.stride, padding, mod.dilation)
    return None if sizes is None or min(sizes) < 1 else (x.shape[0], mod.out_channels, *sizes)


def conv_transpose(mod: nn.Module, x: torch.Tensor) -> tuple | None:
    n = len(mod.kernel_size)
    if x.dim() != n + 2 or x.shape[1] != mod.in_channels or mod.padding_mode != "zeros":
        return None
    sizes = []
    for size, k, s, p, d, op in zip(x.shape[2:], mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                    mod.output_padding):
        if op >= max(s, d):  # ATen rejects it: let the real op say so
            return None
        sizes.append((size - 1) * s - 2 * p + d * (k - 1) + op + 1)
    return None if min(sizes) < 1 else (x.shape[0], mod.out_channels, *sizes)


def _pool(n: int, max_pool: bool) -> Callable:
    def rule(mod: nn.Module, x: torch.Tensor) -> tuple | None:
        if x.dim() not in (n + 1, n + 2) or (max_pool and mod.return_indices):
            return None
        kernel, padding = _pair(mod.kernel_size, n), _pair(mod.padding, n)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            return None  # ATen: pad at most half the kernel
        if n == 3 and not max_pool and any(size < k for size, k in zip(x.shape[-n:], kernel)):
            return None  # ATen's avg_pool3d also wants the unpadded input to cover the kernel
        dilation = mod.dilation if max_pool else 1
        sizes = _spatial(x, n, kernel, mod.stride, padding, dilation, mod.ceil_mode)
        return None if sizes is None or min(sizes) < 1 else (*x.shape[:-n], *sizes)
    return rule


def _adaptive(n: int, max_pool: bool) -> Callable:
    def rule(mod: nn.Module, x: torch.Tensor) -> tuple | None:
        if x.dim() not in (n + 1, n + 2) or (max_pool and mod.return_indices) or 0 in x.shape[-n:]:
            return None
        size = _pair(mod.output_size, n)
        return (*x.shape[:-n], *(s if s is not None else old for s, old in zip(size, x.shape[-n:])))
    return rule


def linear(mod: nn.Linear, x: torch.Tensor) -> tuple | None:
    if x.dim() < 1 or x.shape[-1] != mod.in_features:
        return None
    return (*x.shape[:-1], mod.out_features)


def flatten(mod: nn.Flatten, x: torch.Tensor) -> tuple | None:
    return _flatten_shape(x.shape, mod.start_dim, mod.end_dim)


def _flatten_shape(shape, start: int, end: int) -> tuple | None:
    dims = len(shape)
    if dims == 0 or not (-dims <= start < dims and -dims <= end < dims):
        return None
    start, end = start % dims, end % dims
    if start > end:
        return None
    numel = 1
    for s in shape[start:end + 1]:
        numel *= s
    return (*shape[:start], numel, *shape[end + 1:])


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def batch_norm(mod: nn.Module, x: torch.Tensor) -> tuple | None:
    dims = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}[type(mod)]
    if x.dim() not in dims or x.shape[1] != mod.num_features:
        return None
    batch_stats = mod.training or mod.running_mean is None
    return None if batch_stats and x.numel() == x.shape[1] else tuple(x.shape)  # F.batch_norm: one value per channel


def instance_norm(mod: nn.InstanceNorm2d, x: torch.Tensor) -> tuple | None:
    if x.dim() != 4 or x.shape[1] != mod.num_features:
        return None
    input_stats = mod.training or not mod.track_running_stats
    return None if input_stats and _numel(x.shape[2:]) == 1 else tuple(x.shape)  # F.instance_norm: one pixel


def group_norm(mod: nn.GroupNorm, x: torch.Tensor) -> tuple | None:
    if x.dim() < 2 or x.shape[1] != mod.num_channels:
        return None
    one_value = x.shape[0] * x.shape[1] // mod.num_groups * _numel(x.shape[2:]) == 1  # F.group_norm rejects it
    return None if one_value else tuple(x.shape)


def layer_norm(mod: nn.LayerNorm, x: torch.Tensor) -> tuple | None:
    n = len(mod.normalized_shape)
    return tuple(x.shape) if x.dim() >= n and tuple(x.shape[x.dim() - n:]) == tuple(mod.normalized_shape) else None


def prelu(mod: nn.PReLU, x: torch.Tensor) -> tuple | None:
    ok = mod.num_parameters == 1 or (x.dim() >= 2 and x.shape[1] == mod.num_parameters)
    return tuple(x.shape) if ok else None


def same_shape(mod: nn.Module, x: torch.Tensor) -> tuple:
    return tuple(x.shape)


MODULE_SHAPES: dict[type, Callable[[nn.Module, torch.Tensor], tuple | None]] = {
    nn.Conv1d: conv, nn.Conv2d: conv, nn.Conv3d: conv,
    nn.ConvTranspose1d: conv_transpose, nn.ConvTranspose2d: conv_transpose, nn.ConvTranspose3d: conv_transpose,
    nn.MaxPool1d: _pool(1, True), nn.MaxPool2d: _pool(2, True), nn.MaxPool3d: _pool(3, True),
    nn.AvgPool1d: _pool(1, False), nn.AvgPool2d: _pool(2, False), nn.AvgPool3d: _pool(3, False),
    nn.AdaptiveAvgPool1d: _adaptive(1, False), nn.AdaptiveAvgPool2d: _adaptive(2, False),
    nn.AdaptiveAvgPool3d: _adaptive(3, False), nn.AdaptiveMaxPool2d: _adaptive(2, True),
    nn.Linear: linear, nn.Flatten: flatten,
    nn.BatchNorm1d: batch_norm, nn.BatchNorm2d: batch_norm, nn.BatchNorm3d: batch_norm,
    nn.InstanceNorm2d: instance_norm, nn.GroupNorm: group_norm, nn.LayerNorm: layer_norm, nn.PReLU: prelu,
    **{t: same_shape for t in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
                               nn.Sigmoid, nn.Tanh, nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity)},
}


# --- functions: rule(args, kwargs) -> (shape, dtype) or None ------------------------------
def broadcast(a: tuple, b: tuple) -> tuple | None:
    """Broadcast shape of two shapes, or None when they do not broadcast."""
    if len(a) < len(b):
        a, b = b, a
    b = (1,) * (len(a) - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def binary(args: tuple, kwargs: dict) -> tuple | None:
    """``a + b``, ``torch.mul(a, b)`` ...: tensors or Python numbers (not bools: ``x - True`` is an
    error), broadcast, floating result."""
    if kwargs or len(args) != 2:
        return None
    a, b = args
    shapes = [v.shape if isinstance(v, torch.Tensor) else () for v in args]
    if not all(isinstance(v, torch.Tensor) or type(v) in (int, float) for v in args) or not any(shapes):
        return None
    dtype = torch.result_type(a, b)
    shape = broadcast(*shapes)
    return (shape, dtype) if shape is not None and dtype.is_floating_point else None


def unary(args: tuple, kwargs: dict) -> tuple | None:
    """Activations: the first argument's shape and dtype; options must not be tensors."""
    if not args or not isinstance(args[0], torch.Tensor) \
            or any(isinstance(v, torch.Tensor) for v in (*args[1:], *kwargs.values())):
        return None
    return tuple(args[0].shape), args[0].dtype


_INTERPOLATE_ARGS = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
_INTERPOLATE_DIMS = {"nearest": (3, 4, 5), "nearest-exact": (3, 4, 5), "linear": (3,), "bilinear": (4,),
                     "bicubic": (4,), "trilinear": (5,)}


def interpolate(args: tuple, kwargs: dict) -> tuple | None:
    """``F.interpolate`` with a size or a scale factor (torch's meta kernel for bilinear takes ms)."""
    if len(args) > len(_INTERPOLATE_ARGS) or not set(kwargs) <= set(_INTERPOLATE_ARGS[len(args):]):
        return None
    p = {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
         "recompute_scale_factor": None, "antialias": False, **dict(zip(_INTERPOLATE_ARGS, args)), **kwargs}
    x, size, scale = p["input"], p["size"], p["scale_factor"]
    if not isinstance(x, torch.Tensor) or x.dim() not in _INTERPOLATE_DIMS.get(p["mode"], ()) or p["antialias"] \
            or p["recompute_scale_factor"] or (size is None) == (scale is None) \
            or (p["mode"].startswith("nearest") and p["align_corners"] is not None):
        return None
    n = x.dim() - 2
    if size is not None:
        out = _pair(size, n)
        if len(out) != n or any(type(s) is not int for s in out):
            return None
    else:
        scales = _pair(scale, n)
        if len(scales) != n or any(type(f) not in (int, float) for f in scales):
            return None
        out = tuple(math.floor(float(s) * f) for s, f in zip(x.shape[2:], scales))
    return ((*x.shape[:2], *out), x.dtype) if min(out) >= 1 else None


FUNCTION_SHAPES: dict[Callable, Callable[[tuple, dict], tuple | None]] = {
    **{f: binary for f in (operator.add, operator.sub, operator.mul, operator.truediv,
                           torch.add, torch.sub, torch.mul, torch.div)},
    **{f: unary for f in (F.relu, torch.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu,
                          F.elu, torch.sigmoid, torch.tanh, F.dropout)},
    F.interpolate: interpolate,
}
