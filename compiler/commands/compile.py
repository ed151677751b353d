"""``dcp compile``: prune a model to a compact graph, verify it, write the artifact folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from matting.data.io import write_text
from matting.sparsity import importance_from_checkpoint
from passes import DCPError

from ..models import load_model
from ._common import add_model_arg, add_size_arg, example_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="prune channels and emit a verified compact model (artifact folder)")
    add_model_arg(p)
    add_size_arg(p)
    p.add_argument("--importance", default="bn",
                   help="bn, l1, l2, or a sparse-student checkpoint whose BN gammas score the channels")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of prunable channels removed (default 0.5)")
    p.add_argument("--target-macs", type=float, default=None,
                   help="keep at most this fraction of the MACs (searches the ratio; overrides --ratio)")
    p.add_argument("--target-latency", type=float, default=None,
                   help="the compact model's MEASURED latency on --backend as a fraction of the original's "
                        "(e.g. 0.5; overrides --ratio)")
    p.add_argument("--backend", default="torch-cpu",
                   help="where latency is measured: torch-cpu, ort-cpu; with a GPU cuda-fp16, cuda-bf16, ort-cuda, trt")
    p.add_argument("--latency-cache", default=None,
                   help="folder of cached layer timings (default $DCP_CACHE_DIR or ~/.cache/dcp)")
    p.add_argument("--normalize", default="auto", choices=("auto", "none", "mean", "max", "std"),
                   help="per-group score normalisation (auto: mean for l1/l2, none for BN gammas)")
    p.add_argument("--max-ratio", type=float, default=0.9,
                   help="never remove more than this fraction of any group (default 0.9)")
    p.add_argument("--scopes", default=None,
                   help="'paper' (separate encoder/decoder thresholds) or NAME=PATTERN[,PATTERN]:RATIO;... ")
    p.add_argument("--round-to", type=int, default=1, help="round kept widths up to a multiple (8 for tensor cores)")
    p.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a group")
    p.add_argument("--widths", default=None, help="explicit widths as JSON {producer module: n}")
    p.add_argument("--aggregate", default="mean", choices=("mean", "sum", "max"),
                   help="how a group's members' scores combine")
    p.add_argument("-o", "--out", required=True, help="output artifact folder")
    p.set_defaults(func=run)


def parse_scopes(text: str | None):
    """``paper`` (DIM's encoder/decoder pools) or ``enc=down*:0.5;dec=up*,head*:0.3``."""
    if text is None:
        return None
    if text == "paper":
        from matting.scopes import PAPER_SCOPES
        return PAPER_SCOPES
    scopes = []
    for part in filter(None, text.split(";")):
        try:
            name, rest = part.split("=", 1)
            patterns, ratio = rest.rsplit(":", 1)
            scopes.append((name, tuple(patterns.split(",")), float(ratio)))
        except ValueError:
            raise DCPError(f"bad --scopes entry '{part}': expected NAME=PATTERN[,PATTERN]:RATIO") from None
    return scopes


def importance_arg(spec: str, trust_pickle: bool):
    """bn/l1/l2, or the |gamma| of a pruning-stage checkpoint's penalised BNs."""
    if spec in ("bn", "l1", "l2"):
        return spec
    if not Path(spec).exists():
        raise DCPError(f"--importance must be bn, l1, l2 or a checkpoint file; no such file: {spec}")
    return importance_from_checkpoint(spec, trust_pickle=trust_pickle)


def run(args: argparse.Namespace) -> int:
    import compiler
    if not 0 <= args.ratio < 1:
        raise DCPError(f"--ratio must be in [0, 1), got {args.ratio}")
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    importance = importance_arg(args.importance, args.trust_pickle)
    widths = json.loads(args.widths) if args.widths else None
    res = compiler.compile(model, example_input(model, args.size), ratio=args.ratio, importance=importance,
                           round_to=args.round_to, scopes=parse_scopes(args.scopes),
                           min_channels=args.min_channels, widths=widths, aggregate=args.aggregate,
                           target_macs=args.target_macs, target_latency=args.target_latency, backend=args.backend,
                           normalize=args.normalize, max_ratio=args.max_ratio,
                           latency_options={"cache": args.latency_cache})
    print(res.summary())
    out = compiler.save(res, args.out)
    report = (f"# dcp compile report\n\nmodel `{args.model}`, importance `{args.importance}`, ratio {args.ratio}, "
              f"scopes `{args.scopes}`, round_to {args.round_to}\n\n```\n{res.summary()}\n```\n")
    write_text(out / "report.md", report)
    print(f"wrote {out}/ (graph.json, weights.pt, plan.json, report.md)")
    return 0
