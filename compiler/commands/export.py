"""``dcp export MODEL -o model.onnx``: ONNX via the dynamo exporter, checked in ONNX Runtime.

    dcp export out/compact -o compact.onnx                  # dynamic batch/H/W
    dcp export dim --static 512 512 --lower-unpool --fold-bn -o dim_trt.onnx
"""
from __future__ import annotations

import argparse
import sys

from ..models import load_model
from ._common import add_trust_pickle_arg, example_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX and check it against torch in ONNX Runtime")
    p.add_argument("model", help="dim, dim:WIDTH, a checkpoint file, or a compiled artifact folder")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (weights may go to FILE.data)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static", nargs=2, type=int, metavar=("H", "W"),
                   help="fixed input size instead of dynamic batch/H/W")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=[320, 320],
                   help="example input size traced for a dynamic export (default 320 320)")
    p.add_argument("--lower-unpool", action="store_true",
                   help="replace MaxUnpool/pool indices by dense ops (TensorRT has no MaxUnpool/ScatterND)")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the preceding convs")
    p.add_argument("--fp16", action="store_true", help="half-precision weights and I/O (checked to 2e-2)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    add_trust_pickle_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matting.metrics import ALPHA_HALF_LEVEL
    from ..onnx_export import export_onnx
    if not str(args.output).endswith(".onnx"):
        raise ValueError(f"output must be a .onnx file, got {args.output}")
    model = load_model(args.model, trust_pickle=args.trust_pickle).eval()
    size = args.static or args.size
    x = example_input(model, size)
    print(f"exporting {args.model} at {size[0]}x{size[1]} ({'static' if args.static else 'dynamic batch/H/W'})...",
          file=sys.stderr, flush=True)
    report = export_onnx(model, args.output, x, dynamic=args.static is None, opset=args.opset,
                         lower_unpool=args.lower_unpool, fold_bn=args.fold_bn, fp16=args.fp16,
                         check=not args.no_check, accept_max_error=ALPHA_HALF_LEVEL)
    print(report.summary())
    return 0
