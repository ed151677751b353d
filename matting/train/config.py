"""Training configuration: stage defaults, a YAML file, then ``key=value`` overrides.

>>> cfg = load_config("prune", None, ["epochs=2", "lr=1e-3", "encoder=[down*]"])
>>> cfg["epochs"], cfg["lr"], cfg["encoder"], cfg["lambda_enc"]
(2, 0.001, ['down*'], 0.0001)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from passes.errors import DCPError

# The paper's settings (docs/method.md#training-stages) are the defaults; CPU configs shrink them.
COMMON: dict[str, Any] = {
    "epochs": 15, "batch_size": 1, "lr": 0.01, "weight_decay": 0.0, "grad_clamp": 5.0, "seed": 7,
    "schedule": "none",          # none | cosine | step
    "step_size": 10, "step_gamma": 0.1,
    "amp": True,                 # mixed precision, CUDA only (ignored on CPU)
    "amp_dtype": "bfloat16",     # bfloat16 | float16 (float16 uses a GradScaler)
    "device": "auto",            # auto | cpu | cuda
    "workers": 2,
    "val_fraction": 0.2,         # of --data when no --val-data is given (split by seed)
    "max_steps": None,           # cap steps per epoch (smoke runs)
    "size": 320,                 # training crop side
    "jitter": 0.125,             # colour jitter of the training crops (the paper's 0.125)
    "w_gt": 1.0, "w_comp": 0.0,  # alpha loss vs ground truth; compositional loss (off in DCP)
    "progress": True,
}
DISTILL: dict[str, Any] = {"w_ts": 1.0, "kd_spatial": 1.0, "kd_channel": 1.0}
STAGES: dict[str, dict[str, Any]] = {
    "teacher": {**COMMON, "epochs": 25, "lr": 1e-4, "w_comp": 0.0},
    "prune": {**COMMON, **DISTILL, "epochs": 15,
              "init": "random",          # random (the paper) | teacher
              "gamma_init": 0.5, "freeze_beta": True,
              "lambda_enc": 1e-4, "lambda_dec": 1e-5,
              "encoder": ["down*"], "decoder": ["up*"]},
    "finetune": {**COMMON, **DISTILL, "epochs": 30,
                 "init": "inherit",        # inherit (weights in the artifact) | scratch (the paper)
                 "gamma_init": None},      # BN gamma after a scratch re-init (None: 1, PyTorch's)
}


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _numbers(v: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; make it the float everyone means."""
    if isinstance(v, str) and _FLOAT.match(v.strip()):
        return float(v)
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    return v


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.1", "amp=false"]`` -> ``{"lr": 0.1, "amp": False}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DCPError(f"bad override '{item}': expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise DCPError(f"bad value in override '{item}': {str(e).splitlines()[0]}") from e
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DCPError(f"no such config file: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DCPError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise DCPError(f"{path}: expected a mapping of settings")
    return data


def load_config(stage: str, path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults of ``stage`` <- YAML file <- overrides; unknown keys are an error."""
    if stage not in STAGES:
        raise DCPError(f"unknown stage '{stage}' (known: {', '.join(STAGES)})")
    cfg = dict(STAGES[stage])
    for source, values in ((str(path), read_yaml(path) if path else {}), ("override", parse_overrides(overrides))):
        if values.get("stage", stage) != stage:
            raise DCPError(f"{source} is a config for stage '{values['stage']}', not '{stage}'")
        values = {k: _numbers(v) for k, v in values.items() if k != "stage"}
        unknown = sorted(set(values) - set(cfg))
        if unknown:
            raise DCPError(f"{source}: unknown setting(s) {unknown} for stage '{stage}' (known: {', '.join(sorted(cfg))})")
        cfg.update(values)
    _check(cfg, stage)
    return cfg


def _check(cfg: dict[str, Any], stage: str) -> None:
    choices = {"schedule": ("none", "cosine", "step"), "amp_dtype": ("bfloat16", "float16"),
               "device": ("auto", "cpu", "cuda"), "init": ("random", "teacher") if stage == "prune" else
               ("inherit", "scratch")}
    for key, allowed in choices.items():
        if key in cfg and cfg[key] not in allowed:
            raise DCPError(f"{key}={cfg[key]!r}: expected one of {', '.join(allowed)}")
    for key in ("epochs", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise DCPError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if not 0 <= float(cfg["val_fraction"]) < 1:
        raise DCPError(f"val_fraction must be in [0, 1), got {cfg['val_fraction']}")
