"""Checkpoints: our own files, plain state_dicts, the public ``BEST_checkpoint.tar``, VGG16 init.

Nothing here unpickles arbitrary code by default: ``torch.load(weights_only=True)``. The public
DIM checkpoint is a pickled ``DataParallel(DIMModel)`` and loads only with ``trust_pickle=True``,
through an unpickler that maps its classes onto a plain shim module.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from passes.errors import DCPError

from .atomic import new_file
from .data.io import require_file
from .model import DIM, ENCODER


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`matting.atomic.new_file`: never a half-written checkpoint."""
    with new_file(path) as f:
        torch.save(obj, f)


def read_torch_file(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """Load a torch file safely; clear one-line errors for missing, corrupt or pickled files."""
    path = require_file(path, "a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise DCPError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]})") from e
        if not trust_pickle:
            raise DCPError(f"{path} contains pickled Python objects; it could run code when loaded. "
                           f"If you trust its source, pass --trust-pickle (trust_pickle=True)") from e
        return _load_foreign_pickle(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise DCPError(f"{path} is not a readable torch checkpoint (corrupt or truncated: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from e


class _Shim(nn.Module):
    """Stands in for any foreign module class; unpickling restores its parameters and children."""

    def forward(self, *args):  # pragma: no cover - never called
        raise RuntimeError("a shim of a foreign class cannot run; use its state_dict")


class _ShimUnpickler(pickle.Unpickler):
    """Resolve torch classes normally and map every other class onto ``_Shim``."""

    SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "str", "bool", "bytes",
                     "bytearray", "slice", "complex", "object"}

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__"):
            if name not in self.SAFE_BUILTINS:
                raise pickle.UnpicklingError(f"refusing builtin {name} in a checkpoint")
            return super().find_class("builtins", name)
        if module.startswith(("torch", "collections", "_codecs", "numpy")):
            return super().find_class(module, name)
        return _Shim


class _ShimPickleModule:
    Unpickler = _ShimUnpickler
    load = pickle.load
    __name__ = "shim_pickle"


def _load_foreign_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_ShimPickleModule)
    except Exception as e:
        raise DCPError(f"cannot read pickled checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the model weights in the shapes checkpoints come in; strip DataParallel's prefix."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj:
                return extract_state_dict(obj[key])
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DCPError("checkpoint holds no state_dict (expected tensors, or a 'model'/'state_dict' entry)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def dim_widths_from_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, int], int]:
    """Recover DIM's per-layer widths (and input channels) from its conv weight shapes."""
    widths = {}
    for key, value in state.items():
        if key.endswith(".cbr_unit.0.weight") and not key.startswith("up1."):
            widths[key.removesuffix(".cbr_unit.0.weight")] = int(value.shape[0])
    first = state.get("down1.conv1.cbr_unit.0.weight")
    if first is None:
        raise DCPError("not a DIM state_dict: no 'down1.conv1.cbr_unit.0.weight'")
    return widths, int(first.shape[1])


def dim_from_state_dict(state: Mapping[str, torch.Tensor]) -> DIM:
    widths, in_channels = dim_widths_from_state_dict(state)
    model = DIM(widths, in_channels=in_channels)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DCPError(f"state_dict does not fit DIM: {str(e).splitlines()[0]}") from e
    return model


def load_dim(path: str | os.PathLike, trust_pickle: bool = False) -> DIM:
    """A DIM from any checkpoint file: ours, a plain state_dict, or (trusted) BEST_checkpoint.tar."""
    return dim_from_state_dict(extract_state_dict(read_torch_file(path, trust_pickle=trust_pickle)))


def save_dim(model: DIM, path: str | os.PathLike, **extra: Any) -> None:
    atomic_save({"arch": "dim", "widths": dict(model.widths), "state_dict": model.state_dict(), **extra}, path)


# torchvision vgg16 "features" conv indices, in encoder order.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def init_from_vgg16(model: DIM, path: str | os.PathLike) -> DIM:
    """Copy a LOCAL torchvision VGG16 state_dict into the encoder; the trimap channel starts at 0."""
    state = extract_state_dict(read_torch_file(path))
    convs = [f"{block}.conv{i}.cbr_unit.0" for block, n, _ in ENCODER for i in range(1, n + 1)]
    with torch.no_grad():
        for name, idx in zip(convs, VGG16_CONVS):
            conv = model.get_submodule(name)
            w, b = state.get(f"features.{idx}.weight"), state.get(f"features.{idx}.bias")
            if w is None or b is None:
                raise DCPError(f"{path}: not a torchvision VGG16 state_dict (no features.{idx}.weight)")
            if w.shape[0] != conv.out_channels or w.shape[1] > conv.in_channels:
                raise DCPError(f"VGG16 layer features.{idx} {tuple(w.shape)} does not fit {name} "
                               f"{tuple(conv.weight.shape)} (VGG init needs the full-width teacher)")
            conv.weight.zero_()
            conv.weight[:, : w.shape[1]] = w
            conv.bias.copy_(b)
    return model
