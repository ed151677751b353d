"""``dcp bench``: latency of a model (and models to compare) across backends and sizes.

    dcp bench --model dim --compare out/compact --sizes 320 640 --out results/
    dcp bench --model dim --compare dim:0.5 --quick          # CPU smoke run

The first model is the baseline: each row shows its speedup next to its MAC ratio.
"""
from __future__ import annotations

import argparse
import sys

from ..models import load_model
from ._common import add_trust_pickle_arg


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import BACKENDS
    p = sub.add_parser("bench", help="latency of models across backends (torch, ONNX Runtime) and sizes")
    p.add_argument("--model", default="dim", help="baseline: dim, dim:WIDTH, a checkpoint, or an artifact folder")
    p.add_argument("--compare", nargs="*", default=[], metavar="MODEL", help="models to compare with the baseline")
    p.add_argument("--sizes", nargs="+", type=int, default=None,
                   help="square input sizes (default 320 640 1024, plus 2048 on GPU)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                   help="default: eager-fp32 ort-cpu on CPU, all on GPU")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5, quick 2; GPU 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2, quick 1; GPU 5)")
    p.add_argument("--compile-sizes", nargs="+", type=int, default=None,
                   help="run torch.compile only at these sizes (it recompiles per size)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime backends")
    p.add_argument("--no-lower-unpool", action="store_true", help="ONNX with ScatterND instead of dense unpool")
    p.add_argument("--quick", action="store_true", help="smallest size, eager fp32 only, few runs")
    p.add_argument("--out", default=None, help="folder for bench.json, bench.md and bench.png")
    add_trust_pickle_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench
    sizes, backends, repeats, warmup = bench.run_settings(
        bench.gpu_present(), args.quick, args.sizes, args.backends, args.repeats, args.warmup,
        onnx=not args.no_onnx, quick_backends=["eager-fp32"])
    models = {}
    for spec in [args.model, *args.compare]:
        if spec in models:
            raise ValueError(f"model '{spec}' given twice")
        models[spec] = load_model(spec, trust_pickle=args.trust_pickle).eval()
    rows = bench.run(models, sizes, backends, repeats=repeats, warmup=warmup, compile_sizes=args.compile_sizes,
                     lower_unpool=not args.no_lower_unpool)
    print(bench.markdown(rows))
    if args.out:
        meta = {"title": f"dcp bench: {', '.join(models)}", "baseline": args.model, "repeats": repeats,
                "warmup": warmup, "env": bench.environment()}
        for path in bench.write(rows, args.out, "bench", meta):
            print(f"wrote {path}", file=sys.stderr)
    return 0
