"""Arguments and helpers shared by several subcommands."""
from __future__ import annotations

import argparse

import torch

from ..models import input_channels


def add_model_arg(parser: argparse.ArgumentParser, required: bool = True, default: str | None = None) -> None:
    parser.add_argument("--model", required=required and default is None, default=default,
                        help="dim, dim:WIDTH (e.g. dim:0.25), a checkpoint file, or a compiled artifact folder")
    add_trust_pickle_arg(parser)


def add_trust_pickle_arg(parser: argparse.ArgumentParser) -> None:
    """The one opt-in for unpickling: without it, checkpoints load with weights_only=True."""
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow loading a pickled foreign checkpoint (e.g. BEST_checkpoint.tar); it can run code")


def add_size_arg(parser: argparse.ArgumentParser, default=(320, 320)) -> None:
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=list(default),
                        help=f"example input size (default {default[0]} {default[1]})")


def example_input(model: torch.nn.Module, size) -> torch.Tensor:
    """A zero input of the model's channel count (4 for DIM: RGB + trimap)."""
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"--size must be positive, got {h} {w}")
    return torch.zeros(1, input_channels(model), h, w)
