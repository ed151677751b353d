"""Which of the "reach" patterns compile exactly and how far they prune (issue 12, item 1).

For each pattern: compile at ratio 0.5 (the compile's own float64 check runs), print the
kept widths in ``res.kept`` (module or parameter: kept output channels), the float64 error against the masked original and
the prunable/total group count; frozen groups with members are listed with their reason.

    PYTHONPATH=. python benchmarks/reach_patterns.py
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import compiler  # noqa: E402
from test_functional_members import (ChannelPad, Conv2dSame, FunctionalNet, FunctionalUnpool,  # noqa: E402
                                     LayerScaleBlock, StdConv2d, StdConvBN, Affine, _bn, _std_net)


def patterns():
    yield "F.conv2d/F.batch_norm/F.conv_transpose2d/F.linear on parameters", FunctionalNet(), (1, 3, 16, 16)
    yield "weight-standardised conv (traced through)", _std_net(StdConv2d), (1, 3, 16, 16)
    yield "timm StdConv2d (F.batch_norm on the weight)", nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), StdConvBN(8, 6), nn.ReLU(), nn.Conv2d(6, 2, 1)), (1, 3, 16, 16)
    yield "Conv2dSame (F.pad then F.conv2d on self.weight)", _std_net(Conv2dSame), (1, 3, 17, 17)
    yield "per-channel affine x*scale+shift, layer scale gamma.view(1,-1,1,1)", nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), Affine(8), nn.ReLU(), nn.Conv2d(8, 6, 1), LayerScaleBlock(6), nn.ReLU(),
        nn.Conv2d(6, 2, 1)), (1, 3, 16, 16)
    yield "F.max_pool2d(return_indices) / F.max_unpool2d", FunctionalUnpool(True), (1, 3, 16, 16)
    yield "F.pad over channels (2 before, 1 after)", ChannelPad((1, 1, 0, 0, 2, 1)), (1, 3, 16, 16)
    yield "F.pad with a negative channel pad", ChannelPad((0, 0, 0, 0, 0, 0)), (1, 3, 16, 16)


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    for name, model, shape in patterns():
        if name.startswith("F.pad with a negative"):
            model.pad = (0, 0, 0, 0, -2, 1)
            model.b = nn.Conv2d(7, 4, 1)
        model = model.eval()
        res = compiler.compile(model, torch.zeros(shape), ratio=0.5, importance="l1")
        kept = ", ".join(f"{k}: {len(v)}" for k, v in res.kept.items())
        groups = res.report["groups"]
        prunable = sum(g["frozen"] is None for g in groups)
        print(f"{name}\n  kept: {kept or '(nothing pruned)'}\n  groups prunable {prunable}/{len(groups)}; "
              f"float64 masked rel err {res.report['verify']['masked_rel']:.1e}")
        for g in groups:
            if g["frozen"] and g["producers"] and "graph input" not in g["frozen"] and "graph output" not in g["frozen"]:
                print(f"  frozen {g['producers']}: {g['frozen']}")


if __name__ == "__main__":
    main()
