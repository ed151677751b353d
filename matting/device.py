"""Which torch device to run on, for inference and training alike.

>>> pick_device("cpu")
device(type='cpu')
>>> pick_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
True
"""
from __future__ import annotations

import torch

from passes.errors import DCPError


def pick_device(device: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``None``/"auto": this process's GPU (``cuda:local_rank``) when CUDA is present, else the CPU;
    "cuda": that GPU, an error without one; anything else ("cpu", "cuda:1", ...) as given."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DCPError(f"device {device} asked for, but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
