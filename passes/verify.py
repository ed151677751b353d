"""Check a rewrite: the compact model must equal the MASKED original, compared in float64.

The masked original is the traced original run node by node with the dropped channel
positions of every node's floating-point output set to zero (``MaskedGraph``). This equals
"dropped channels zeroed at every member's output and at every consumer's input" wherever
it matters: the channel analysis only lets a dropped position flow into elementwise ops,
pools, concatenations, reshapes that keep it a dropped position, and into consumers, which
sum over their input channels; zeroing the dropped positions in between changes only values
at dropped positions, which no kept position reads. Both references therefore agree at every
kept position of every node; only the node-level one is defined for every op (functional ops
with parameters included) and gives each node a reference to compare against, so a failed
check can name the first node that diverges (``first_divergence``).

Why float64 with a fixed tolerance: the compact and the masked model sum over different
numbers of channels in a different order, and max-pool picks an index among near-equal
values; in float32 that rounding (~1e-7 per op, and a max-unpool index flip moves a whole
value) reaches 1e-4 relative on correct models. In float64 the same rounding is ~1e-15
relative (unit roundoff 1.1e-16 times a few dozen layers), index flips need values equal to
1e-16 and do not occur; a wrong channel, statistic or index is an O(1) relative error.
``VERIFY_TOLERANCE`` sits between, six orders of magnitude from both.

>>> import torch
>>> from passes import trace, analyse, build_groups
>>> from passes.rewrite import rewrite, KeepMap
>>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.Sigmoid(), torch.nn.Conv2d(4, 1, 1)).eval()
>>> ctx = analyse(trace(m, torch.zeros(1, 1, 4, 4))); groups = build_groups(ctx)
>>> compact, _ = rewrite(ctx, groups, {1: [1, 3]})
>>> keep_map = KeepMap(ctx, groups, {1: [1, 3]})
>>> verify(compact, keep_map, torch.randn(2, 1, 5, 5)).masked_rel < VERIFY_TOLERANCE
True
>>> compact.get_submodule("0").bias.data[0] += 1  # a wrong compact model
>>> first_divergence(compact, keep_map, torch.randn(2, 1, 5, 5)).split(" rel")[0]
"node '_0' (call_module 0)"
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import fx, nn

from .errors import DCPError
from .rewrite import KeepMap
from .trace import as_tuple

VERIFY_TOLERANCE = 1e-9  # relative, float64: see the module docstring


class VerifyResult(NamedTuple):
    masked_abs: float    # max |compact - masked original|, float64
    masked_rel: float    # ... divided by max |masked original|
    unmasked_abs: float  # max |compact - original|: what pruning costs before finetuning
    unmasked_rel: float


class Axis(NamedTuple):
    """Where a node output's channel space lies and what of it is kept: the space covers the
    tensor dims ``start .. start + kept.ndim - 1`` (one dim, usually dim 1; a moved channel dim
    after a permute; or a box of several dims after a reshape spreads the channels, e.g. a
    channel shuffle's ``view(N, g, C // g, H, W)``); ``kept`` is a bool array of the space's shape."""
    start: int
    kept: np.ndarray


def channel_axes(keep_map: KeepMap) -> dict[str, Any]:
    """``{node name: Axis, or a tuple of them for multi-output nodes}`` for every node whose
    output loses channels (nodes left out are untouched)."""
    ctx, find, dropped = keep_map.ctx, keep_map.ctx.ids.find, keep_map.dropped

    def axis(space: Any, start: int) -> Any:
        if isinstance(space, np.ndarray):
            if space.size == 0:
                return None
            kept = np.fromiter((find(i) not in dropped for i in space.ravel().tolist()), bool, space.size)
            return None if kept.all() else Axis(start, kept.reshape(space.shape))
        if isinstance(space, (tuple, list)):
            axes = tuple(axis(s, start) for s in space)
            return axes if any(a is not None for a in axes) else None
        return None

    axes = {node.name: axis(space, ctx.channel_axis.get(node, 1)) for node, space in ctx.spaces.items()}
    return {name: a for name, a in axes.items() if a is not None}


def _per_tensor(value: Any, axes: Any, node: str, fn) -> Any:
    """Apply ``fn(tensor, Axis)`` to each tensor of ``value`` that has a channel axis in ``axes``."""
    if axes is None:
        return value
    if isinstance(axes, Axis):
        dims = slice(axes.start, axes.start + axes.kept.ndim)
        if not (isinstance(value, torch.Tensor) and tuple(value.shape[dims]) == axes.kept.shape):
            raise DCPError(f"verification: node '{node}' has a channel space of shape {axes.kept.shape} at dim "
                           f"{axes.start} but produced {_describe(value)} (a compiler bug; please report it)")
        return fn(value, axes)
    if isinstance(value, (tuple, list)) and len(value) == len(axes):
        return type(value)(_per_tensor(v, a, node, fn) for v, a in zip(value, axes))
    raise DCPError(f"verification: node '{node}' produced {_describe(value)}, which does not match its "
                   f"channel spaces (a compiler bug; please report it)")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _zero_dropped(t: torch.Tensor, axis: Axis) -> torch.Tensor:
    if not t.is_floating_point():  # pool indices: positions, not activations
        return t
    shape = [1] * axis.start + list(axis.kept.shape) + [1] * (t.dim() - axis.start - axis.kept.ndim)
    keep = torch.as_tensor(axis.kept, device=t.device).view(shape)
    return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))  # also clears inf/nan


def _kept_copy(t: torch.Tensor, axis: Axis) -> torch.Tensor:
    """The kept positions along each dim of the space (a box: the analysis keeps whole rows)."""
    for j in range(axis.kept.ndim):
        others = tuple(k for k in range(axis.kept.ndim) if k != j)
        kept = np.nonzero(axis.kept.any(axis=others) if others else axis.kept)[0]
        t = t.index_select(axis.start + j, torch.as_tensor(kept, dtype=torch.long, device=t.device))
    return t


def _as_float64(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() and value.dtype != torch.float64 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_as_float64(v) for v in value)
    return value


class Float64Graph(fx.Interpreter):
    """Runs a graph keeping every floating value in float64: a cast in the model (``x.float()``,
    ``.half()``) would otherwise meet float64 weights; both sides of the check skip it alike."""

    def run_node(self, n: fx.Node) -> Any:
        return _as_float64(super().run_node(n))


class MaskedGraph(Float64Graph):
    """Runs a traced original with the dropped channels of every node's output zeroed.

    ``keep_map`` describes the plan; ``gm`` is its traced graph or a copy of it (node names
    identify nodes). With ``record``, every node's output restricted to the kept channel
    positions is kept in ``self.kept_outputs`` (copies: later in-place ops cannot change them).
    """

    def __init__(self, gm: fx.GraphModule, keep_map: KeepMap, record: bool = False):
        super().__init__(gm)
        self.axes = channel_axes(keep_map)
        self.record = record
        self.kept_outputs: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = _per_tensor(super().run_node(n), self.axes.get(n.name), n.name, _zero_dropped)
        if self.record and n.op != "output":
            kept = _per_tensor(out, self.axes.get(n.name), n.name, _kept_copy)
            self.kept_outputs[n.name] = kept if kept is not out else _clone(out)
        return out


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def float64_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode whose floating parameters and buffers are float64, made
    without a float32 copy first."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            double = t.detach().to(torch.float64)
            memo[id(t)] = nn.Parameter(double, requires_grad=False) if isinstance(t, nn.Parameter) else double
    return copy.deepcopy(module, memo).eval()


def _float64(inputs: tuple) -> tuple:
    return tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def max_error(a: Any, b: Any) -> tuple[float, float]:
    """(max |a - b|, that divided by max |b|) over all tensors, in float64; inf if shapes differ."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return float("inf"), float("inf")
    abs_err = max((float((x.double() - y.double()).abs().max()) for x, y in zip(ta, tb) if x.numel()), default=0.0)
    scale = max((float(y.double().abs().max()) for y in tb if y.numel()), default=0.0)
    return abs_err, abs_err / max(scale, 1e-300)


def _run_compact(compact: fx.GraphModule, inputs: tuple) -> Any:
    try:
        return Float64Graph(compact).run(*inputs)
    except Exception as e:  # name the node rather than show a generated-code stack
        raise DCPError(f"rewrite check failed: the compact model cannot run: {_failing_node(compact, inputs, e)} "
                       f"(a compiler bug; please report it)") from e


def _failing_node(compact: fx.GraphModule, inputs: tuple, error: Exception) -> str:
    where = {}

    class Locate(Float64Graph):
        def run_node(self, n):
            where["node"] = n
            return super().run_node(n)

    try:
        Locate(compact).run(*inputs)
    except Exception:
        pass
    n = where.get("node")
    what = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return f"node '{n.name}' ({n.op} {_target(n)}): {what}" if n is not None else what


def _target(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


@torch.no_grad()
def verify(compact: fx.GraphModule, keep_map: KeepMap, inputs: Any, original_output: Any = None) -> VerifyResult:
    """Compare float64 copies of ``compact`` and of the masked original (``keep_map.ctx.gm``)
    on ``inputs``; the models themselves are not touched. ``original_output`` (the unmasked
    original's output, any dtype) saves one forward pass."""
    inputs = _float64(as_tuple(inputs))
    original = float64_copy(keep_map.ctx.gm)
    out_masked = MaskedGraph(original, keep_map).run(*inputs)
    out_compact = _run_compact(float64_copy(compact), inputs)
    if original_output is None:
        original_output = Float64Graph(original).run(*inputs)
    return VerifyResult(*max_error(out_compact, out_masked), *max_error(out_compact, original_output))


@torch.no_grad()
def first_divergence(compact: fx.GraphModule, keep_map: KeepMap, inputs: Any,
                     tolerance: float = VERIFY_TOLERANCE) -> str | None:
    """``"node 'name' (op target) rel error E"`` for the first node (in graph order) whose
    float64 output, at the kept channel positions, differs from the masked original's by more
    than ``tolerance`` relative; None if no node does."""
    inputs = _float64(as_tuple(inputs))
    reference = MaskedGraph(float64_copy(keep_map.ctx.gm), keep_map, record=True)
    reference.run(*inputs)
    found: list[str] = []

    class Diverged(Exception):
        pass

    class Compare(Float64Graph):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in reference.kept_outputs and _tensors(out):
                _, rel = max_error(out, reference.kept_outputs[n.name])
                if not rel <= tolerance:
                    found.append(f"node '{n.name}' ({n.op} {_target(n)}) rel error {rel:.2e}")
                    raise Diverged
            return out

    try:
        Compare(float64_copy(compact)).run(*inputs)
    except Diverged:
        return found[0]
    except Exception as e:
        return _failing_node(float64_copy(compact), inputs, e)
    return None


def failure_message(compact: fx.GraphModule, keep_map: KeepMap, inputs: Any, result: VerifyResult) -> str:
    """The one-line error for a failed check, naming the first diverging node."""
    where = first_divergence(compact, keep_map, inputs)
    return (f"rewrite check failed: compact model differs from the masked original by {result.masked_rel:.2e} "
            f"relative in float64 (tolerance {VERIFY_TOLERANCE:.0e}); first diverging "
            f"{where or 'node: none alone beyond the tolerance'} (a compiler bug; please report it)")
