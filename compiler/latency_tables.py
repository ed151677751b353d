"""Latency tables: each unit (``compiler.latency.UnitSpec``) timed on an (input width x output
width) grid, cached on disk, and guarded against a disturbed clock.

A table entry is cached forever, so one timing taken while the machine stalled (another
process, the hypervisor descheduling the VM) would steer every later selection. Seen on this
project's 2-core VM: a 128->128 conv at 20x20 timed at 208 ms instead of 0.33 ms, for a whole
run of neighbouring entries. Hence the rules below:

- every new entry is timed in ``sweeps`` separate sweeps over ALL units, and the fastest kept
  (a stall hits a stretch of one sweep, not the same entry in the next one, seconds later);
- an entry is re-timed (up to ``retries`` times) while it looks disturbed: its sweeps disagree
  by more than ``SUSPECT``, or it costs more than ``SUSPECT`` above a WIDER entry of its own
  table. A narrower layer that is really slower (a GPU kernel staircase) survives re-timing
  and is kept as measured: the selection should see it and avoid that width.

Cache files are keyed by backend, device name, library versions, threads, the unit's signature
and ``TABLE_RULES`` (tables built under older rules are not reused).

>>> grid(8, 64, 5, 8)
[8, 24, 32, 48, 64]
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .latency import ORT_PROVIDER, UnitSpec, check_backend, confirmed, is_cuda, runner, time_fn

TABLE_RULES = 2     # bump when the timing rules change: caches built under older rules are re-timed
SUSPECT = 0.25      # sweeps this far apart, or this far above a wider entry: time it again


# ----------------------------------------------------------------------------- cache
def cache_dir(path=None) -> Path:
    base = Path(path or os.environ.get("DCP_CACHE_DIR") or Path.home() / ".cache" / "dcp")
    return base / "latency"


@functools.lru_cache(maxsize=None)
def device_name(backend: str) -> str:
    if is_cuda(backend):
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_key(backend: str) -> dict:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    if backend in ORT_PROVIDER:
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
    if is_cuda(backend):
        versions["cuda"] = torch.version.cuda or ""
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return {"backend": backend, "device": device_name(backend), "threads": torch.get_num_threads(), **versions}


class TimingCache:
    """``{(w_in, w_out): ms}`` per unit signature, one JSON file each, written atomically."""

    def __init__(self, folder: Path, backend: str):
        self.folder, self.env = folder, environment_key(backend)

    def _path(self, spec: UnitSpec) -> Path:
        key = json.dumps({**self.env, **spec.signature(), "rules": TABLE_RULES}, sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def load(self, spec: UnitSpec) -> dict[tuple[int, int], float]:
        try:
            data = json.loads(self._path(spec).read_text())
            return {tuple(map(int, k.split(","))): float(v) for k, v in data["ms"].items()}
        except (OSError, ValueError, KeyError):
            return {}

    def store(self, spec: UnitSpec, ms: dict[tuple[int, int], float]) -> None:
        from matting.atomic import write_text
        write_text(self._path(spec), json.dumps({"env": self.env, "rules": TABLE_RULES, "unit": spec.signature(),
                                                 "ms": {f"{a},{b}": v for (a, b), v in sorted(ms.items())}}))


def progress(total: int, desc: str):
    """tqdm when installed, else a one-line counter on stderr."""
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, leave=False)
    except ImportError:
        return _Counter(total, desc)


class _Counter:
    def __init__(self, total, desc):
        self.n, self.total, self.desc = 0, total, desc

    def update(self, k=1):
        self.n += k
        if sys.stderr.isatty() or self.n == self.total:
            print(f"\r{self.desc}: {self.n}/{self.total}", end="\n" if self.n == self.total else "",
                  file=sys.stderr, flush=True)

    def refresh(self):
        pass

    def close(self):
        pass


# ----------------------------------------------------------------------------- tables
def grid(lo: float, size: int, points: int, round_to: int) -> list[int]:
    """Up to ``points`` widths from ``lo`` to ``size``, evenly spaced, snapped to ``round_to``."""
    lo = max(1, min(size, int(np.ceil(lo))))
    raw = np.linspace(lo, size, points) if points > 1 else np.array([size])
    snapped = {size, *(min(size, max(lo, int(round(v / round_to)) * round_to)) for v in raw)}
    return sorted(w for w in snapped if w >= 1)


@dataclass
class Table:
    """Measured milliseconds of one unit on an (input width x output width) grid."""
    spec: UnitSpec
    w_in: list[int]
    w_out: list[int]
    ms: np.ndarray            # [len(w_in), len(w_out)]

    def __call__(self, w_in: float | None, w_out: float) -> float:
        """Bilinear interpolation (linear extrapolation is clamped to the grid)."""
        rows = np.array([np.interp(w_out, self.w_out, r) for r in self.ms])
        return float(rows[0] if w_in is None or len(self.w_in) == 1 else np.interp(w_in, self.w_in, rows))


def above_wider(ms: dict[tuple[int, int], float], entry: tuple[int, int], slack: float = SUSPECT) -> bool:
    """Does ``entry`` cost more than ``1 + slack`` times an entry at least as wide on both axes?

    >>> above_wider({(8, 8): 9.0, (8, 16): 2.0, (16, 16): 4.0}, (8, 8))
    True
    >>> above_wider({(8, 8): 2.2, (8, 16): 2.0, (16, 16): 4.0}, (8, 8))
    False
    """
    a, b = entry
    wider = [v for (a2, b2), v in ms.items() if a2 >= a and b2 >= b and (a2, b2) != entry]
    return bool(wider) and ms[entry] > (1 + slack) * min(wider)


def measure_tables(specs: Sequence[UnitSpec], grids: Sequence[tuple[list[int], list[int]]], backend: str,
                   folder=None, repeats: int = 3, timer: Callable | None = None, sweeps: int = 2,
                   retries: int = 2) -> tuple[list[Table], dict]:
    """One table per unit; cached timings are reused, missing ones measured (``timer(module,
    x)`` -> ms, default: the backend's) by the rules in the module docstring. Returns the tables
    and ``{"measured": new entries, "cached", "timings": timer calls, "retimed", "seconds"}``."""
    check_backend(backend)
    cache = TimingCache(cache_dir(folder), backend)
    timer = timer or (lambda module, x: time_fn(runner(module, x, backend), is_cuda(backend), repeats))
    start = time.perf_counter()
    known = [cache.load(s) for s in specs]
    todo = [(i, (a, b)) for i, (g_in, g_out) in enumerate(grids) for a in g_in for b in g_out if (a, b) not in known[i]]
    samples: dict[tuple, list[float]] = {e: [] for e in todo}
    stats = {"measured": len(todo), "cached": sum(len(g_in) * len(g_out) for g_in, g_out in grids) - len(todo),
             "timings": 0, "retimed": 0}
    bar = progress(sweeps * len(todo), f"latency tables ({backend})") if todo else None

    def time_entries(entries):
        for i, ab in entries:
            samples[(i, ab)].append(float(timer(*specs[i].build(*ab))))
            known[i][ab] = min(samples[(i, ab)])
            stats["timings"] += 1
            bar.update()

    for _ in range(max(1, sweeps)):  # whole sweeps: a stall hits different entries in each
        time_entries(todo)
    for _ in range(retries):
        suspects = [e for e in todo if _disturbed(samples[e], known[e[0]], e[1])]
        if not suspects:
            break
        stats["retimed"] += len(suspects)
        bar.total += len(suspects)
        bar.refresh()
        time_entries(suspects)
    for i in sorted({i for i, _ in todo}):
        cache.store(specs[i], known[i])
    if bar is not None:
        bar.close()
    tables = [Table(s, list(g_in), list(g_out), np.array([[ms[(a, b)] for b in g_out] for a in g_in]))
              for s, (g_in, g_out), ms in zip(specs, grids, known)]
    stats["seconds"] = time.perf_counter() - start
    return tables, stats


def _disturbed(samples: list[float], ms: dict, entry: tuple[int, int]) -> bool:
    return (len(samples) > 1 and not confirmed(samples, SUSPECT)) or above_wider(ms, entry)
