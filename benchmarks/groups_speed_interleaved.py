"""Grouping speed, ours vs torch-pruning, interleaved so both see the same machine load.

    .venv/bin/python benchmarks/groups_speed_interleaved.py [--models mobilenet_v3_small,...]
        [--repeats 9] [--threads 1] [--clock cpu]

Per repeat: ``passes.trace`` + ``passes.channel_groups`` once, then torch-pruning's
``build_dependency`` + ``get_all_groups`` once (the two analyses of
groups_vs_torch_pruning.py); prints the medians as a markdown table. On a shared machine,
``--threads 1 --clock cpu`` compares the work each does: torch-pruning's real forward with
several threads spins on a loaded machine and its wall time explodes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.groups_vs_torch_pruning import ours, theirs, zoo  # noqa: E402

MOBILE = "mobilenet_v3_small,efficientnet_b0,lraspp_mobilenet_v3_large,mobilenet_v2,regnet_x_400mf," \
         "deeplabv3_mobilenet_v3_large"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MOBILE)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    models = zoo()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in models]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(models)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.simplefilter("ignore")
    print(f"load average {os.getloadavg()[0]:.1f} at start, torch threads {torch.get_num_threads()}, "
          f"median {args.clock} ms of {args.repeats} interleaved runs after a warm-up\n")
    print("| model | ours ms | torch-pruning ms | torch-pruning / ours |\n|---|---|---|---|")
    for name in names:
        make, channels, side = models[name]
        torch.manual_seed(0)
        model = make().eval()
        x = torch.randn(1, channels, side or args.size, side or args.size)
        runs = {"ours": ours, "tp": theirs}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():
            fn(model, x)
        for _ in range(args.repeats):
            for key, fn in runs.items():
                start = clock()
                fn(model, x)
                times[key].append((clock() - start) * 1e3)
        a, b = statistics.median(times["ours"]), statistics.median(times["tp"])
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
