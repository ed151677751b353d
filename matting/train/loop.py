"""The training loop shared by every stage: Adam, element-wise grad clamp, optional LR schedule,
AMP on GPU, DDP, a checkpoint per epoch plus the best by validation, and resume.

Files in ``out``: ``last.pt`` (full training state, written atomically at the end of every
epoch: a kill -9 loses at most the running epoch), ``best.pt`` (the student with the lowest
validation loss), ``log.csv``/``log.json``/``loss.png``. Both ``.pt`` files keep the student
under ``state_dict`` (so ``matting.checkpoint.load_dim`` reads a DIM student) plus ``meta``.

Randomness is re-seeded from (seed, epoch, rank) at the start of every epoch and the data
order is a function of (seed, epoch), so a resumed run repeats the uninterrupted one exactly
(on CPU; GPU kernels may not be deterministic).
"""
from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from passes.errors import DCPError

from ..checkpoint import atomic_save, read_torch_file
from . import dist
from .inputs import to_device
from .log import EpochLog

LAST, BEST = "last.pt", "best.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _loader(data: Dataset, cfg: dict, d: dist.Dist, shuffle: bool) -> tuple[DataLoader, DistributedSampler]:
    sampler = DistributedSampler(data, num_replicas=d.world, rank=d.rank, shuffle=shuffle, seed=cfg["seed"],
                                 drop_last=False)
    loader = DataLoader(data, batch_size=cfg["batch_size"] if shuffle else 1, sampler=sampler,
                        num_workers=cfg["workers"], pin_memory=d.device.type == "cuda",
                        persistent_workers=False)
    return loader, sampler


def _scheduler(opt: torch.optim.Optimizer, cfg: dict):
    if cfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
    if cfg["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_size"], gamma=cfg["step_gamma"])
    return None


