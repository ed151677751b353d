"""Speed of the four Composition-1k metrics on one large image (goal: all four < 1 s at 2000x2000).

    .venv/bin/python benchmarks/metrics_speed.py [--size 2000] [--repeat 5] [--json out.json]

Inputs: a synthetic matte (matting.data.synth) as ground truth and a blurred, noisy copy as the
prediction (a realistic case), plus uniform noise (the worst case for Conn: ~10^5 components
per threshold). Prints a markdown table (best of --repeat, seconds) and the same as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from matting import metrics  # noqa: E402
from matting.atomic import write_text  # noqa: E402
from matting.data.synth import make_sample  # noqa: E402


def cases(size: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    s = make_sample(size, seed=0, index=0)
    gt, trimap = s["alpha"], s["trimap"]
    rng = np.random.default_rng(0)
    pred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 2.0) + rng.normal(0, 8, gt.shape)
    noise_gt = rng.integers(0, 256, (size, size), dtype=np.uint8)
    noise_pred = cv2.GaussianBlur(noise_gt, (0, 0), 3)
    return {"synthetic matte": (np.clip(np.rint(pred), 0, 255).astype(np.uint8), gt, trimap),
            "uniform noise (worst case)": (noise_pred, noise_gt, np.full((size, size), 128, np.uint8))}


def bench(pred, gt, trimap, repeat: int, clock=time.perf_counter) -> dict[str, float]:
    """Best of ``repeat`` per metric, and their sum, in seconds of ``clock``."""
    times = {}
    for name in metrics.METRICS:
        f = getattr(metrics, name)
        best = float("inf")
        for _ in range(repeat):
            start = clock()
            f(pred, gt, trimap)
            best = min(best, clock() - start)
        times[name] = best
    times["total"] = sum(times.values())
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    # Wall time is what users see; CPU time (all threads) bounds it on an idle machine and is
    # steadier when the machine is shared (the load average is printed for that reason).
    results = {}
    for label, arrays in cases(args.size).items():
        results[f"{label}, wall"] = bench(*arrays, args.repeat)
        results[f"{label}, cpu"] = bench(*arrays, args.repeat, clock=time.process_time)
    cols = (*metrics.METRICS, "total")
    print(f"Metrics speed at {args.size}x{args.size}, best of {args.repeat} (s), {platform.processor() or platform.machine()}, "
          f"OpenCV threads {cv2.getNumThreads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| input | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, t in results.items():
        print(f"| {label} | " + " | ".join(f"{t[c]:.3f}" for c in cols) + " |")
    out = {"size": args.size, "repeat": args.repeat, "goal_total_s": 1.0, "load_average": os.getloadavg()[0],
           "cpus": os.cpu_count(), "results": results}
    print("\n" + json.dumps(out, indent=1))
    if args.json:
        write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
