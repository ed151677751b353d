"""The demo's report: metrics of teacher and student, and the plots that explain them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import matting
from matting import metrics
from matting.atomic import write_figure
from matting.data import io
from matting.data.folder import folder_names
from matting.infer import predict
from passes.count import count

from .latency_fit import format_latency


def evaluate_models(models: dict, folder: Path) -> dict:
    """Per model: mean SAD/MSE/Grad/Conn over the folder, and the predictions (for the grid)."""
    names = folder_names(folder)
    out = {}
    for label, model in models.items():
        rows, preds = [], {}
        for name in names:
            image = io.read_rgb(folder / "image" / f"{name}.png")
            trimap = io.read_trimap(folder / "trimap" / f"{name}.png")
            gt = io.read_gray(folder / "alpha" / f"{name}.png")
            pred = metrics.to_uint8(predict(model, image, trimap, device="cpu"))
            preds[name] = pred
            rows.append(metrics.all_metrics(pred, gt, trimap))
        out[label] = {"mean": {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, "preds": preds}
    return out


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_widths(teacher, student, path: Path) -> None:
    plt = _plt()
    names = [n for n, m in teacher.named_modules() if isinstance(m, torch.nn.Conv2d)]
    tw = [teacher.get_submodule(n).out_channels for n in names]
    sw = [student.get_submodule(n).out_channels for n in names]
    labels = [n.removesuffix(".cbr_unit.0") for n in names]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, tw, 0.4, label="teacher")
    ax.bar(x + 0.2, sw, 0.4, label="student")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("output channels")
    ax.legend()
    ax.set_title("per-layer widths (tied layers across an unpool keep the same channels)")
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


def plot_gammas(sparse, student, path: Path, ratio: float) -> None:
    """|gamma| of the sparse student's BNs, encoder and decoder pools, kept vs pruned, with each
    pool's threshold (its ``ratio`` quantile). Kept channels below it belong to groups tied
    across an unpool that the other pool wanted, or were added back by rounding."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    kept_names = {n for n, m in student.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for ax, prefix, title in ((axes[0], "down", "encoder"), (axes[1], "up", "decoder")):
        kept_vals, dropped_vals = [], []
        for name, m in sparse.named_modules():
            if not isinstance(m, torch.nn.BatchNorm2d) or not name.startswith(prefix) or name.startswith("up1."):
                continue
            g = m.weight.detach().abs()
            mask = torch.zeros_like(g, dtype=torch.bool)
            if name in kept_names:
                kept = getattr(student, "dcp_plan", {}).get("kept", {}).get(name)
                if kept is not None:
                    mask[torch.tensor(kept)] = True
                else:
                    mask[:] = True
            kept_vals += g[mask].tolist()
            dropped_vals += g[~mask].tolist()
        bins = np.linspace(0, max(kept_vals + dropped_vals + [1e-6]), 40)
        ax.hist([dropped_vals, kept_vals], bins=bins, stacked=True, label=["pruned", "kept"], color=["#d62728", "#2ca02c"])
        values = sorted(kept_vals + dropped_vals)
        if values:
            cut = values[min(len(values) - 1, int(ratio * len(values)))]
            ax.axvline(cut, color="k", ls="--", lw=1, label=f"pool threshold (ratio {ratio:.2f})")
        ax.set_title(f"{title} BN |gamma| after the pruning stage")
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


def plot_latency(rows, path: Path) -> None:
    from . import bench
    bench.plot(rows, path, title="latency, teacher vs student")


