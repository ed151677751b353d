"""Per-epoch training log: ``log.csv``, ``log.json`` and ``loss.png``, rewritten atomically."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_bytes, write_figure


class EpochLog:
    """Rows of ``{"epoch": ..., "train_loss": ..., ...}``; reloads what a resumed run had."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.rows: list[dict[str, Any]] = []

    def load(self, upto_epoch: int) -> None:
        """Keep the rows of epochs < ``upto_epoch`` from an earlier run (the resume point)."""
        p = self.folder / "log.json"
        if p.is_file():
            self.rows = [r for r in json.loads(p.read_text()) if r.get("epoch", 0) < upto_epoch]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes(self.folder / "log.json", json.dumps(self.rows, indent=1).encode())
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        write_bytes(self.folder / "log.csv", buf.getvalue().encode())
        self.plot()

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = [r["epoch"] for r in self.rows]
        for key in ("train_loss", "val_loss"):
            ys = [r.get(key) for r in self.rows]
            if any(y is not None for y in ys):
                ax.plot(epochs, ys, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        write_figure(self.folder / "loss.png", fig, dpi=100, bbox_inches="tight")
