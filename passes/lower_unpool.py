"""Lower max-pool indices + MaxUnpool2d to dense ops, for runtimes without them (TensorRT).

TensorRT's ONNX parser supports neither MaxUnpool, nor ScatterND (what the dynamo exporter
turns an unpool into), nor MaxPool's Indices output; ScatterND with dynamic H/W is fragile
in ONNX Runtime too (docs/architecture.md#onnx-export-and-deployment). For a pool whose windows do not overlap
(kernel == stride s, no padding, no dilation, floor mode) the unpool needs no indices:

    unpool(v, idx, (H, W))[p] = v[up(p)] if p is the first max of its window in x else 0

where ``x`` is the pool's input, ``up`` nearest upsampling by s (zero-padded to H x W, so
odd sizes like H = 2h + 1 are exact) and "first max" is ``argmax`` over the window in
row-major order, which is the element max_pool2d picks, ties included. The lowered graph is
Slice/Reshape/Transpose/ArgMax/Expand/Tile/Equal/Where/Pad and a MaxPool without indices.

>>> import torch
>>> from torch import nn
>>> pool, unpool = nn.MaxPool2d(2, 2, return_indices=True), nn.MaxUnpool2d(2, 2)
>>> x = torch.randn(1, 3, 7, 9)
>>> v, idx = pool(x)
>>> torch.equal(dense_max_unpool2d(v, x, 2, x.shape), unpool(v, idx, output_size=x.shape))
True
"""
from __future__ import annotations

import copy
import operator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import DCPError
from .trace import symbolic_trace


@torch.fx.wrap
def dense_max_unpool2d(values: torch.Tensor, pool_input: torch.Tensor, stride: int,
                       output_size: Any = None) -> torch.Tensor:
    """``max_unpool2d(values, indices_of(max_pool2d(pool_input, stride, stride)), output_size)``
    without indices or scatter. ``output_size`` is ``(H, W)`` or ``(N, C, H, W)``; default ``s * (h, w)``.
    """
    _, c, h, w = values.shape  # the batch stays -1: an exporter must not bake it in
    s = stride
    big_h, big_w = (h * s, w * s) if output_size is None else (output_size[-2], output_size[-1])
    windows = pool_input[:, :, :h * s, :w * s].reshape(-1, c, h, s, w, s).permute(0, 1, 2, 4, 3, 5)
    # first max of each window in row-major order == the element max_pool2d returns
    first = windows.reshape(-1, c, h, w, s * s).argmax(-1).to(torch.int32)
    offsets = torch.arange(s * s, dtype=torch.int32, device=values.device).view(s, s).repeat(h, w)
    out = torch.where(_upsample(first, s) == offsets, _upsample(values, s),
                      torch.zeros((), dtype=values.dtype, device=values.device))
    return F.pad(out, (0, big_w - w * s, 0, big_h - h * s))  # odd sizes: the last row/col is never a max


def _upsample(t: torch.Tensor, s: int) -> torch.Tensor:
    """Nearest upsampling by an integer factor as unsqueeze/expand/reshape (any dtype)."""
    _, c, h, w = t.shape
    return t[:, :, :, None, :, None].expand(-1, -1, -1, s, -1, s).reshape(-1, c, h * s, w * s)


class PoolParams(NamedTuple):
    kernel: int | None
    stride: int | None
    padding: int | None
    dilation: int | None = 1
    ceil_mode: bool = False


def _pair(v: Any) -> int | None:
    """An int from an int or a square pair, else None."""
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1] and isinstance(v[0], int):
        return v[0]
    return None


def _unpool_call(gm: fx.GraphModule, n: fx.Node) -> tuple[Any, Any, PoolParams, Any] | None:
    """``(values, indices, params, output_size)`` if ``n`` is a 2-D max-unpool, else None."""
    if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.MaxUnpool2d):
        m = gm.get_submodule(n.target)
        args = dict(zip(("input", "indices", "output_size"), n.args), **n.kwargs)
        params = PoolParams(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding))
    elif n.op == "call_function" and n.target is F.max_unpool2d:
        names = ("input", "indices", "kernel_size", "stride", "padding", "output_size")
        args = dict(zip(names, n.args), **n.kwargs)
        k, stride = _pair(args["kernel_size"]), args.get("stride")
        params = PoolParams(k, k if stride is None else _pair(stride), _pair(args.get("padding", 0)))
    else:
        return None
    return args["input"], args["indices"], params, args.get("output_size")


