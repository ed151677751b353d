"""The (training, validation) data sets of a run, from what the user names as ``--data``.

- ``random:N``: N toy samples (``RandomMattes``, no files; smoke runs), validation
  ``val_fraction`` of N more;
- a data-set folder (``dcp data synth`` / ``composite``): training crops over a seeded split of
  its names, validation on the rest at full size; or on ``val_spec``, another folder, whole.

The settings read from ``cfg`` are ``size`` (the crop), ``jitter``, ``seed`` and ``val_fraction``.

>>> cfg = {"size": 32, "jitter": 0.0, "seed": 0, "val_fraction": 0.25}
>>> train, val = datasets("random:8", None, cfg)
>>> len(train), len(val)
(8, 2)
"""
from __future__ import annotations

import random

from passes.errors import DCPError


def datasets(spec: str, val_spec: str | None, cfg: dict):
    """(train, validation) datasets for ``--data``/``--val-data`` (validation may be None)."""
    if spec.startswith("random:"):
        from .toydata import RandomMattes
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise DCPError(f"--data {spec}: expected random:N with N a number of samples") from None
        n_val = round(n * cfg["val_fraction"])
        val = RandomMattes(n_val, size=cfg["size"], seed=cfg["seed"] + 1) if n_val else None
        return RandomMattes(n, size=cfg["size"], seed=cfg["seed"]), val
    from ..data.folder import MattingFolder, folder_names
    names = folder_names(spec)
    if val_spec:
        train_names, val = names, MattingFolder(val_spec)
    else:
        shuffled = sorted(names)
        random.Random(cfg["seed"]).shuffle(shuffled)
        n_val = min(len(names) - 1, max(1 if cfg["val_fraction"] > 0 else 0, round(len(names) * cfg["val_fraction"])))
        train_names = shuffled[n_val:]
        val = MattingFolder(spec, names=shuffled[:n_val]) if n_val > 0 else None
    train = MattingFolder(spec, crop=cfg["size"], train=True, jitter=cfg["jitter"], seed=cfg["seed"], names=train_names)
    return train, val