def plot_grid(folder: Path, scores: dict, path: Path, n: int = 3) -> None:
    plt = _plt()
    names = sorted(next(iter(scores.values()))["preds"])[:n]
    cols = ["image", "trimap", "teacher", "student", "ground truth"]
    fig, axes = plt.subplots(len(names), len(cols), figsize=(2.2 * len(cols), 2.2 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        panels = [io.read_rgb(folder / "image" / f"{name}.png"), io.read_trimap(folder / "trimap" / f"{name}.png"),
                  scores["teacher"]["preds"][name], scores["student"]["preds"][name],
                  io.read_gray(folder / "alpha" / f"{name}.png")]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
    fig.tight_layout()
    write_figure(path, fig, dpi=100)


def _latency(rows, model: str, backend: str) -> str:
    for r in rows:
        if r.model == model and r.backend == backend and r.median_ms is not None and r.size == max(x.size for x in rows):
            return f"{r.median_ms:.1f}"
    return "n/a"


def write_report(out: Path, s, *, teacher, sparse, student, compiled, scores, bench_rows, onnx, timings,
                 mac_student=None, mac_compiled=None, latency_miss: str | None = None) -> Path:
    from . import bench
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_widths(teacher, student, plots / "widths.png")
    plot_gammas(sparse, student, plots / "gammas.png", compiled.report["ratio"])  # fraction of channels removed
    plot_latency(bench_rows, plots / "latency.png")
    plot_grid(out / "data" / "test", scores, plots / "grid.png")
    x = torch.zeros(1, 4, 320, 320)
    big = max(s.bench_sizes)
    lat = compiled.report.get("latency")
    if lat is not None:
        how = (f"compiled from the sparse student to {lat['target']:.0%} of its MEASURED latency on {s.backend} "
               f"at {s.compile_size}x{s.compile_size} (round_to {s.round_to})")
    else:  # the latency budget could not be met: the student is the MAC-driven one
        how = (f"compiled from the sparse student to {s.target_macs or s.ratio} of the MACs at "
               f"{s.compile_size}x{s.compile_size} (round_to {s.round_to}); no latency-driven student: {latency_miss}")
    lines = ["# DCP demo report", "",
             f"Teacher: DIM at width {s.width}. Student: {how}, then "
             f"distilled" + (f"; MAC student: the same at {s.target_macs or s.ratio} of the MACs, for comparison"
                             + (" (the latency target is its measured latency: equal latency)"
                                if s.target_latency is None else "") if mac_student is not None else "") + ". "
             f"Synthetic data: {s.n_train} training, {s.n_test} test images of {s.size}px. MACs at 320x320; "
             f"latency at {big}x{big}, CPU, batch 1.", "",
             "| model | SAD | MSE (x1e-3) | Grad | Conn | params | GMACs | torch ms | ORT ms |", "|---|---|---|---|---|---|---|---|---|"]
    models = {"teacher": teacher, "student": student, **({"MAC student": mac_student} if mac_student is not None else {})}
    for label, model in models.items():
        m = scores[label]["mean"]
        params, macs = count(model, x)
        lines.append(f"| {label} | {m['sad']:.3f} | {m['mse'] * 1e3:.2f} | {m['grad']:.3f} | {m['conn']:.3f} | "
                     f"{params:,} | {macs / 1e9:.2f} | {_latency(bench_rows, label, 'eager-fp32')} | "
                     f"{_latency(bench_rows, label, 'ort-cpu')} |")
    if lat is not None:
        lines += ["", "## Latency budget", "",
                  f"Target {lat['target']:.0%} of the sparse model's latency on {lat['backend']}: measured "
                  f"{lat['measured_ratio']:.1%} after {len(lat['rounds'])} round(s) (predicted {lat['predicted_ratio']:.1%})."
                  + (f" The MAC student ({mac_compiled.report['macs_after'] / mac_compiled.report['macs_before']:.0%} of the "
                     f"MACs) vs the latency student ({compiled.report['macs_after'] / compiled.report['macs_before']:.0%} "
                     f"of the MACs): see the table above for their measured latency and SAD." if mac_compiled else ""),
                  "", "```", format_latency(lat), "```"]
    else:
        lines += ["", "## Latency budget", "", f"Not met on this machine: {latency_miss}"]
    v = compiled.report.get("verify", {})
    lines += ["", f"Compile: {compiled.report['macs_before'] / 1e9:.2f} -> {compiled.report['macs_after'] / 1e9:.2f} GMACs, "
              f"verify vs masked original {v.get('masked_rel', float('nan')):.1e} (relative).", "",
              "## Widths", "![widths](plots/widths.png)", "",
              "## BN gammas after the pruning stage", "![gammas](plots/gammas.png)", "",
              "## Latency", "![latency](plots/latency.png)", "", bench.markdown(bench_rows), "",
              "## Teacher vs student on test images", "![grid](plots/grid.png)", "",
              "## ONNX export", "```", onnx, "```", "",
              "## Loss curves", "![teacher](teacher/loss.png) ![prune](prune/loss.png) ![finetune](finetune/loss.png)", "",
              "## Time per step (s)", "", "| " + " | ".join(timings) + " |", "|" + "---|" * len(timings),
              "| " + " | ".join(str(t) for t in timings.values()) + " |", ""]
    path = out / "report.md"
    io.write_text(path, "\n".join(lines))
    io.write_text(out / "metrics.json", json.dumps({k: v["mean"] for k, v in scores.items()}, indent=1))
    return path