def _pool_of(gm: fx.GraphModule, indices: Any) -> tuple[fx.Node, Any, PoolParams] | None:
    """``(pool node, pool input, params)`` of the max-pool whose ``getitem(pool, 1)`` is ``indices``."""
    if not (isinstance(indices, fx.Node) and indices.op == "call_function" and indices.target is operator.getitem
            and indices.args[1] == 1 and isinstance(indices.args[0], fx.Node)):
        return None
    pool = indices.args[0]
    if pool.op == "call_module":
        m = gm.get_submodule(pool.target)
        if not (isinstance(m, nn.MaxPool2d) and m.return_indices):
            return None
        x = pool.args[0] if pool.args else pool.kwargs.get("input")
        return pool, x, PoolParams(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding),
                                   _pair(m.dilation), bool(m.ceil_mode))
    if pool.op == "call_function" and pool.target is F.max_pool2d_with_indices:
        a = dict(zip(("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"), pool.args), **pool.kwargs)
        k, stride = _pair(a["kernel_size"]), a.get("stride")
        return pool, a["input"], PoolParams(k, k if stride in (None, (), []) else _pair(stride),
                                            _pair(a.get("padding", 0)), _pair(a.get("dilation", 1)),
                                            bool(a.get("ceil_mode", False)))
    return None


def _why_not(params: PoolParams, pool: tuple | None) -> str | None:
    """None if the dense lowering is exact for this unpool, else the reason it is not."""
    if params.kernel is None or params.kernel != params.stride or params.padding != 0:
        return f"unpool kernel {params.kernel} / stride {params.stride} / padding {params.padding} is not window-local"
    if pool is None:
        return "its indices do not provably come from a MaxPool2d(return_indices=True)"
    if pool[2] != PoolParams(params.kernel, params.stride, 0, 1, False):
        return f"its pool {pool[0].name} ({pool[2]}) does not match the unpool (kernel == stride {params.stride})"
    return None


def _drop_indices(gm: fx.GraphModule, pool: fx.Node, kernel: int) -> None:
    """Once no unpool needs them, make ``pool`` a plain max-pool (no Indices output in ONNX)."""
    if any(u.op != "call_function" or u.target is not operator.getitem for u in pool.users):
        return
    getters = {u.args[1]: u for u in pool.users}
    if 1 in getters and getters[1].users:
        return
    x = pool.args[0] if pool.args else pool.kwargs["input"]
    with gm.graph.inserting_after(pool):
        plain = gm.graph.create_node("call_function", F.max_pool2d, (x, kernel, kernel), name=f"{pool.name}_plain")
    if 0 in getters:
        getters[0].replace_all_uses_with(plain)
    for g in getters.values():
        gm.graph.erase_node(g)
    gm.graph.erase_node(pool)


def lower_unpool(model: nn.Module, strict: bool = True, inplace: bool = False) -> fx.GraphModule:
    """Replace every MaxUnpool2d (module or ``F.max_unpool2d``) whose indices provably come
    from a matching non-overlapping max-pool by ``dense_max_unpool2d``, and those pools by
    plain ones. An unpool that cannot be proven exact raises ``DCPError`` (``strict``) or is
    left as it is, its reason in ``gm.meta["unlowered_unpools"]``.
    """
    gm = symbolic_trace(model) if not isinstance(model, fx.GraphModule) else model
    if not inplace:
        gm = copy.deepcopy(gm)
    left, pools = {}, {}
    for n in list(gm.graph.nodes):
        call = _unpool_call(gm, n)
        if call is None:
            continue
        values, indices, params, output_size = call
        pool = _pool_of(gm, indices)
        reason = _why_not(params, pool)
        if reason is not None:
            if strict:
                raise DCPError(f"cannot lower unpool '{n.name}' to dense ops: {reason}")
            left[n.name] = reason
            continue
        with gm.graph.inserting_after(n):
            dense = gm.graph.create_node("call_function", dense_max_unpool2d,
                                         (values, pool[1], params.stride, output_size), name=f"{n.name}_dense")
        n.replace_all_uses_with(dense)
        dense.meta = dict(n.meta)
        gm.graph.erase_node(n)
        pools[pool[0]] = params.stride
    for pool, kernel in pools.items():
        _drop_indices(gm, pool, kernel)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.meta["unlowered_unpools"] = left
    return gm
