"""End to end on synthetic data: teacher -> prune -> compile -> finetune (CLI) -> artifact."""
import json
import os
import subprocess
import sys

import pytest
import torch

import compiler
import matting
from matting.checkpoint import read_torch_file, save_dim
from matting.data.synth import write_synth
from matting.data.folder import MattingFolder
from matting.sparsity import bn_importance
from matting.train import load_config, train_prune, train_teacher
from tests.conftest import ROOT

SMALL = ["size=32", "workers=0", "progress=false", "batch_size=4", "lr=1e-3", "epochs=2", "jitter=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: several times faster on one thread on a shared machine
    yield
    torch.set_num_threads(n)


def test_teacher_prune_compile_finetune(tmp_path):
    data = write_synth(tmp_path / "synth", n=12, size=48, seed=3)
    train = MattingFolder(data, crop=32, train=True, seed=7, names=[f"{i:05d}" for i in range(10)])
    val = MattingFolder(data, names=["00010", "00011"])
    x = torch.zeros(1, 4, 32, 32)

    teacher = matting.dim(width=0.125)
    train_teacher(teacher, train, val, load_config("teacher", None, SMALL), tmp_path / "teacher")
    save_dim(teacher, tmp_path / "teacher.pt")

    cfg = load_config("prune", ROOT / "configs/prune_cpu.yaml", SMALL + ["init=teacher"])
    student, _ = train_prune(teacher, train, val, cfg, tmp_path / "prune", x)
    sparse = read_torch_file(tmp_path / "prune/best.pt")
    scores = bn_importance(sparse["state_dict"], sparse["prunable"])

    sparse_student = matting.dim(widths=sparse["widths"])
    sparse_student.load_state_dict(sparse["state_dict"])
    res = compiler.compile(sparse_student, x, ratio=0.5, importance=scores)
    compiler.save(res, tmp_path / "compact")
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(res.module) < 0.5 * params(teacher)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "compiler", "train", "finetune", "--model", str(tmp_path / "compact"),
                        "--teacher", str(tmp_path / "teacher.pt"), "--data", str(data), "--out", str(tmp_path / "ft"),
                        "--config", str(ROOT / "configs/finetune_cpu.yaml"), *SMALL],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "ft/log.json").read_text())
    assert len(rows) == 2 and all(row["kd"] > 0 and row["l_ts"] > 0 for row in rows)

    final = compiler.load(tmp_path / "ft/model")            # what matte/export/bench --model take
    assert params(final) == params(res.module)
    assert "kept" in compiler.read_plan(tmp_path / "ft/model")
    best = read_torch_file(tmp_path / "ft/best.pt")["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in final.state_dict().items())
    with torch.no_grad():
        out = final.eval()(torch.randn(1, 4, 40, 56))
    assert out.shape == (1, 1, 40, 56) and 0 <= out.min() and out.max() <= 1
