"""``dcp demo``: run the whole method on the built-in synthetic data and write a report."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole method on synthetic data: train, prune, compile, distil, export, bench, report")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--fast", action="store_true", help="toy scale, a few minutes (what the tests run)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a demo setting, e.g. width=0.5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import FAST, DemoSettings, run_demo
    settings = FAST if args.fast else DemoSettings()
    fields = {f.name: f for f in dataclasses.fields(DemoSettings)}
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise ValueError(f"bad --set {item!r}: known settings are {', '.join(fields)}")
        current = getattr(settings, key)
        changes[key] = tuple(int(v) for v in value.split(",")) if isinstance(current, tuple) else type(current)(value)
    run_demo(Path(args.out), dataclasses.replace(settings, **changes))
    return 0
