"""Latency of the DIM teacher against compact students (round_to 1 and 8), across backends.

    .venv/bin/python benchmarks/latency.py --quick                 # CPU smoke run, ~1-2 min
    .venv/bin/python benchmarks/latency.py                         # CPU: 320 640 1024, torch + ORT
    .venv/bin/python benchmarks/latency.py --ratio 0.3 --sizes 1024  # GPU: students at ~half the MACs

Students come from ``compiler.compile(teacher, x, ratio, round_to)`` (random BN scores); if the
compiler fails, the benchmark fails. ``--uniform`` adds width-scaled DIMs (width 1 - ratio,
widths rounded to multiples of round_to), the uniform-pruning baseline, as extra rows.
Writes benchmarks/results/latency_<device>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import compiler  # noqa: E402
import matting  # noqa: E402
from compiler import bench  # noqa: E402


def width_scaled(ratio: float, round_to: int) -> torch.nn.Module:
    """DIM with every internal width times (1 - ratio), rounded to a multiple of ``round_to``."""
    keep = 1.0 - ratio
    widths = {k: max(round_to, round(v * keep / round_to) * round_to) for k, v in matting.default_widths().items()}
    return matting.dim(widths=widths)


def random_scores(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random BN scores: a random-init teacher has all gammas equal, and a plan decided
    by ties is degenerate; these stand in for a trained sparse student's |gamma|."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.num_features, generator=gen) for name, m in model.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d)}


def students(teacher: torch.nn.Module, ratio: float, size: int, round_tos=(1, 8)) -> tuple[dict, str]:
    """``({name: compiled student}, how they were made)``; a compiler error propagates."""
    x = torch.zeros(1, 4, size, size)
    scores = random_scores(teacher)
    out = {f"compiled r={ratio} round_to={r}":
           compiler.compile(teacher, x, ratio=ratio, round_to=r, importance=scores).module.eval()
           for r in round_tos}
    return out, f"compiler.compile(ratio={ratio}, round_to={'|'.join(map(str, round_tos))}, importance=random BN scores)"


def main(argv=None) -> int:
    gpu = bench.gpu_present()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels pruned (default 0.5)")
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="default 320 640 1024 (+2048 on GPU)")
    p.add_argument("--backends", nargs="+", choices=bench.BACKENDS, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--compile-sizes", nargs="+", type=int, default=None, help="torch.compile only at these sizes")
    p.add_argument("--round-to", nargs="+", type=int, default=[1, 8], help="student channel rounding (default 1 8)")
    p.add_argument("--uniform", action="store_true", help="also time width-scaled DIMs (uniform pruning)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--quick", action="store_true", help="320 only, few runs (ORT included unless --no-onnx)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--stem", default=None, help="result file names (default latency_cpu / latency_gpu)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, backends, repeats, warmup = bench.run_settings(gpu, args.quick, args.sizes, args.backends, args.repeats,
                                                          args.warmup, onnx=not args.no_onnx)

    torch.manual_seed(0)
    teacher = matting.dim().eval()
    studs, how = students(teacher, args.ratio, min(sizes), tuple(args.round_to))
    print(f"students: {how}", flush=True)
    models = {"teacher": teacher, **studs}
    if args.uniform:
        models.update({f"width {1 - args.ratio:.2f} round_to={r}": width_scaled(args.ratio, r).eval()
                       for r in args.round_to})
    rows = bench.run(models, sizes, backends, repeats=repeats, warmup=warmup, compile_sizes=args.compile_sizes)
    print(bench.markdown(rows))
    device = "gpu" if gpu else "cpu"
    meta = {"title": f"DIM teacher vs students ({device})", "students": how, "ratio": args.ratio,
            "repeats": repeats, "warmup": warmup, "env": bench.environment()}
    for path in bench.write(rows, args.out, args.stem or f"latency_{device}", meta):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
