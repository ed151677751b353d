"""Slicers: ``slicer(module, keep_in, keep_out) -> a NEW smaller module`` for the op registry.

``keep_in`` / ``keep_out`` are the kept positions of the module's input / output channel
axis (None: that axis is untouched). The original module is never modified.

>>> import numpy as np, torch
>>> small = slice_conv(torch.nn.Conv2d(4, 6, 3), np.array([0, 3]), np.array([1, 2, 5]))
>>> tuple(small.weight.shape), small.in_channels, small.out_channels
((3, 2, 3, 3), 2, 3)
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def shallow(module: nn.Module) -> nn.Module:
    """A copy that shares nothing mutable with the original but its (unchanged) tensors."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def take(t: torch.Tensor | None, idx: np.ndarray | None, dim: int) -> torch.Tensor | None:
    """``t`` with only positions ``idx`` of ``dim`` (a new tensor); ``t`` itself when idx is None."""
    if t is None or idx is None:
        return t
    return t.detach().index_select(dim, torch.as_tensor(idx, device=t.device))


def set_tensor(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Replace a parameter (keeping requires_grad) or buffer of ``module``."""
    if value is None:
        return
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=module._parameters[name].requires_grad)
    else:
        module._buffers[name] = value


TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def slice_conv(m, keep_in, keep_out):
    if m.groups > 1 and not m.groups == m.in_channels == m.out_channels:
        from .grouped_conv import slice_grouped_conv
        return slice_grouped_conv(m, keep_in, keep_out)
    new = shallow(m)
    transposed = isinstance(m, TRANSPOSED_CONVS)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    if m.groups > 1:  # depthwise: one axis, the weight's output dim
        keep_in = None
        new.groups = new.in_channels = new.out_channels = len(keep_out) if keep_out is not None else m.out_channels
    w = take(take(m.weight, keep_out, out_dim), keep_in, in_dim)
    set_tensor(new, "weight", w)
    set_tensor(new, "bias", take(m.bias, keep_out, 0))
    if m.groups == 1:
        new.out_channels, new.in_channels = (w.shape[1], w.shape[0]) if transposed else (w.shape[0], w.shape[1])
    return new


def slice_linear(m, keep_in, keep_out):
    new = shallow(m)
    set_tensor(new, "weight", take(take(m.weight, keep_out, 0), keep_in, 1))
    set_tensor(new, "bias", take(m.bias, keep_out, 0))
    new.out_features, new.in_features = new.weight.shape
    return new


def slice_norm(m, keep_in, keep_out):
    new = shallow(m)
    for name in ("weight", "bias", "running_mean", "running_var"):
        set_tensor(new, name, take(getattr(m, name, None), keep_out, 0))
    n = len(keep_out)
    if isinstance(m, nn.GroupNorm):
        new.num_groups = new.num_channels = n
    else:
        new.num_features = n
    return new


def slice_channelwise(m, keep_in, keep_out):
    new = shallow(m)
    set_tensor(new, "weight", take(m.weight, keep_out, 0))
    new.num_parameters = len(keep_out)
    return new
