"""Capture intermediate features by module name with forward hooks (the distillation taps).

Works on the eager DIM and on a compiled ``torch.fx.GraphModule`` alike, because the compiler
keeps qualified module names. A module that returns a tuple (pool with indices) is tapped
at its first output.

>>> import torch, matting
>>> model = matting.dim(width=0.125)
>>> with FeatureTaps(model, matting.TAP_MODULES) as taps:
...     _ = model(torch.zeros(1, 4, 32, 32))
>>> [tuple(f.shape[1:]) for f in taps.features]
[(16, 8, 8), (32, 4, 4), (64, 2, 2), (64, 1, 1)]
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from passes.errors import DCPError


class FeatureTaps:
    """Hooks on ``names``; after each forward ``features`` holds their outputs in that order.

    Use as a context manager, or call :meth:`remove` when done. ``features`` is reset at the
    start of every forward of ``model`` so stale tensors never leak between steps.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise DCPError(f"cannot tap {missing}: no such module (known e.g. {list(modules)[1:4]})")
        self.names = tuple(names)
        self._out: dict[str, torch.Tensor] = {}
        self._handles = [model.register_forward_pre_hook(lambda *_: self._out.clear())]
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self._out[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    @property
    def features(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self._out]
        if missing:
            raise RuntimeError(f"taps {missing} did not fire: run a forward first")
        return [self._out[n] for n in self.names]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def tap_widths(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[int]:
    """Channel count of each tap for ``example`` (one no-grad forward)."""
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, names) as taps, torch.no_grad():
            model(example)
            return [int(f.shape[1]) for f in taps.features]
    finally:
        model.train(was_training)
