"""A GraphModule as data: JSON graph + module specs + a weights-only state_dict.

Loads in a fresh process where the model's Python class does not exist, and never runs code
from the file: modules must be leaf ``torch.nn`` layers (rebuilt from their constructor
arguments), functions and tensor methods come from allow-lists, names must be plain, values
are JSON constants / node references / dtypes / slices, tensors come from
``torch.load(weights_only=True)``; ``spec_to_graph`` checks all of it before building.

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
import keyword
import math
import operator
import re
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

# Tensor methods a saved graph may call: the ones traced models use (shape queries, views,
# reductions, elementwise math, dtype casts). Never dunders or private names: a method name
# is looked up on a value and pasted into generated source, so it is a way to reach any object.
METHODS = frozenset((
    "size", "dim", "numel", "ndimension", "view", "view_as", "reshape", "reshape_as", "flatten", "permute",
    "transpose", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "chunk", "split",
    "mean", "sum", "amax", "amin", "max", "min", "softmax", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "clamp", "clamp_", "hardtanh_", "neg", "abs", "exp", "sqrt", "pow", "add", "add_", "sub", "sub_", "mul",
    "mul_", "div", "div_", "clone", "detach", "float", "half", "double", "to", "type_as"))

# torch.nn classes that hold other modules: a saved graph calls leaf layers only.
CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _module_spec(mod: nn.Module) -> dict:
    cls = type(mod)
    try:
        allowed = _module_class(cls.__name__) is cls
    except DCPError:
        allowed = False
    if not allowed:
        raise DCPError(f"cannot save module of type {cls.__module__}.{cls.__name__}: only torch.nn layers")
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
        if not all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in a):
            raise DCPError(f"cannot save a dict with keys {list(a)[:3]}: only plain names load back")
        return {"dict": {k: _encode_arg(v) for k, v in a.items()}}
    return _encode_const(a)


def _decode(v: Any, env: dict[str, fx.Node]) -> Any:
    """Only what ``_encode_arg`` writes: JSON scalars, node references, containers of values,
    slices and dtypes; anything else is refused."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if not (isinstance(v, dict) and len(v) == 1):
        raise DCPError(f"bad graph file: value {_short(v)} is not an encoded constant")
    (kind, payload), = v.items()
    if kind == "node":
        if not isinstance(payload, str) or payload not in env:
            raise DCPError(f"bad graph file: reference to undefined node {_short(payload)}")
        return env[payload]
    if kind in ("tuple", "list") and isinstance(payload, list):
        items = [_decode(x, env) for x in payload]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict" and isinstance(payload, dict):
        return {_name(k, "dict key"): _decode(x, env) for k, x in payload.items()}
    if kind == "dtype" and isinstance(payload, str) and isinstance(getattr(torch, payload, None), torch.dtype):
        return getattr(torch, payload)
    if kind == "slice" and isinstance(payload, list) and len(payload) == 3:
        parts = [_decode(x, env) for x in payload]
        if all(p is None or isinstance(p, int) or isinstance(p, fx.Node) for p in parts):
            return slice(*parts)
    raise DCPError(f"bad graph file: value {_short(v)} is not an encoded constant")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(name: Any, what: str) -> str:
    """A Python identifier that is not a keyword: the generated forward() uses these verbatim."""
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
        raise DCPError(f"bad graph file: {what} {_short(name)} is not a plain name")
    return name


def _qualname(name: Any, what: str) -> str:
    """A dotted attribute path such as ``down1.conv1.0.weight``: word characters, no dunders."""
    if not (isinstance(name, str) and name and all(re.fullmatch(r"\w+", p) and not p.startswith("__")
                                                    for p in name.split("."))):
        raise DCPError(f"bad graph file: {what} {_short(name)} is not an attribute path")
    return name


def _module_class(type_name: Any) -> type:
    """A leaf ``torch.nn`` layer class (no containers, no base ``Module``)."""
    cls = getattr(nn, type_name, None) if isinstance(type_name, str) and not type_name.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls not in CONTAINERS
            and cls.__module__.startswith("torch.nn.modules.")):
        raise DCPError(f"bad graph file: module type {_short(type_name)} is not an allowed torch.nn layer")
    return cls


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
        elif n.op == "call_method" and target not in METHODS:
            raise DCPError(f"cannot save node '{n.name}': method .{target}() is not on the allow-list")
        nodes.append({"name": n.name, "op": n.op, "target": target,
                      "args": _encode_arg(n.args), "kwargs": _encode_arg(n.kwargs)})
    buffers_and_params = [k for k, _ in gm.named_parameters()] + [k for k, _ in gm.named_buffers()]
    attrs = sorted({n["target"] for n in nodes if n["op"] == "get_attr"} & set(buffers_and_params))
    return {"format": "dcp-graph/1", "modules": modules, "nodes": nodes, "attrs": attrs}


