"""``dcp eval``: score a model on a test set with the official Composition-1k metrics."""
from __future__ import annotations

import argparse
import csv
import io as _io
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from matting import metrics
from matting.data import io, test_set_items
from matting.device import pick_device
from matting.infer import predict

from ..models import load_model
from ._common import add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model on a test set (SAD, MSE, Grad, Conn): per-image CSV + summary")
    add_model_arg(p)
    p.add_argument("--data", required=True, help="a dcp data folder (synth/composite) or a Composition-1k test "
                                                 "folder (merged/, alpha/, trimaps/)")
    p.add_argument("--csv", default="eval.csv", help="per-image CSV to write (default eval.csv)")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.add_argument("--save-alpha", help="folder to save the predicted alphas in")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda ...")
    p.add_argument("--tile", type=int, help="tile size for large images (default: automatic; 0 = never)")
    p.set_defaults(func=run)


def evaluate(model, items, device, tile=None, save_alpha: Path | None = None) -> list[dict]:
    """Per-image rows: name, the four metrics (paper units) and the inference seconds."""
    rows = []
    for name, img_path, tri_path, alpha_path in tqdm(items, desc="eval", unit="img"):
        image, trimap, gt = io.read_rgb(img_path), io.read_trimap(tri_path), io.read_gray(alpha_path)
        io.check_same_size(image, trimap, img_path, tri_path)
        io.check_same_size(image, gt, img_path, alpha_path)
        start = time.perf_counter()
        pred = metrics.to_uint8(predict(model, image, trimap, device=device, tile=tile))
        seconds = time.perf_counter() - start
        if save_alpha:
            io.write_image(save_alpha / f"{name}.png", pred)
        rows.append({"name": name, **metrics.all_metrics(pred, gt, trimap), "seconds": seconds})
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in (*metrics.METRICS, "seconds")}


def summary_table(summary: dict[str, float], n: int, title: str) -> str:
    """Markdown table in the units papers print (MSE x 1e3)."""
    return "\n".join([f"{title}: {n} images",
                      "| SAD | MSE (x1e-3) | Grad | Conn | s/image |", "|---|---|---|---|---|",
                      f"| {summary['sad']:.3f} | {summary['mse'] * 1e3:.3f} | {summary['grad']:.3f} | "
                      f"{summary['conn']:.3f} | {summary['seconds']:.3f} |"])


def run(args: argparse.Namespace) -> int:
    items = test_set_items(args.data)[: args.limit]
    device = pick_device(args.device)
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    rows = evaluate(model, items, device, args.tile, Path(args.save_alpha) if args.save_alpha else None)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["name", *metrics.METRICS, "seconds"])
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(args.csv, buf.getvalue())
    summary = summarise(rows)
    print(summary_table(summary, len(rows), f"{args.model} on {args.data} ({device.type})"))
    print(f"per-image results: {args.csv}")
    if args.json:
        io.write_text(args.json, json.dumps({"model": args.model, "data": str(args.data), "n": len(rows),
                                             "device": device.type, **summary}, indent=1))
    return 0
