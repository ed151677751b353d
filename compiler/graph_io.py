"""A GraphModule as data: JSON graph + module specs + a weights-only state_dict.

Loads in a fresh process where the model's Python class does not exist, and never unpickles
code: modules must be ``torch.nn`` types (rebuilt from their constructor arguments), functions
come from an allow-list, tensors from ``torch.load(weights_only=True)``.

>>> import torch
>>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()))
>>> spec = graph_to_spec(gm)
>>> rebuilt = spec_to_graph(spec, gm.state_dict())
>>> x = torch.randn(1, 3, 8, 8)
>>> bool(torch.equal(rebuilt(x), gm(x)))
True
"""
from __future__ import annotations

import inspect
import math
import operator
from typing import Any

import torch
from torch import fx, nn
import torch.nn.functional as F

from passes.errors import DCPError

# Functions a saved graph may call, by stable name.
FUNCTIONS: dict[str, Any] = {f"operator.{n}": getattr(operator, n) for n in
                             ("getitem", "add", "sub", "mul", "truediv", "floordiv", "neg", "iadd", "imul")}
FUNCTIONS.update({f"torch.{n}": getattr(torch, n) for n in
                  ("cat", "flatten", "sigmoid", "relu", "tanh", "squeeze", "unsqueeze", "split", "chunk",
                   "add", "mul", "sub", "div", "stack", "reshape", "mean", "clamp", "where", "zeros_like",
                   "ones_like", "matmul", "transpose", "permute", "max_pool2d")})
FUNCTIONS.update({f"F.{n}": getattr(F, n) for n in
                  ("relu", "relu6", "interpolate", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
                   "max_unpool2d", "sigmoid", "hardswish", "hardsigmoid", "silu", "gelu", "dropout",
                   "batch_norm", "conv2d", "linear", "pad", "leaky_relu", "softmax")})
FUNCTIONS["math.sqrt"] = math.sqrt
FUNCTION_NAMES = {id(f): name for name, f in FUNCTIONS.items()}


def _module_spec(mod: nn.Module) -> dict:
    cls = type(mod)
    if getattr(nn, cls.__name__, None) is not cls:
        raise DCPError(f"cannot save module of type {cls.__module__}.{cls.__name__}: only torch.nn types")
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "device", "dtype") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and isinstance(getattr(mod, "bias", None), (torch.Tensor, type(None))):
            kwargs[name] = mod.bias is not None
        elif hasattr(mod, name):
            kwargs[name] = _encode_const(getattr(mod, name))
    return {"type": cls.__name__, "kwargs": kwargs}


def _encode_const(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return {"tuple" if isinstance(v, tuple) else "list": [_encode_const(x) for x in v]}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, slice):
        return {"slice": [_encode_const(v.start), _encode_const(v.stop), _encode_const(v.step)]}
    raise DCPError(f"cannot save constant {v!r} of type {type(v).__name__}")


def _encode_arg(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, (tuple, list)):
        return {"tuple" if isinstance(a, tuple) else "list": [_encode_arg(x) for x in a]}
    if isinstance(a, dict):
        return {"dict": {k: _encode_arg(v) for k, v in a.items()}}
    return _encode_const(a)


def _decode(v: Any, env: dict[str, fx.Node]) -> Any:
    if not isinstance(v, dict):
        return v
    (kind, payload), = v.items()
    if kind == "node":
        return env[payload]
    if kind in ("tuple", "list"):
        items = [_decode(x, env) for x in payload]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _decode(x, env) for k, x in payload.items()}
    if kind == "dtype":
        return getattr(torch, payload)
    if kind == "slice":
        return slice(*(_decode(x, env) for x in payload))
    raise DCPError(f"bad graph file: unknown value kind '{kind}'")


def graph_to_spec(gm: fx.GraphModule) -> dict:
    """Describe ``gm`` as JSON-able data (weights go separately, in its state_dict)."""
    modules, nodes = {}, []
    for n in gm.graph.nodes:
        target = n.target
        if n.op == "call_module":
            modules[target] = _module_spec(gm.get_submodule(target))
        elif n.op == "call_function":
            if id(target) not in FUNCTION_NAMES:
                raise DCPError(f"cannot save node '{n.name}': function {target} is not on the allow-list")
            target = FUNCTION_NAMES[id(target)]
        elif n.op == "get_attr":
            pass
        nodes.append({"name": n.name, "op": n.op, "target": target,
                      "args": _encode_arg(n.args), "kwargs": _encode_arg(n.kwargs)})
    buffers_and_params = [k for k, _ in gm.named_parameters()] + [k for k, _ in gm.named_buffers()]
    attrs = sorted({n["target"] for n in nodes if n["op"] == "get_attr"} & set(buffers_and_params))
    return {"format": "dcp-graph/1", "modules": modules, "nodes": nodes, "attrs": attrs}


def spec_to_graph(spec: dict, state_dict: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rebuild the GraphModule that ``graph_to_spec`` described, with its weights."""
    if spec.get("format") != "dcp-graph/1":
        raise DCPError(f"not a dcp graph file (format {spec.get('format')!r})")
    root = nn.Module()
    for qualname, m in spec["modules"].items():
        cls = getattr(nn, m["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise DCPError(f"bad graph file: '{m['type']}' is not a torch.nn module")
        _set_submodule(root, qualname, cls(**{k: _decode(v, {}) for k, v in m["kwargs"].items()}))
    for name in spec.get("attrs", []):
        _set_attr(root, name, state_dict[name])
    graph, env = fx.Graph(), {}
    for n in spec["nodes"]:
        target = n["target"]
        if n["op"] == "call_function":
            if target not in FUNCTIONS:
                raise DCPError(f"bad graph file: function '{target}' is not allowed")
            target = FUNCTIONS[target]
        node = graph.create_node(n["op"], target, _decode(n["args"], env), _decode(n["kwargs"], env), name=n["name"])
        env[n["name"]] = node
    gm = fx.GraphModule(root, graph)
    missing, unexpected = gm.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise DCPError(f"weights do not fit the graph: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return gm


def _parent(root: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    """The module that holds ``qualname``'s last part, creating empty containers on the way."""
    *path, last = qualname.split(".")
    parent = root
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    return parent, last


def _set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, last = _parent(root, qualname)
    parent.add_module(last, module)


def _set_attr(root: nn.Module, qualname: str, value: torch.Tensor) -> None:
    parent, last = _parent(root, qualname)
    parent.register_buffer(last, value.clone())
