"""DDP smoke run: ``torchrun`` with 2 CPU processes on the gloo backend, the pruning stage."""
import json
import os
import subprocess
import sys

import torch

import matting
from matting.checkpoint import read_torch_file, save_dim
from tests.conftest import ROOT


def test_torchrun_two_cpu_processes_prune_stage(tmp_path):
    save_dim(matting.dim(width=0.0625), tmp_path / "teacher.pt")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "compiler", "train", "prune", "--teacher", str(tmp_path / "teacher.pt"), "--data", "random:10",
           "--out", str(out), "size=32", "workers=0", "epochs=2", "batch_size=2", "lr=1e-3", "val_fraction=0.4",
           "device=cpu", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in rows] == [0, 1]
    # 10 samples over 2 ranks, batch 2: 3 steps on each rank, summed over ranks in the log
    assert all(row["steps"] == 6 for row in rows)
    assert r.stderr.count("best validation loss") == 1          # rank 0 alone reports
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.csv", "log.json", "loss.png"]
    ck = read_torch_file(out / "last.pt")
    assert not any(k.startswith("module.") for k in ck["state_dict"])  # the student, not the DDP wrapper
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
