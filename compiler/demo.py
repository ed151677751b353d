"""``dcp demo``: the whole method on the built-in synthetic data, ending in a report.

synthetic data -> small teacher -> pruning stage (SPKD + sparsity) -> compile (the sparse
student's gammas; a MAC budget, and a MEASURED latency budget on ``backend`` equal to the
MAC student's measured latency, so the two students compare at equal latency)
-> training stage (SPKD, both students) -> ONNX export -> latency -> metrics ->
``OUT/report.md`` with plots. ``--fast`` is the same pipeline at toy scale (used by a test).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import torch

import matting
from matting.checkpoint import load_dim
from matting.data.io import write_text
from matting.sparsity import bn_importance
from passes import DCPError

from . import artifact
from .pipeline import compile as compile_model, save as save_result


@dataclass
class DemoSettings:
    width: float = 0.25        # teacher width (CPU scale)
    n_train: int = 160
    n_test: int = 12
    size: int = 128            # synthetic image side
    crop: int = 64             # training crop side
    teacher_epochs: int = 70
    prune_epochs: int = 10
    finetune_epochs: int = 20  # per student (latency- and MAC-driven)
    batch_size: int = 8
    ratio: float = 0.5         # per pool (paper scopes), used when target_macs is None
    target_macs: float | None = 0.5  # the MAC-driven student keeps at most this fraction of the MACs
    target_latency: float | None = None  # the student's measured latency / the sparse model's; None: the
    # MAC student's measured ratio, so that the two students compare at EQUAL measured latency
    backend: str = "torch-cpu"   # where that latency is measured
    latency_grid: int = 5      # latency table points per axis
    compile_size: int = 320    # input side the budgets are measured at
    mac_student: bool = True   # also compile and train the MAC-driven student, for the comparison
    round_to: int = 8
    bench_sizes: tuple[int, ...] = (320, 640)
    bench_repeats: int = 5
    bench_onnx: bool = True    # also time ONNX Runtime (exports both models: ~1 min on CPU)
    seed: int = 7


FAST = DemoSettings(width=0.125, n_train=24, n_test=4, size=64, crop=64, teacher_epochs=2, prune_epochs=1,
                    finetune_epochs=1, batch_size=4, bench_sizes=(128,), bench_repeats=3, bench_onnx=False,
                    latency_grid=3, compile_size=160)


# CPU-scale training settings shared by the three stages; the prune stage starts from the
# teacher with 10x the paper's L1 so that a few epochs separate the channels.
STAGE_EXTRA = {"teacher": {"lr": 3e-3},
               "prune": {"init": "teacher", "lr": 1e-2, "lambda_enc": 1e-3, "lambda_dec": 1e-4},
               "finetune": {"init": "inherit", "lr": 1e-3}}


def _stage_cfg(stage: str, s: DemoSettings, epochs: int, **extra) -> dict:
    from matting.train.config import load_config
    values = {"epochs": epochs, "batch_size": s.batch_size, "size": s.crop, "seed": s.seed,
              "workers": 0, "jitter": 0.0, "val_fraction": 0.15, "amp": False, **STAGE_EXTRA[stage], **extra}
    return load_config(stage, None, [f"{k}={v}" for k, v in values.items()])


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def make_data(out: Path, s: DemoSettings):
    """Synthetic train/test folders; returns the (train, validation) datasets."""
    from matting.data.synth import write_synth
    from matting.train.datasets import datasets
    write_synth(out / "data" / "train", s.n_train, s.size, seed=s.seed, force=True)
    write_synth(out / "data" / "test", s.n_test, s.size, seed=s.seed + 1000, force=True)
    return datasets(str(out / "data" / "train"), None, _stage_cfg("teacher", s, 1))


NO_KD = {"w_ts": 0.0, "kd_spatial": 0.0, "kd_channel": 0.0}


def teacher_step(out: Path, s: DemoSettings, data, model=None, epochs: int | None = None) -> torch.nn.Module:
    from matting.train import train_teacher
    cfg = _stage_cfg("teacher", s, epochs or s.teacher_epochs)
    train_teacher(model if model is not None else matting.dim(width=s.width), *data, cfg, out)
    return load_dim(out / "best.pt").eval()


def prune_step(out: Path, s: DemoSettings, teacher, data, distill: bool = True) -> torch.nn.Module:
    """The pruning stage (SPKD + sparsity; ``distill=False``: sparsity only, network slimming)."""
    from matting.train import train_prune
    cfg = _stage_cfg("prune", s, s.prune_epochs, **({} if distill else NO_KD))
    train_prune(teacher, *data, cfg, out, torch.zeros(1, 4, s.crop, s.crop))
    return load_dim(out / "best.pt").eval()


def compile_step(out: Path, s: DemoSettings, sparse, budget: str = "latency", target_latency: float | None = None):
    """Compile the sparse student to the latency budget (``budget="latency"``: ``target_latency``
    or the settings'), or to the MAC budget (``"macs"``; paper scopes at ``ratio`` when
    ``target_macs`` is None)."""
    x = torch.zeros(1, 4, s.compile_size, s.compile_size)
    common = dict(importance=bn_importance(sparse), round_to=s.round_to)
    if budget == "latency":
        res = compile_model(sparse, x, target_latency=target_latency or s.target_latency or 0.5, backend=s.backend,
                            latency_options={"grid_points": s.latency_grid}, **common)
    elif s.target_macs is not None:
        res = compile_model(sparse, x, target_macs=s.target_macs, **common)
    else:
        res = compile_model(sparse, x, ratio=s.ratio, scopes=matting.PAPER_SCOPES, **common)
    save_result(res, out)
    return res


def equal_latency_target(s: DemoSettings, sparse, mac_res) -> float | None:
    """The MAC student's measured latency / the sparse model's, when no target is set."""
    if s.target_latency is not None or mac_res is None:
        return s.target_latency
    from .latency_fit import measure_models
    x = torch.zeros(1, 4, s.compile_size, s.compile_size)
    ms = measure_models({"sparse": sparse, "macs": mac_res.module}, x, s.backend, repeats=5)
    return min(1.0, ms["macs"] / ms["sparse"])


def finetune_step(out: Path, s: DemoSettings, compiled: Path, teacher, data, distill: bool = True,
                  init: str = "inherit") -> torch.nn.Module:
    """The training stage on a compiled artifact; the best weights become ``out/model``."""
    from matting.checkpoint import read_torch_file
    from matting.train import train_finetune
    cfg = _stage_cfg("finetune", s, s.finetune_epochs, init=init, **({} if distill else NO_KD))
    student = artifact.load(compiled)
    train_finetune(student, teacher, *data, cfg, out, torch.zeros(1, 4, s.crop, s.crop))
    student.load_state_dict(read_torch_file(out / "best.pt")["state_dict"])
    artifact.save_module(student.eval(), out / "model", artifact.read_plan(compiled))
    return student.eval()


def run_demo(out: Path, s: DemoSettings) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    torch.manual_seed(s.seed)
    _say(f"1/8 synthetic data: {s.n_train} training + {s.n_test} test images of {s.size}px")
    data = make_data(out, s)
    lap("data")

    _say(f"2/8 teacher: DIM at width {s.width}")
    teacher = teacher_step(out / "teacher", s, data)
    lap("teacher")

    _say("3/8 pruning stage: SPKD distillation + L1 on prunable BN gammas")
    sparse = prune_step(out / "prune", s, teacher, data)
    lap("prune")

    _say(f"4/8 compile: a measured latency budget on {s.backend}"
         + (f", and {s.target_macs:.0%} of the MACs for comparison" if s.mac_student else "")
         + f", round_to {s.round_to}")
    mac_res = compile_step(out / "compiled_macs", s, sparse, budget="macs") if s.mac_student else None
    latency_miss = None
    try:
        res = compile_step(out / "compiled", s, sparse, target_latency=equal_latency_target(s, sparse, mac_res))
    except DCPError as e:  # e.g. a toy model whose latency is all fixed costs: say so, go on with the MAC student
        if mac_res is None:
            raise
        latency_miss = str(e)
        _say(f"   no latency-driven student: {latency_miss}; the student is the MAC-driven one")
        res, mac_res = mac_res, None
        save_result(res, out / "compiled")
    print(res.summary())
    lap("compile")

    _say("5/8 training stage: distil the teacher into the compact student(s)")
    student = finetune_step(out / "finetune", s, out / "compiled", teacher, data)
    students = {"student": student}
    if mac_res is not None:
        students["MAC student"] = finetune_step(out / "finetune_macs", s, out / "compiled_macs", teacher, data)
    lap("finetune")

    _say("6/8 ONNX export of the student (dynamic H/W, checked in ONNX Runtime)")
    onnx_report = _export(student, out)
    lap("export")

    _say("7/8 latency: teacher vs student")
    rows = _bench({"teacher": teacher, **students}, s)
    lap("bench")

    _say("8/8 metrics on the synthetic test set")
    from .demo_report import evaluate_models, write_report
    scores = evaluate_models({"teacher": teacher, **students}, out / "data" / "test")
    lap("eval")
    report = write_report(out, s, teacher=teacher, sparse=sparse, student=student, compiled=res, scores=scores,
                          bench_rows=rows, onnx=onnx_report, timings=timings,
                          mac_student=students.get("MAC student"), mac_compiled=mac_res, latency_miss=latency_miss)
    write_text(out / "settings.json", json.dumps(asdict(s), indent=1))
    print(f"\nreport: {report}")
    return report


def _export(student: torch.nn.Module, out: Path) -> str:
    from matting.metrics import ALPHA_HALF_LEVEL
    from .onnx_export import export_onnx
    try:
        rep = export_onnx(student, out / "student.onnx", torch.zeros(1, 4, 96, 96), dynamic=True,
                          lower_unpool=True, fold_bn=True,  # TensorRT-friendly: no MaxUnpool/ScatterND
                          accept_max_error=ALPHA_HALF_LEVEL)
        checks = ", ".join(f"{'x'.join(map(str, c.shape[2:]))}: {c.max_error:.1e}" for c in rep.checks)
        return (f"{rep.path.name}: opset {rep.opset}, dynamic batch/H/W, unpool lowered to dense ops, BN folded; ops {', '.join(rep.ops)}\n"
                f"ONNX Runtime ({rep.provider}) vs torch, max abs error per input size: {checks}")
    except Exception as e:  # the report says what failed; the demo goes on
        return f"export failed: {type(e).__name__}: {str(e).splitlines()[0]}"


def _bench(models: dict, s: DemoSettings) -> list:
    from . import bench
    backends = ["eager-fp32", "ort-cpu"] if s.bench_onnx else ["eager-fp32"]
    return bench.run(models, s.bench_sizes, backends, repeats=s.bench_repeats, warmup=1, device="cpu")
