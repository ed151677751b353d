"""Resolve a ``--model`` argument to a module: ``dim``, ``dim:0.25``, a checkpoint, or an artifact."""
from __future__ import annotations

from pathlib import Path

from torch import nn

import matting
from matting.checkpoint import load_dim
from passes.errors import DCPError


def load_model(spec: str, trust_pickle: bool = False) -> nn.Module:
    """``dim`` / ``dim:WIDTH`` build a random-init teacher; a path loads a checkpoint or a
    compiled artifact (what ``compiler.save`` wrote)."""
    if spec == "dim" or spec.startswith("dim:"):
        try:
            width = float(spec.split(":", 1)[1]) if ":" in spec else 1.0
        except ValueError:
            raise DCPError(f"bad model spec '{spec}': expected dim or dim:WIDTH (e.g. dim:0.25)") from None
        return matting.dim(width=width)
    path = Path(spec)
    if not path.exists():
        raise DCPError(f"no such model file or folder: {spec} (or use dim, dim:WIDTH)")
    from . import artifact
    if artifact.is_artifact(path):
        return artifact.load(path)
    return load_dim(path, trust_pickle=trust_pickle)


def input_channels(model: nn.Module) -> int:
    """The channel count a model's input has: its ``in_channels``, else its first conv's, else 4
    (DIM: RGB + trimap)."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return getattr(model, "in_channels", None) or (first_conv.in_channels if first_conv else 4)
