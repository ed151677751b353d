"""Trace a model to an FX graph whose every node carries its output's shape and type.

Shapes come from formulas for the common layers (passes/shape_formulas.py) and meta/fake
tensors for the rest, so no real forward pass is paid (a leaf module whose control flow
depends on tensor values falls back to one real forward): every node gets
``meta["tensor_meta"]`` (a ``TensorMetadata``, or a tuple of them for pool-with-indices),
``meta["type"]`` (``torch.Tensor``, ``tuple``, ``torch.Size`` ...) and ``meta["val"]``
(the fake value; ``torch.Size`` nodes hold plain ints).

>>> import torch
>>> gm = trace(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), torch.zeros(1, 3, 9, 9))
>>> tuple(next(n for n in gm.graph.nodes if n.op == "call_module").meta["tensor_meta"].shape)
(1, 8, 7, 7)
"""
from __future__ import annotations

from operator import attrgetter

from typing import Any, Iterable

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.fx.node import map_aggregate, map_arg
from torch.nn.modules import module as _module_mod
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from .errors import DCPError
from .shape_formulas import FUNCTION_SHAPES, MODULE_SHAPES


def as_tuple(example_inputs: Any) -> tuple:
    """Accept a tensor or a tuple/list of tensors everywhere."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise DCPError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


class ShapeProp(fx.Interpreter):
    """Run the graph on fake tensors (``fake_mode``, for ops that mix devices) or real ones
    (a real forward) and record what each node produced. The common case, meta tensors, is
    :func:`propagate_on_meta`."""

    def __init__(self, gm: fx.GraphModule, fake_mode: FakeTensorMode | None = None):
        super().__init__(gm)
        self.fake_mode = fake_mode

    def run_node(self, n: fx.Node) -> Any:
        try:
            with self.fake_mode or torch.no_grad():
                result = super().run_node(n)
        except DataDependentOutputException:
            raise
        except Exception as e:
            raise _node_error(n, e) from e
        _record(n, result)
        return result


def _node_error(n: fx.Node, e: Exception) -> DCPError:
    """The user needs the node, not an interpreter stack."""
    return DCPError(f"shape propagation failed at node '{n.name}' ({n.op} {n.target}): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _record(n: fx.Node, result: Any) -> None:
    if isinstance(result, torch.Tensor):
        n.meta["tensor_meta"] = _tensor_meta(result)
        n.meta["type"] = torch.Tensor
    else:
        n.meta["tensor_meta"] = map_aggregate(result, lambda v: _tensor_meta(v) if isinstance(v, torch.Tensor) else v)
        n.meta["type"] = type(result)
    n.meta["val"] = result


def _tensor_meta(t: torch.Tensor) -> TensorMetadata:
    """``_extract_tensor_metadata``, without its memory-format search for the common dense case."""
    if t.layout is torch.strided and not t.is_quantized and t.is_contiguous():
        return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), torch.contiguous_format, False, {})
    return _extract_tensor_metadata(t)


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    if t.layout is torch.strided and _row_major(t):
        return torch.empty(t.shape, dtype=t.dtype, device="meta")  # empty_like costs ten times more
    return torch.empty_like(t, device="meta")


def _row_major(t: torch.Tensor) -> bool:
    """Strides exactly those ``torch.empty`` gives: ``is_contiguous()`` also accepts any stride on
    a size-1 dim, and ops then pick their output layout from those strides."""
    expected = 1
    for size, stride in zip(reversed(t.shape), reversed(t.stride())):
        if stride != expected:
            return False
        expected *= max(size, 1)
    return True


def propagate_on_meta(gm: fx.GraphModule, inputs: tuple) -> None:
    """Annotate every node from meta tensors: a formula for common layers and elementwise ops
    (passes/shape_formulas.py), the op itself on meta tensors for the rest. Raises ``DCPError``
    naming the node when an op cannot run on meta."""
    env: dict[fx.Node, Any] = {}
    load = env.__getitem__
    pending = iter([_to_meta(t) if isinstance(t, torch.Tensor) else t for t in inputs])
    states: dict[str, dict] = {}  # module -> meta copies of its parameters (a module may be called twice)
    with torch.no_grad():
        for node in gm.graph.nodes:
            args, kwargs = map_arg(node.args, load), map_arg(node.kwargs, load)
            try:
                if node.op == "placeholder":
                    value = _placeholder(node, args, pending)
                elif node.op == "get_attr":
                    value = attrgetter(node.target)(gm)
                    value = _to_meta(value) if isinstance(value, torch.Tensor) else value
                elif node.op == "call_module":
                    value = _call_module(gm, node.target, args, kwargs, states)
                elif node.op == "call_function":
                    value = _call_function(node.target, args, kwargs)
                elif node.op == "call_method":
                    value = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:  # output
                    value = args[0]
            except Exception as e:
                raise _node_error(node, e) from e
            env[node] = value
            _record(node, value)


def _placeholder(node: fx.Node, args: tuple, pending) -> Any:
    if node.target.startswith("*"):
        return list(pending)
    value = next(pending, _MISSING)
    if value is not _MISSING:
        return value
    if args:
        return args[0]  # the parameter's default
    raise RuntimeError(f"expected an example input for '{node.target}'")


_MISSING = object()



def _call_module(gm: fx.GraphModule, target: str, args: tuple, kwargs: dict, states: dict) -> Any:
    mod = gm.get_submodule(target)
    rule = MODULE_SHAPES.get(type(mod))  # exact type: a subclass may change forward()
    if rule is not None and len(args) == 1 and not kwargs and _plain_float(args[0]) and _runs_its_class_forward(mod) \
            and _own_dtypes_are(mod, args[0].dtype):
        shape = rule(mod, args[0])
        if shape is not None:
            return torch.empty(shape, dtype=args[0].dtype, device="meta")
    state = states.get(target)
    if state is None:
        state = states[target] = {k: _to_meta(v) for k, v in [*mod.named_parameters(), *mod.named_buffers()]}
    return torch.func.functional_call(mod, state, args, kwargs)


def _call_function(target: Any, args: tuple, kwargs: dict) -> Any:
    try:
        rule = FUNCTION_SHAPES.get(target)
    except TypeError:  # an unhashable callable
        rule = None
    if rule is not None and all(_plain_float(v) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)):
        out = rule(args, kwargs)
        if out is not None:
            return torch.empty(out[0], dtype=out[1], device="meta")
    return target(*args, **kwargs)


def _plain_float(x: Any) -> bool:
    """What the shape formulas assume of an input: a floating meta tensor laid out as ``torch.empty``
    lays it out (so the output is too)."""
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.is_meta and x.layout is torch.strided \
        and _row_major(x)


def _runs_its_class_forward(mod: nn.Module) -> bool:
    """Hooks or a forward set on the instance may change what a module returns: only running
    it says what."""
    return not (mod._forward_hooks or mod._forward_pre_hooks or _module_mod._global_forward_hooks
                or _module_mod._global_forward_pre_hooks or "forward" in mod.__dict__)


def _own_dtypes_are(mod: nn.Module, dtype: torch.dtype) -> bool:
    return all(t.dtype == dtype for t in (*mod._parameters.values(), *mod._buffers.values())
               if t is not None and t.is_floating_point())


def propagate_shapes(gm: fx.GraphModule, example_inputs: Any) -> fx.GraphModule:
    """Annotate ``gm`` in place with shapes for ``example_inputs``: meta tensors first, fake
    tensors if an op cannot run on meta, one real forward if a leaf needs tensor values."""
    inputs = as_tuple(example_inputs)
    try:
        propagate_on_meta(gm, inputs)
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
    tracer = _Tracer(tuple(leaf_modules))
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = _innermost_module(e)
        raise DCPError(
            f"cannot trace {type(model).__name__}{where}: {type(e).__name__}: {str(e).splitlines()[0]} "
            f"-- data-dependent control flow or untraceable calls must live in a leaf module: "
            f"pass leaf_modules=(ThatModule,) so it is kept as one opaque call") from e
    # not torch's _LazyGraphModule (its code is written on first use, 4 ms less on a mobile net):
    # its forward(*args, **kwargs) signature breaks torch.export's dynamic_shapes matching
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def create_arg(self, a: Any) -> Any:
        # fx.Tracer first asks each argument whether it is a Parameter (a Python-level isinstance),
        # a tensor constant or a module: proxies, numbers and plain containers are none of these.
        kind = type(a)
        if kind is fx.Proxy:
            return a.node
        if kind in _PLAIN_ARGS:
            return a
        if kind is tuple:
            return tuple([self.create_arg(v) for v in a])
        if kind is list:
            return [self.create_arg(v) for v in a]
        return super().create_arg(a)


_PLAIN_ARGS = frozenset({int, float, bool, str, type(None), type(...), torch.dtype, torch.device})


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
