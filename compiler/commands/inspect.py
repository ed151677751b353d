"""``dcp inspect``: per-layer table of a model (shape, params, MACs), its FX graph, its channel groups."""
from __future__ import annotations

import argparse

import passes

from ..models import load_model
from ._common import add_model_arg, add_size_arg, example_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per-layer table (shape, params, MACs) and totals of a model")
    add_model_arg(p, default="dim")
    add_size_arg(p)
    p.add_argument("--graph", action="store_true", help="print the FX graph")
    p.add_argument("--groups", action="store_true", help="print the channel groups (coupled channel spaces)")
    p.add_argument("--all", action="store_true", help="list every node, not only those with params or MACs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, trust_pickle=args.trust_pickle).eval()
    x = example_input(model, args.size)
    gm = passes.trace(model, x)
    rows = passes.layer_costs(gm)
    print(f"{'node':<34} {'op':<16} {'output shape':<22} {'params':>11} {'MACs':>15}")
    for r in rows:
        if args.all or r.params or r.macs:
            print(f"{r.name:<34} {r.op:<16} {str(tuple(r.shape)):<22} {r.params:>11,} {r.macs:>15,}")
    params = sum(p.numel() for p in model.parameters())
    macs = sum(r.macs for r in rows)
    print(f"total: {params:,} parameters, {macs / 1e9:.2f} GMACs at {args.size[0]}x{args.size[1]}")
    if args.graph:
        print(gm.graph)
    if args.groups:
        from passes.report import format_groups
        print(format_groups(passes.channel_groups(gm)))
    return 0
