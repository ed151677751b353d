"""Does every compile of DIM with random (trained-looking) BN statistics pass verification, and
how far is the compact model from the masked original in float64?

For each seed: DIM with BN weight ~ U(0.01, 1.01), bias ~ N(0, 0.1), running_mean ~ N(0, 0.1),
running_var ~ U(0.5, 2); ``compiler.compile(m, x, ratio, importance="bn", round_to)``; then an
independent float64 comparison of the compact model against the original with the dropped
channels zeroed at every node (``passes.verify.MaskedGraph``), at the full input size.

    PYTHONPATH=$PWD python benchmarks/verify_random_bn.py --seeds 30 --width 0.25 --full-size-check
    PYTHONPATH=$PWD python benchmarks/verify_random_bn.py --seeds 3 --width 1.0 --sizes 96x128 64x64
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import compiler
import matting
import passes
from passes import DCPError
from passes.importance import channel_scores
from passes.rewrite import KeepMap, rewrite
from passes.select import select
from passes.verify import MaskedGraph, float64_copy, max_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from random_nets import trained_looking_bn as random_bn  # noqa: E402  (the BN statistics the tests use)




def float64_error(model: nn.Module, res, x: torch.Tensor, ratio: float, round_to: int) -> float:
    """max |compact - masked original| / max |masked original|, both in float64, at x's full
    size (compile checks at 32 px): the plan is rebuilt with the passes and must match."""
    gm = passes.trace(model, x)
    ctx = passes.analyse(gm)
    groups = passes.build_groups(ctx)
    keep = select(groups, channel_scores(gm, groups, "bn", "mean"), ratio=ratio, round_to=round_to)
    keep_map = KeepMap(ctx, groups, keep)
    _, rewritten = rewrite(ctx, groups, keep)
    assert {k: v.tolist() for k, v in rewritten.items()} == {k: v.tolist() for k, v in res.kept.items()}
    with torch.no_grad():
        reference = MaskedGraph(float64_copy(gm), keep_map).run(x.double())
        out = float64_copy(res.module)(x.double())
    return max_error(out, reference)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--round-to", type=int, nargs="+", default=[1, 8])
    p.add_argument("--sizes", nargs="+", default=["96x128"])
    p.add_argument("--full-size-check", action="store_true",
                   help="also compare in float64 at the full input size, outside the compiler")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for size, ratio, round_to in itertools.product(args.sizes, args.ratios, args.round_to):
        h, w = map(int, size.split("x"))
        failed, errors, times, checked_rel = [], [], [], []
        for seed in range(args.seeds):
            model = random_bn(matting.dim(width=args.width), seed)
            x = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))
            start = time.perf_counter()
            try:
                res = compiler.compile(model, x, ratio=ratio, importance="bn", round_to=round_to)
            except DCPError as e:
                failed.append((seed, str(e)[:160]))
                continue
            times.append(time.perf_counter() - start)
            checked_rel.append(res.report["verify"]["masked_rel"])
            if args.full_size_check:
                errors.append(float64_error(model, res, x, ratio, round_to))
        row = {"width": args.width, "size": size, "ratio": ratio, "round_to": round_to, "seeds": args.seeds,
               "passed": args.seeds - len(failed), "failed": failed,
               "max_rel_in_compile_check": max(checked_rel, default=None),
               "max_float64_rel_full_size": max(errors, default=None), "median_compile_s": sorted(times)[len(times) // 2] if times else None}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "failed"}), *(f"  seed {s}: {m}" for s, m in failed[:3]),
              sep="\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
