"""Why scores are normalised per group: kept widths of an untrained full-width DIM at ratio 0.5
(paper encoder/decoder pools, round_to 8), weight-L1 importance, per normalisation and cap.

Raw L1 grows with a layer's fan-in, so one ranking strips the early, narrow layers (down1,
down2) to the minimum; per-group normalisation keeps every layer near the ratio.

    python benchmarks/normalize_scores.py    # seconds; writes benchmarks/results/normalize_scores.md
"""
from __future__ import annotations

from pathlib import Path

import torch

import matting
from matting.data.io import write_text
from passes import analyse, build_groups, trace
from passes.importance import channel_scores
from passes.select import scope_pools, select

SETTINGS = {"raw": dict(normalize="none", max_ratio=1.0), "raw, max_ratio 0.9": dict(normalize="none", max_ratio=0.9),
            "mean": dict(normalize="mean", max_ratio=1.0), "max": dict(normalize="max", max_ratio=1.0),
            "std": dict(normalize="std", max_ratio=1.0)}


def main() -> None:
    torch.manual_seed(0)
    model = matting.dim().eval()
    gm = trace(model, torch.zeros(1, 4, 64, 64))
    ctx = analyse(gm)
    groups = build_groups(ctx)
    pools = scope_pools(gm, groups, matting.PAPER_SCOPES, "l1")
    scores = channel_scores(gm, groups, "l1")
    kept = {label: select(groups, scores, ratio=0.5, pools=pools, round_to=8, **kw) for label, kw in SETTINGS.items()}
    lines = ["# Kept widths: untrained DIM, weight L1, ratio 0.5, paper pools, round_to 8", "",
             "Command: `python benchmarks/normalize_scores.py`", "",
             "| layer | size | " + " | ".join(SETTINGS) + " |", "|---|---|" + "---|" * len(SETTINGS)]
    for g in groups:
        if g.prunable:
            name = g.names("producer")[0].removesuffix(".cbr_unit.0")
            lines.append(f"| {name} | {g.size} | " + " | ".join(str(len(kept[k][g.id])) for k in SETTINGS) + " |")
    md = "\n".join(lines) + "\n"
    write_text(Path("benchmarks/results/normalize_scores.md"), md)
    print(md)


if __name__ == "__main__":
    main()