def spec_to_graph(spec: dict, state_dict: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rebuild the GraphModule that ``graph_to_spec`` described, with its weights.

    Everything is checked before any code runs (the GraphModule compiles Python source from
    the graph: names, targets and keyword names end up in it): op kinds, function and method
    allow-lists, module types, attribute paths, value kinds; anything else is a DCPError.
    """
    if not isinstance(spec, dict) or spec.get("format") != "dcp-graph/1":
        raise DCPError(f"not a dcp graph file (format {spec.get('format') if isinstance(spec, dict) else None!r})")
    modules, nodes, attrs = spec.get("modules"), spec.get("nodes"), spec.get("attrs", [])
    if not (isinstance(modules, dict) and isinstance(nodes, list) and isinstance(attrs, list)):
        raise DCPError("bad graph file: 'modules', 'nodes' and 'attrs' must be an object and two lists")
    root = nn.Module()
    for qualname, m in modules.items():
        _build_module(root, _qualname(qualname, "module name"), m)
    for name in attrs:
        if _qualname(name, "attribute") not in state_dict:
            raise DCPError(f"bad graph file: attribute '{name}' has no tensor in the weights")
        _set_attr(root, name, state_dict[name])
    graph, env, inputs = fx.Graph(), {}, set()
    for i, n in enumerate(nodes):
        if not (isinstance(n, dict) and isinstance(n.get("name"), str) and n["name"] not in env):
            raise DCPError(f"bad graph file: node #{i} has no name or a duplicate one")
        try:
            op, target, args, kwargs = _check_node(n, env, set(modules), set(state_dict))
        except DCPError as e:
            raise DCPError(f"{e} (node #{i} '{n['name']}')") from None
        if op == "placeholder":
            if target in inputs or target == "self":  # forward(self, x, x) would not compile
                raise DCPError(f"bad graph file: input name '{target}' is used twice")
            inputs.add(target)
        env[n["name"]] = graph.create_node(op, target, args, kwargs, name=n["name"])
    if [n.op for n in graph.nodes].count("output") != 1 or (nodes and nodes[-1].get("op") != "output"):
        raise DCPError("bad graph file: the graph must end with its one output node")
    gm = fx.GraphModule(root, graph)
    try:
        missing, unexpected = gm.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shapes that do not fit the modules
        raise DCPError(f"weights do not fit the graph: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise DCPError(f"weights do not fit the graph: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return gm


OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")


def _check_node(n: dict, env: dict[str, fx.Node], modules: set[str], weights: set[str]) -> tuple:
    """(op, target, args, kwargs) of one node, every part checked."""
    op, target = n.get("op"), n.get("target")
    if op not in OPS:
        raise DCPError(f"bad graph file: unknown node kind {_short(op)}")
    args, kwargs = _decode(n.get("args", {"tuple": []}), env), _decode(n.get("kwargs", {"dict": {}}), env)
    if not (isinstance(args, tuple) and isinstance(kwargs, dict)):
        raise DCPError("bad graph file: args must be a tuple and kwargs a dict")
    if op == "placeholder":
        _name(target, "input name")
    elif op == "output":
        if target != "output":
            raise DCPError(f"bad graph file: output target {_short(target)}")
    elif op == "call_function":
        if target not in FUNCTIONS:
            raise DCPError(f"bad graph file: function {_short(target)} is not allowed")
        target = FUNCTIONS[target]
    elif op == "call_method":
        if target not in METHODS:
            raise DCPError(f"bad graph file: method {_short(target)} is not allowed")
        if not (args and isinstance(args[0], fx.Node)):
            raise DCPError(f"bad graph file: method .{target}() must be called on a node's value")
    elif op == "call_module" and _qualname(target, "module") not in modules:
        raise DCPError(f"bad graph file: module '{target}' is not defined")
    elif op == "get_attr" and _qualname(target, "attribute") not in weights:
        raise DCPError(f"bad graph file: attribute '{target}' has no tensor in the weights")
    return op, target, args, kwargs


def _build_module(root: nn.Module, qualname: str, m: Any) -> None:
    if not (isinstance(m, dict) and isinstance(m.get("kwargs"), dict)):
        raise DCPError(f"bad graph file: module '{qualname}' has no type and kwargs")
    cls = _module_class(m.get("type"))
    kwargs = {_name(k, "module argument"): _decode(v, {}) for k, v in m["kwargs"].items()}
    try:
        module = cls(**kwargs)
        _set_submodule(root, qualname, module)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        raise DCPError(f"bad graph file: cannot build module '{qualname}' ({cls.__name__}): "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _parent(root: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    """The module that holds ``qualname``'s last part, creating empty containers on the way."""
    *path, last = qualname.split(".")
    parent = root
    for part in path:
        if part not in parent._modules:
            if hasattr(parent, part):  # e.g. "training", "forward": not a place for a module
                raise DCPError(f"bad graph file: '{qualname}' clashes with the module attribute '{part}'")
            parent.add_module(part, nn.Module())
        parent = parent._modules[part]
    if hasattr(parent, last):
        raise DCPError(f"bad graph file: '{qualname}' is defined twice or clashes with a module attribute")
    return parent, last


def _set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, last = _parent(root, qualname)
    parent.add_module(last, module)


def _set_attr(root: nn.Module, qualname: str, value: torch.Tensor) -> None:
    parent, last = _parent(root, qualname)
    parent.register_buffer(last, value.clone())