class Trainer:
    """``Trainer(task, cfg, out).fit(train_set, val_set)``; ``after_backward`` runs between
    backward and the optimiser step (the sparsity subgradient); ``meta`` goes into every .pt."""

    def __init__(self, task: nn.Module, cfg: dict[str, Any], out: str | Path,
                 after_backward: Callable[[], None] | None = None, meta: dict[str, Any] | None = None):
        self.task, self.cfg, self.out = task, cfg, Path(out)
        self.after_backward, self.meta = after_backward, dict(meta or {})
        self.d = dist.setup(cfg["device"])
        task.to(self.d.device)
        if self.d.active:
            ids = [self.d.device.index] if self.d.device.type == "cuda" else None
            self.model = DistributedDataParallel(task, device_ids=ids)
        else:
            self.model = task
        self.params = [p for p in task.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.sched = _scheduler(self.opt, cfg)
        cuda = self.d.device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg["amp_dtype"])
        self.amp = bool(cfg["amp"]) and cuda
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.log = EpochLog(self.out)
        self.start_epoch, self.best = 0, math.inf

    # -- checkpoints ---------------------------------------------------------------------
    def _payload(self, epoch: int, val: float) -> dict[str, Any]:
        adapters = self.task.adapters
        return {**self.meta, "state_dict": self.task.student.state_dict(), "epoch": epoch, "val_loss": val,
                "adapters": adapters.state_dict() if adapters is not None else {}}

    def save(self, epoch: int, val: float) -> None:
        payload = self._payload(epoch, val)
        if val < self.best:
            self.best = val
            atomic_save(payload, self.out / BEST)
        atomic_save({**payload, "best": self.best, "config": self.cfg, "optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict() if self.sched else {},
                     "scaler": self.scaler.state_dict()}, self.out / LAST)

    def resume(self) -> bool:
        """Continue from ``out/last.pt`` if it exists; returns whether it did."""
        path = self.out / LAST
        if not path.is_file():
            return False
        ck = read_torch_file(path)
        try:
            self.task.student.load_state_dict(ck["state_dict"])
            if self.task.adapters is not None:
                self.task.adapters.load_state_dict(ck["adapters"])
            self.opt.load_state_dict(ck["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise DCPError(f"cannot resume from {path}: it does not fit this model/config "
                           f"({str(e).strip().splitlines()[0]})") from e
        if self.sched and ck.get("scheduler"):
            self.sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.start_epoch, self.best = int(ck["epoch"]) + 1, float(ck["best"])
        self.log.load(self.start_epoch)
        return True

    # -- one epoch -----------------------------------------------------------------------
    def _step(self, batch: dict[str, Any]) -> dict[str, float]:
        with torch.autocast(self.d.device.type, dtype=self.amp_dtype, enabled=self.amp):
            terms = self.model(batch)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.opt)
        clamp = self.cfg["grad_clamp"]
        if clamp:
            for p in self.params:
                if p.grad is not None:
                    p.grad.clamp_(-clamp, clamp)
        if self.after_backward:  # after the clamp, so the L1 pull is never clipped away
            self.after_backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in terms.items()}

    def train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        self.task.train()
        sums: dict[str, float] = {}
        n = min(len(loader), self.cfg["max_steps"] or len(loader))
        bar = tqdm(loader, total=n, desc=f"epoch {epoch + 1}/{self.cfg['epochs']}", leave=False,
                   disable=not (self.d.main and self.cfg["progress"]), dynamic_ncols=True)
        for i, batch in enumerate(bar):
            if i >= n:
                break
            terms = self._step(to_device(batch, self.d.device))
            if not math.isfinite(terms["loss"]):
                raise DCPError(f"loss became {terms['loss']} at epoch {epoch + 1} step {i + 1}: lower lr")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}")
        bar.close()
        keys = sorted(sums)
        total = dist.all_reduce_sum(self.d, torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64))
        return {**{k: float(v / total[-1]) for k, v in zip(keys, total[:-1])}, "steps": int(total[-1])}

    @torch.no_grad()
    def validate(self, loader: DataLoader | None) -> float | None:
        if loader is None:
            return None
        self.task.eval()
        s = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            s += torch.tensor([float(self.task.val_loss(to_device(batch, self.d.device))), 1.0], dtype=torch.float64)
        s = dist.all_reduce_sum(self.d, s)
        return float(s[0] / max(s[1], 1))

    def fit(self, train_set: Dataset, val_set: Dataset | None = None, resume: bool = False) -> dict[str, Any]:
        """Train for ``cfg["epochs"]`` epochs (from where ``last.pt`` left off if ``resume``)."""
        if len(train_set) == 0:
            raise DCPError("the training set is empty")
        if resume:
            self.resume()
        elif (self.out / LAST).is_file() and self.d.main:
            print(f"warning: {self.out} holds an earlier run; starting over (pass --resume / resume=True "
                  f"to continue it)", file=sys.stderr)
        loader, sampler = _loader(train_set, self.cfg, self.d, shuffle=True)
        val_loader = _loader(val_set, self.cfg, self.d, shuffle=False)[0] if val_set is not None and len(val_set) else None
        epochs = range(self.start_epoch, self.cfg["epochs"])
        outer = tqdm(epochs, desc="epochs", disable=not (self.d.main and self.cfg["progress"]), dynamic_ncols=True)
        for epoch in outer:
            seed_everything(self.cfg["seed"] + 1000 * epoch + self.d.rank)
            sampler.set_epoch(epoch)
            if hasattr(train_set, "set_epoch"):  # per-epoch augmentation seeds (matting.data)
                train_set.set_epoch(epoch)
            t0 = time.time()
            train = self.train_epoch(loader, epoch)
            val = self.validate(val_loader)
            lr = self.opt.param_groups[0]["lr"]  # the rate this epoch trained with
            if self.sched:
                self.sched.step()
            score = val if val is not None else train["loss"]
            if self.d.main:
                self.save(epoch, score)
                self.log.append({"epoch": epoch, "train_loss": train["loss"], "val_loss": val,
                                 **{k: v for k, v in train.items() if k not in ("loss", "steps")},
                                 "steps": train["steps"],
                                 "lr": lr, "seconds": round(time.time() - t0, 2),
                                 "best": score <= self.best})
                outer.set_postfix(train=f"{train['loss']:.4f}", val="-" if val is None else f"{val:.4f}")
            else:
                self.best = min(self.best, score)
            dist.barrier(self.d)
        return {"epochs": self.cfg["epochs"], "best_val": self.best, "rows": self.log.rows}
