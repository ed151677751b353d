"""The op registry: ONE row per op holding its channel rule, its slicer and why it is right.

A row says how an op relates its inputs' channel spaces to its output's (``rule``, see
``channel_rules.py``), how to make a smaller copy of a module member (``slicer``, see
``slicers.py``) and how to rewrite literal channel counts in the call for the compact graph
(``rewrite_args``). Keys: an ``nn.Module`` subclass (found along the class MRO, so a subclass
of ``nn.Conv2d`` that does not override its computation matches), a function or builtin
(``F.conv2d``, ``operator.add``), a tensor-method name (``"view"``) or a qualified name
``"pkg.module.name"`` for optional libraries, so ``passes`` need not import them. An op in no
row is ``UNKNOWN``: it freezes every channel it touches.

>>> import torch
>>> class MyConv(torch.nn.Conv2d): pass      # no own forward: the Conv2d row applies
>>> lookup_module(MyConv(3, 4, 1)).reason
'fresh output channels from weight dim 0; consumes input channels on weight dim 1'
>>> class StdConv(torch.nn.Conv2d):
...     def forward(self, x): return super().forward(x)
>>> lookup_module(StdConv(3, 4, 1)).slicer is None   # redefines forward: not proven, frozen
True
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import channel_rules as R
from . import param_rules as P
from . import slicers as S


@dataclass(frozen=True)
class OpEntry:
    rule: Callable                        # (ctx: ChannelAnalysis, node) -> output channel space
    slicer: Callable | None = None        # modules only: (module, keep_in, keep_out) -> new smaller module
    rewrite_args: Callable | None = None  # (node, keep_map) -> (args, kwargs) or None, for the compact graph
    reason: str = ""                      # one line: why this rule is right


_MODULES: dict[type, OpEntry] = {}
_CALLABLES: dict[object, OpEntry] = {}
_METHODS: dict[str, OpEntry] = {}
_NAMED: dict[str, OpEntry] = {}          # "pkg.module.name" of a class or function

UNKNOWN = OpEntry(R.unknown, reason="no proven rule: freezes every channel it touches")
_SPECIAL = {"placeholder": OpEntry(R.placeholder, reason="graph input channels are fixed"),
            "output": OpEntry(R.output, reason="graph output channels are fixed"),
            "get_attr": OpEntry(R.get_attr, reason="a constant tensor; sliced only as a member of an op that uses it")}


def register_op(key, rule: Callable, *, slicer: Callable | None = None, rewrite_args: Callable | None = None,
                reason: str) -> None:
    """Teach the compiler an op (or replace its row). See the module docstring for ``key``."""
    if not reason or "\n" in reason:
        raise ValueError("register_op needs a one-line reason")
    entry = OpEntry(rule, slicer, rewrite_args, reason)
    _module_cache.clear()
    if isinstance(key, type):
        if not issubclass(key, nn.Module):
            raise TypeError(f"a class key must be an nn.Module subclass, got {key.__name__}")
        _MODULES[key] = entry
    elif isinstance(key, str):
        (_NAMED if "." in key else _METHODS)[key] = entry
    elif callable(key):
        if slicer is not None:
            raise TypeError("a slicer makes a smaller MODULE: only module keys take one")
        _CALLABLES[key] = entry
    else:
        raise TypeError(f"cannot register {key!r}: expected a module class, a function or a name")


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"


# Overriding these does not change what a module computes from its parameters.
_HARMLESS_OVERRIDES = {"__init__", "reset_parameters", "extra_repr", "__repr__", "__setstate__", "_get_name"}


def _overrides(cls: type, base: type) -> str | None:
    """The first method of ``base`` that ``cls`` (or a class between them) redefines."""
    for klass in cls.__mro__:
        if klass is base:
            return None
        for name, value in vars(klass).items():
            if callable(value) and name not in _HARMLESS_OVERRIDES and hasattr(base, name):
                return name
    return None


_module_cache: dict[type, OpEntry] = {}  # class -> its row along the MRO; cleared by register_op


def _module_entry(cls: type) -> OpEntry:
    for klass in cls.__mro__:
        entry = _MODULES.get(klass) or _NAMED.get(_qualname(klass))
        if entry is None:
            continue
        changed = _overrides(cls, klass) if klass is not cls else None
        if changed is None:
            return entry
        why = (f"subclasses {klass.__name__} but redefines {changed}(): its row does not apply "
               f"(trace through it, or register_op the subclass)")
        return OpEntry(functools.partial(R.unknown_reason, why=why), reason=why)
    return UNKNOWN


def lookup_module(module: nn.Module) -> OpEntry:
    """The row of a module: its class's, or the nearest base class's it does not redefine."""
    cls = type(module)
    entry = _module_cache.get(cls)
    if entry is None:
        entry = _module_cache[cls] = _module_entry(cls)
    return entry


def lookup(gm: fx.GraphModule, node: fx.Node) -> OpEntry:
    """The registry row of ``node`` (``UNKNOWN`` when there is none)."""
    if node.op in _SPECIAL:
        return _SPECIAL[node.op]
    if node.op == "call_module":
        return lookup_module(gm.get_submodule(node.target))
    if node.op == "call_function":
        try:
            entry = _CALLABLES.get(node.target)
        except TypeError:  # unhashable target
            entry = None
        return entry or _NAMED.get(f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', '')}",
                                   UNKNOWN)
    if node.op == "call_method":
        return _METHODS.get(node.target, UNKNOWN)
    return UNKNOWN


# --- the built-in table: (keys, rule, slicer, reason[, rewrite_args]) --------------------------------------
_PASS = "keeps each channel where it is (per-channel or per-element op)"
_ELEMENTWISE = "ties operands that carry the full channel dim; a size-1 channel dim broadcasts"
_TABLE: list[tuple] = [
    # modules
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
      nn.ELU, nn.Mish, nn.Softplus, nn.Hardtanh), R.same, None, "element-wise activation: " + _PASS),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity), R.same, None,
     "identity at inference (dropout drops whole channels or elements, never mixes them)"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
      nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), R.same, None, "spatial pooling: " + _PASS),
    ((nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), R.same, None, "spatial resampling: " + _PASS),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), R.conv,
     S.slice_conv, "fresh output channels from weight dim 0; consumes input channels on weight dim 1"),
    ((nn.Linear,), R.linear, S.slice_linear, "on a (N, features) tensor: fresh outputs, consumes inputs"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
      nn.GroupNorm), R.norm, S.slice_norm,
     "statistics and affine are per channel (GroupNorm only with one channel a group)"),
    ((nn.LayerNorm,), R.layer_norm, None, "normalising spatial dims only is per channel; over channels it freezes"),
    ((nn.PReLU,), R.prelu, S.slice_channelwise, "one slope per channel (or one shared slope)"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), R.max_pool, None,
     "per-channel windows; values and indices keep the input's channels"),
    ((nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d), R.unpool, None,
     "scatters each channel by its own indices: values, indices and output are one identity"),
    (("torchvision.ops.stochastic_depth.StochasticDepth",), R.same, None, "scales whole samples"),
    # functions
    ((F.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.hardtanh, F.elu, torch.relu,
      torch.sigmoid, torch.tanh, F.sigmoid, torch.clamp, operator.neg, operator.pos), R.same, None,
     "element-wise: " + _PASS),
    ((F.dropout, F.dropout2d), R.same, None, "identity at inference"),
    ((F.interpolate, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
      F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d), R.same, None,
     "spatial op: " + _PASS),
    ((F.pad,), R.pad, None, "spatial pads keep channels; channel pads add fixed fresh channels around them"),
    ((F.max_pool1d, F.max_pool2d, F.max_pool3d, F.max_pool1d_with_indices, F.max_pool2d_with_indices,
      F.max_pool3d_with_indices), R.max_pool, None, "per-channel windows; values and indices keep the input's channels"),
    ((F.max_unpool1d, F.max_unpool2d, F.max_unpool3d), R.unpool, None,
     "scatters each channel by its own indices: values, indices and output are one identity"),
    ((F.conv1d, F.conv2d, F.conv3d), P.functional_conv, None,
     "weight parameter: dim 0 fresh outputs, dim 1 consumed inputs (a row-wise computed weight: outputs only)"),
    ((F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d), P.functional_conv_transpose, None,
     "weight parameter (in, out, k...): dim 1 fresh outputs, dim 0 consumed inputs"),
    ((F.linear,), P.functional_linear, None, "weight parameter (out, in) on (N, features)"),
    ((F.batch_norm, F.instance_norm), P.functional_batch_norm, None,
     "statistics and affine parameters are per channel"),
    ((F.prelu,), P.functional_prelu, None, "one slope parameter per channel (or one shared)"),
    ((operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, torch.add,
      torch.sub, torch.mul, torch.div), R.elementwise, None, _ELEMENTWISE),
    ((torch.cat, torch.concat), R.cat, None, "along dim 1 concatenates spaces; along another dim ties them"),
    ((operator.getitem,), R.getitem, None, "picks a tuple element, or indexes dims other than N and C"),
    ((torch.mean, torch.sum, torch.amax), R.reduce, None, "reducing spatial dims keeps channels; over C freezes"),
    ((torch.squeeze, torch.unsqueeze), R.same_if_shape_keeps_channels, None, "fine while dims 0 and 1 stay (N, C)"),
    ((F.group_norm,), P.functional_group_norm, None,
     "one channel a group is per channel; num_groups is rewritten to the kept width", P.group_norm_args),
    ((getattr, len), R.no_channels, None, "a size or attribute query: no channels"),
    (("torchvision.ops.stochastic_depth.stochastic_depth",), R.same, None, "scales whole samples"),
    # tensor methods
    (("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "neg"), R.same, None,
     "element-wise: " + _PASS),
    (("contiguous", "clone", "detach", "float", "half", "to", "type_as"), R.same, None, "same values, new storage or dtype"),
    (("size", "dim", "numel", "ndimension"), R.no_channels, None, "a size query: no channels"),
    (("add", "add_", "sub", "mul", "mul_", "div", "div_"), R.elementwise, None, _ELEMENTWISE),
    (("mean", "sum", "amax"), R.reduce, None, "reducing spatial dims keeps channels; over C freezes"),
    (("squeeze", "unsqueeze"), R.same_if_shape_keeps_channels, None, "fine while dims 0 and 1 stay (N, C)"),
]

for _keys, _rule, _slicer, _reason, *_rewrite in _TABLE:
    for _key in _keys:
        register_op(_key, _rule, slicer=_slicer, reason=_reason, rewrite_args=_rewrite[0] if _rewrite else None)


def known_ops() -> dict[object, OpEntry]:
    """Every registered key and its row (for docs and the op-table fuzz test)."""
    return {**_MODULES, **_CALLABLES, **_METHODS, **_NAMED}


# the reshape family (view/reshape/flatten, permute/transpose, split/chunk) and channels-last rows
from . import shape_rules, channels_last  # noqa: E402,F401
