"""The paper's comparison on the synthetic benchmark, at equal MACs (about half the teacher's),
and at equal MEASURED latency.

Rows: the teacher; uniform width pruning trained without KD; network slimming (sparsity
without KD, compiled, finetuned without KD); DCP (SPKD pruning stage + compile + SPKD
training stage) with inherited weights; DCP from scratch (as the paper); DCP compiled to a
LATENCY budget equal to the MAC-driven DCP student's measured latency (torch-cpu, 320x320),
inherited weights. Every student's latency is measured (torch eager, CPU, 320x320, interleaved
with the teacher). Students are trained with two seeds on one shared teacher; the table shows
mean and spread.

    python benchmarks/accuracy.py [--quick] [--seeds 7 8] [--out benchmarks/results]

Writes ``accuracy.json`` and ``accuracy.md`` (and the run folders under ``--work``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import matting
from compiler import demo
from compiler.demo_report import evaluate_models
from compiler.latency_fit import measure_models
from matting.data.io import write_text
from passes.count import count

VARIANTS = ("uniform, no KD", "slimming, no KD", "DCP + SPKD, inherited", "DCP + SPKD, scratch",
            "DCP + SPKD, latency budget")


def latency_input(s: demo.DemoSettings) -> torch.Tensor:
    """Latency is compared at the size the latency budget is compiled at (320 in full)."""
    return torch.zeros(1, 4, s.compile_size, s.compile_size)


def run_seed(work: Path, s: demo.DemoSettings, teacher, data, seed: int) -> dict[str, torch.nn.Module]:
    s = dataclasses.replace(s, seed=seed)
    w = work / f"seed{seed}"
    students = {}
    # uniform width: every layer x sqrt(target), trained from scratch on L_gt for the same total epochs
    uniform = matting.dim(width=s.width * math.sqrt(s.target_macs))
    students[VARIANTS[0]] = demo.teacher_step(w / "uniform", s, data, model=uniform,
                                              epochs=s.prune_epochs + s.finetune_epochs)
    slim = demo.prune_step(w / "slim_prune", s, teacher, data, distill=False)
    demo.compile_step(w / "slim_compiled", s, slim, budget="macs")
    students[VARIANTS[1]] = demo.finetune_step(w / "slim_finetune", s, w / "slim_compiled", teacher, data,
                                               distill=False)
    sparse = demo.prune_step(w / "dcp_prune", s, teacher, data)
    mac_res = demo.compile_step(w / "dcp_compiled", s, sparse, budget="macs")
    students[VARIANTS[2]] = demo.finetune_step(w / "dcp_inherit", s, w / "dcp_compiled", teacher, data)
    students[VARIANTS[3]] = demo.finetune_step(w / "dcp_scratch", s, w / "dcp_compiled", teacher, data,
                                               init="scratch")
    # the latency budget = the MAC-driven student's measured latency: equal latency, not equal MACs
    demo.compile_step(w / "dcp_latency_compiled", s, sparse,
                      target_latency=demo.equal_latency_target(dataclasses.replace(s, target_latency=None), sparse, mac_res))
    students[VARIANTS[4]] = demo.finetune_step(w / "dcp_latency", s, w / "dcp_latency_compiled", teacher, data)
    return students


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | SAD | MSE (x1e-3) | Grad | Conn | params | GMACs (320) | torch ms | latency / teacher "
             "| SAD / teacher | SAD / uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    t_sad = rows["teacher"]["sad"][0]
    u_sad = np.mean(rows[VARIANTS[0]]["sad"]) if VARIANTS[0] in rows else float("nan")
    for name, r in rows.items():
        def cell(k, scale=1.0):
            v = np.array(r[k]) * scale
            return f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if len(v) > 1 else "")
        sad = np.mean(r["sad"])
        params = " / ".join(f"{p:,}" for p in dict.fromkeys(np.atleast_1d(r["params"]).tolist()))  # per seed if they differ
        macs = " / ".join(f"{m / 1e9:.2f}" for m in dict.fromkeys(np.atleast_1d(r["macs"]).tolist()))
        lines.append(f"| {name} | {cell('sad')} | {cell('mse', 1e3)} | {cell('grad')} | {cell('conn')} | "
                     f"{params} | {macs} | {cell('ms')} | {cell('latency_ratio')} | "
                     f"{sad / t_sad:.2f} | {sad / u_sad:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="toy scale (minutes): checks the script, not the method")
    p.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    p.add_argument("--work", default="runs/accuracy")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(2)
    # 30 finetune epochs per student, as this benchmark's published rows (the demo trains two students for less)
    s = demo.FAST if args.quick else dataclasses.replace(demo.DemoSettings(), finetune_epochs=30)
    work, out = Path(args.work), Path(args.out)
    start = time.time()
    data = demo.make_data(work, s)
    teacher = demo.teacher_step(work / "teacher", s, data)
    rows: dict[str, dict] = {}
    x = torch.zeros(1, 4, 320, 320)

    def add(name, model, scores, ms):
        params, macs = count(model, x)
        r = rows.setdefault(name, {"sad": [], "mse": [], "grad": [], "conn": [], "ms": [], "latency_ratio": [],
                                   "params": [], "macs": []})
        r["params"].append(params)
        r["macs"].append(macs)
        for k in ("sad", "mse", "grad", "conn"):
            r[k].append(scores[k])
        r["ms"].append(ms[name])
        r["latency_ratio"].append(ms[name] / ms["teacher"])

    teacher_scores = evaluate_models({"teacher": teacher}, work / "data" / "test")["teacher"]["mean"]
    for seed in args.seeds:
        students = run_seed(work, s, teacher, data, seed)
        scores = evaluate_models(students, work / "data" / "test")
        ms = measure_models({"teacher": teacher, **students}, latency_input(s), s.backend, repeats=5)
        if "teacher" not in rows:
            add("teacher", teacher, teacher_scores, ms)
        for name, model in students.items():
            add(name, model, scores[name]["mean"], ms)
    out.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(s)
    md = (f"# Accuracy at equal MACs and at equal measured latency (synthetic benchmark)\n\n"
          f"Latency: torch eager CPU, batch 1, {s.compile_size}x{s.compile_size}, fastest of 5 interleaved runs. "
          f"Settings: {json.dumps(settings)}; seeds {args.seeds}; "
          f"{time.time() - start:.0f} s.\nCommand: `python benchmarks/accuracy.py{' --quick' if args.quick else ''}`\n\n"
          + table(rows) + "\n")
    stem = "accuracy_quick" if args.quick else "accuracy"
    write_text(out / f"{stem}.json", json.dumps({"settings": settings, "seeds": args.seeds, "rows": rows}, indent=1))
    write_text(out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
