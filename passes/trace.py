"""Trace a model to an FX graph whose every node carries its output's shape and type.

Shapes come from meta/fake tensors, so no real forward pass is paid (a leaf module whose
control flow depends on tensor values falls back to one real forward): every node gets
``meta["tensor_meta"]`` (a ``TensorMetadata``, or a tuple of them for pool-with-indices),
``meta["type"]`` (``torch.Tensor``, ``tuple``, ``torch.Size`` ...) and ``meta["val"]``
(the fake value; ``torch.Size`` nodes hold plain ints).

>>> import torch
>>> gm = trace(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), torch.zeros(1, 3, 9, 9))
>>> tuple(next(n for n in gm.graph.nodes if n.op == "call_module").meta["tensor_meta"].shape)
(1, 8, 7, 7)
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.fx.node import map_aggregate
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from .errors import DCPError


def as_tuple(example_inputs: Any) -> tuple:
    """Accept a tensor or a tuple/list of tensors everywhere."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise DCPError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


class ShapeProp(fx.Interpreter):
    """Run the graph on tensors without data and record what each node produced.

    ``device="meta"`` (fastest: modules run with meta copies of their parameters) or
    ``fake_mode`` (FakeTensorMode, for ops that mix devices) or neither (a real forward).
    """

    def __init__(self, gm: fx.GraphModule, fake_mode: FakeTensorMode | None = None, meta: bool = False):
        super().__init__(gm)
        self.fake_mode = fake_mode
        self.meta = meta

    def run_node(self, n: fx.Node) -> Any:
        try:
            with self.fake_mode or torch.no_grad():
                result = super().run_node(n)
        except DataDependentOutputException:
            raise
        except Exception as e:  # the user needs the node, not an interpreter stack
            raise DCPError(f"shape propagation failed at node '{n.name}' ({n.op} {n.target}): "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        meta = map_aggregate(result, lambda v: _extract_tensor_metadata(v) if isinstance(v, torch.Tensor) else v)
        n.meta["tensor_meta"] = meta
        n.meta["type"] = torch.Tensor if isinstance(result, torch.Tensor) else type(result)
        n.meta["val"] = result
        return result

    def call_module(self, target, args, kwargs):
        if not self.meta:
            return super().call_module(target, args, kwargs)
        mod = self.fetch_attr(target)
        if isinstance(mod, SHAPE_PRESERVING) and args and isinstance(args[0], torch.Tensor) \
                and getattr(mod, "num_features", args[0].shape[1] if args[0].dim() > 1 else None) == \
                (args[0].shape[1] if args[0].dim() > 1 else None):
            return torch.empty_like(args[0])  # same shape out; meta kernels for these are slow
        state = {k: _to_meta(v) for k, v in [*mod.named_parameters(), *mod.named_buffers()]}
        return torch.func.functional_call(mod, state, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return _to_meta(value) if self.meta and isinstance(value, torch.Tensor) else value


# Modules whose output has their input's shape and dtype (checked by tests against real runs).
SHAPE_PRESERVING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm,
                    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
                    nn.Sigmoid, nn.Tanh, nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity)


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta")


def propagate_shapes(gm: fx.GraphModule, example_inputs: Any) -> fx.GraphModule:
    """Annotate ``gm`` in place with shapes for ``example_inputs``: meta tensors first, fake
    tensors if an op cannot run on meta, one real forward if a leaf needs tensor values."""
    inputs = as_tuple(example_inputs)
    try:
        ShapeProp(gm, meta=True).run(*[_to_meta(t) if isinstance(t, torch.Tensor) else t for t in inputs])
        return gm
    except DCPError:
        pass  # an op that cannot run on meta, or a real error: fake tensors say which, clearly
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        ShapeProp(gm, fake_mode).run(*[fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs])
    except DataDependentOutputException:
        # a leaf module branches on tensor values: only a real forward can say what it does
        ShapeProp(gm).run(*inputs)
    return gm


def symbolic_trace(model: torch.nn.Module, leaf_modules: Iterable[type] = ()) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with extra leaf module types and an error that says what to do."""
    if isinstance(model, fx.GraphModule):
        return model
    leaves = tuple(leaf_modules)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    tracer = Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = _innermost_module(e)
        raise DCPError(
            f"cannot trace {type(model).__name__}{where}: {type(e).__name__}: {str(e).splitlines()[0]} "
            f"-- data-dependent control flow or untraceable calls must live in a leaf module: "
            f"pass leaf_modules=(ThatModule,) so it is kept as one opaque call") from e
    name = model.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)


def _innermost_module(e: BaseException) -> str:
    """Name the model code that failed, from the traceback's last frame inside a forward()."""
    tb, last = e.__traceback__, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "forward":
            owner = tb.tb_frame.f_locals.get("self")
            last = f" in {type(owner).__name__}.forward ({code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno})"
        tb = tb.tb_next
    return last or ""


def trace(model: torch.nn.Module, example_inputs: Any, leaf_modules: Iterable[type] = ()) -> fx.GraphModule:
    """Trace ``model`` to a GraphModule with shape metadata on every node."""
    gm = symbolic_trace(model, leaf_modules)
    return propagate_shapes(gm, example_inputs)
