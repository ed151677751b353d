"""Training: the teacher, the pruning stage (distillation + sparsity) and the training stage.

    from matting.train import load_config, train_prune
    cfg = load_config("prune", "configs/prune_cpu.yaml", ["epochs=2"])
    student, summary = train_prune(teacher, train_set, val_set, cfg, "runs/prune", example)
"""
from .config import load_config, parse_overrides
from .inputs import make_input
from .loop import Trainer, BEST, LAST
from .stages import train_teacher, train_prune, train_finetune, make_sparse_student, reset_parameters

__all__ = ["load_config", "parse_overrides", "make_input", "Trainer", "BEST", "LAST", "train_teacher",
           "train_prune", "train_finetune", "make_sparse_student", "reset_parameters"]
