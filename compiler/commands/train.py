"""``dcp train teacher|prune|finetune``: the teacher, the pruning stage, the training stage.

    dcp train teacher  --data data/synth --out runs/teacher  --config configs/teacher_cpu.yaml
    dcp train prune    --teacher runs/teacher/best.pt --data data/synth --out runs/prune \\
                       --config configs/prune_cpu.yaml epochs=3 lr=0.001
    dcp compile --model runs/prune/best.pt --importance runs/prune/best.pt -o runs/compact
    dcp train finetune --model runs/compact --teacher runs/teacher/best.pt --data data/synth \\
                       --out runs/finetune --config configs/finetune_cpu.yaml
    torchrun --nproc_per_node=2 -m compiler train prune ...      # DDP, rank 0 writes

Settings: the stage's defaults (the paper's), then ``--config`` YAML, then ``key=value``.
``--data random:N`` trains on N random toy samples (smoke runs, no files). ``--resume``
continues from ``OUT/last.pt``. The finetuned student is also written as an artifact folder
``OUT/model`` (for ``dcp matte/export/bench --model``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from matting.train import load_config
from matting.train.datasets import datasets

from ..models import load_model
from ._common import add_trust_pickle_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the teacher, the sparse student (prune) or the compact student (finetune)")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {"teacher": "train a DIM teacher (from scratch or a local VGG16 init)",
             "prune": "pruning stage: distillation + group-aware BN sparsity on a teacher-shaped student",
             "finetune": "training stage: distil the teacher into a compiled artifact"}
    for stage, text in helps.items():
        s = stages.add_parser(stage, help=text, description=text)
        s.add_argument("--data", required=True, help="data-set folder (dcp data synth/composite) or random:N")
        s.add_argument("--val-data", help="validation folder (default: val_fraction of --data, split by seed)")
        s.add_argument("--out", required=True, help="run folder: last.pt, best.pt, log.csv/json, loss.png")
        s.add_argument("--config", help="YAML settings (see configs/); key=value arguments override it")
        s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
        add_trust_pickle_arg(s)
        if stage == "teacher":
            s.add_argument("--model", default="dim", help="dim, dim:WIDTH or a checkpoint to start from (default dim)")
            s.add_argument("--vgg16", help="a LOCAL torchvision VGG16 state_dict to initialise the encoder")
        else:
            s.add_argument("--teacher", required=True, help="the teacher checkpoint (dcp train teacher's best.pt)")
        if stage == "finetune":
            s.add_argument("--model", required=True, help="the compiled artifact folder (dcp compile -o)")
        s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings overriding the config")
        s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:  # under torchrun: leave the process group cleanly
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    from matting.train import train_finetune, train_prune, train_teacher
    cfg = load_config(args.stage, args.config, args.overrides)
    train_set, val_set = datasets(args.data, args.val_data, cfg)
    out = Path(args.out)
    main = int(os.environ.get("RANK", "0")) == 0
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if main else (lambda *a: None)
    say(f"dcp train {args.stage}: {len(train_set)} training / {len(val_set) if val_set else 0} validation samples, "
        f"{cfg['epochs']} epochs -> {out}")
    torch.manual_seed(cfg["seed"])
    if args.stage == "teacher":
        model = load_model(args.model, trust_pickle=args.trust_pickle)
        if args.vgg16:
            from matting.checkpoint import init_from_vgg16
            init_from_vgg16(model, args.vgg16)
        result = train_teacher(model, train_set, val_set, cfg, out, resume=args.resume)
    else:
        teacher = load_model(args.teacher, trust_pickle=args.trust_pickle)
        example = torch.zeros(1, 4, 64, 64)
        if args.stage == "prune":
            _, result = train_prune(teacher, train_set, val_set, cfg, out, example, resume=args.resume)
        else:
            student = load_model(args.model)
            _, result = train_finetune(student, teacher, train_set, val_set, cfg, out, example, resume=args.resume)
            if main:
                _save_artifact(student, out, args.model)
    say(f"best validation loss {result['best_val']:.5f}; checkpoints in {out}/best.pt and {out}/last.pt")
    if args.stage == "prune":
        say(f"next: dcp compile --model {out}/best.pt --importance {out}/best.pt")
    return 0


def _save_artifact(student: torch.nn.Module, out: Path, source: str) -> None:
    """The best finetuned weights as an artifact folder ``OUT/model`` (plan carried over)."""
    from matting.checkpoint import read_torch_file
    from .. import artifact
    student.load_state_dict(read_torch_file(out / "best.pt")["state_dict"])
    plan = {**artifact.read_plan(source), "finetuned_from": str(source)}
    artifact.save_module(student.eval(), out / "model", plan)
    print(f"finetuned artifact: {out / 'model'}", file=sys.stderr)

