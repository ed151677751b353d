"""Compiled artifacts on disk: a folder that loads without the model's Python class.

Layout of ``OUT/``:
- ``graph.json``  the compact FX graph as data (``graph_io``): the TRAINABLE form, used by
  ``dcp train finetune``, ``matte``, ``export`` and ``bench``;
- ``weights.pt``  its state_dict, read with ``torch.load(weights_only=True)``;
- ``plan.json``   what was kept: widths, kept channel indices per module, the report summary.

The folder is written whole and swapped in (``matting.atomic.new_folder``): a reader sees the
old artifact or the complete new one, never a mix.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from passes.errors import DCPError

from .graph_io import graph_to_spec, spec_to_graph

GRAPH, WEIGHTS, PLAN = "graph.json", "weights.pt", "plan.json"


def is_artifact(path: str | os.PathLike) -> bool:
    return (Path(path) / GRAPH).is_file()


def save_module(module: nn.Module, path: str | os.PathLike, plan: dict[str, Any] | None = None) -> Path:
    """Write ``module`` (traced if it is not a GraphModule) and ``plan`` as an artifact folder."""
    from matting.atomic import new_folder  # here, not at the top: load() must not import matting
    from passes.trace import symbolic_trace
    gm = module if isinstance(module, fx.GraphModule) else symbolic_trace(module)
    spec = graph_to_spec(gm)
    path = Path(path)
    with new_folder(path) as tmp:
        (tmp / GRAPH).write_text(json.dumps(spec, indent=1))
        torch.save({k: v.detach().cpu() for k, v in gm.state_dict().items()}, tmp / WEIGHTS)
        (tmp / PLAN).write_text(json.dumps(plan or {}, indent=1, default=_jsonable))
    return path


def load(path: str | os.PathLike) -> fx.GraphModule:
    """The compiled model as a trainable GraphModule in eval mode. Nothing in the folder runs:
    the graph is checked against allow-lists before it is built (``graph_io.spec_to_graph``),
    tensors are read with ``weights_only=True``; a bad file is a DCPError."""
    path = Path(path)
    if not is_artifact(path):
        raise DCPError(f"{path} is not a dcp artifact (no {GRAPH})")
    try:
        spec = json.loads((path / GRAPH).read_text())
        state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise DCPError(f"cannot read artifact {path}: {str(e).splitlines()[0]}") from e
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise DCPError(f"cannot read artifact {path}: {WEIGHTS} is not a state_dict of named tensors")
    gm = spec_to_graph(spec, state)
    gm.dcp_plan = read_plan(path)
    return gm.eval()  # inference by default; training code calls .train()


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / PLAN
    return json.loads(p.read_text()) if p.is_file() else {}


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "_asdict"):
        return v._asdict()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")
