"""torch.distributed in one place: the same training code runs alone or under ``torchrun``.

``torchrun --nproc_per_node=N -m compiler train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`setup` then joins the process group (NCCL on GPU, gloo on CPU). Rank 0 alone logs,
shows progress and writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from ..device import pick_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device_pref: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    if world > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def barrier(d: Dist) -> None:
    if d.active:
        tdist.barrier()


def all_reduce_sum(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 vector over ranks (on the communication device of the backend)."""
    if not d.active:
        return values
    t = values.to(d.device if d.device.type == "cuda" else "cpu")
    tdist.all_reduce(t)
    return t.cpu()


def cleanup(d: Dist) -> None:
    if d.active and tdist.is_initialized():
        tdist.destroy_process_group()
