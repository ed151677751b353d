"""Training machinery: configs, taps, the loop's files, resume after an interruption, the stages."""
import json
import multiprocessing
import os
import signal
import time

import pytest
import torch

import compiler
import matting
from matting.checkpoint import load_dim, read_torch_file, save_dim
from matting.taps import FeatureTaps
from matting.train import load_config, make_input, train_finetune, train_prune, train_teacher
from matting.train.toydata import RandomMattes
from passes.errors import DCPError
from tests.conftest import ROOT

FAST = ["size=32", "workers=0", "progress=false", "batch_size=4", "lr=1e-3", "val_fraction=0.25"]
X = torch.zeros(1, 4, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(stage, *extra):
    return load_config(stage, None, [*FAST, "epochs=2", *extra])


# -- configs -------------------------------------------------------------------------------
def test_defaults_are_the_papers_settings():
    c = load_config("prune")
    assert (c["lr"], c["weight_decay"], c["batch_size"], c["grad_clamp"], c["seed"], c["epochs"]) == \
        (0.01, 0.0, 1, 5.0, 7, 15)
    assert (c["lambda_enc"], c["lambda_dec"], c["gamma_init"], c["freeze_beta"]) == (1e-4, 1e-5, 0.5, True)
    assert load_config("finetune")["epochs"] == 30
    paper = load_config("prune", ROOT / "configs/paper_prune.yaml")
    assert {k: v for k, v in paper.items() if k != "workers"} == {k: v for k, v in c.items() if k != "workers"}


def test_yaml_then_overrides_and_clear_errors(tmp_path):
    c = load_config("prune", ROOT / "configs/prune_cpu.yaml", ["lambda_enc=2e-3", "encoder=[down*, enc*]"])
    assert c["lambda_enc"] == 0.002 and c["encoder"] == ["down*", "enc*"] and c["size"] == 64
    with pytest.raises(DCPError, match="unknown setting.*lrr"):
        load_config("prune", None, ["lrr=1"])
    with pytest.raises(DCPError, match="key=value"):
        load_config("prune", None, ["lr"])
    with pytest.raises(DCPError, match="not 'teacher'"):
        load_config("teacher", ROOT / "configs/prune_cpu.yaml")
    with pytest.raises(DCPError, match="init"):
        load_config("finetune", None, ["init=random"])
    for f in (ROOT / "configs").glob("*.yaml"):
        if not f.name.startswith("demo"):
            stage = f.name.removeprefix("paper_").split("_")[0].removesuffix(".yaml")
            load_config(stage, f)


def test_make_input_normalises_rgb_and_appends_the_trimap():
    image, trimap = torch.rand(2, 3, 8, 8), torch.full((2, 1, 8, 8), 0.5)
    x = make_input(image, trimap)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, :3], (image - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert torch.equal(x[:, 3:], trimap)


# -- taps ----------------------------------------------------------------------------------
def test_taps_give_the_same_features_on_eager_and_compiled_graphs(tmp_path):
    model = matting.dim(width=0.125).eval()
    compiler.save_module(model, tmp_path / "art")
    gm = compiler.load(tmp_path / "art")
    x = torch.randn(1, 4, 64, 64)
    with FeatureTaps(model, matting.TAP_MODULES) as a, FeatureTaps(gm, matting.TAP_MODULES) as b, torch.no_grad():
        model(x), gm(x)
        assert [tuple(f.shape) for f in a.features] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 64, 2, 2)]
        for fa, fb in zip(a.features, b.features):
            assert torch.equal(fa, fb)
    with pytest.raises(DCPError, match="cannot tap"):
        FeatureTaps(model, ["down9.pool"])


# -- the loop ------------------------------------------------------------------------------
def test_teacher_training_writes_checkpoints_logs_and_plot(tmp_path):
    torch.manual_seed(0)
    model = matting.dim(width=0.0625)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = train_teacher(model, RandomMattes(8, 32), RandomMattes(2, 32, seed=1), cfg("teacher"), tmp_path)
    assert [row["epoch"] for row in r["rows"]] == [0, 1] and all(row["steps"] == 2 for row in r["rows"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "log.csv", "log.json", "loss.png"]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3
    best = load_dim(tmp_path / "best.pt")                 # a DIM checkpoint any --model takes
    assert best.widths == model.widths
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    last = read_torch_file(tmp_path / "last.pt")
    assert last["epoch"] == 1 and "optimizer" in last and last["best"] == min(x["val_loss"] for x in r["rows"])


def test_step_schedule_and_max_steps(tmp_path):
    c = cfg("teacher", "epochs=3", "schedule=step", "step_size=1", "step_gamma=0.5", "max_steps=1")
    r = train_teacher(matting.dim(width=0.0625), RandomMattes(8, 32), None, c, tmp_path)
    assert [row["lr"] for row in r["rows"]] == [1e-3, 5e-4, 2.5e-4]
    assert [row["steps"] for row in r["rows"]] == [1, 1, 1] and r["rows"][0]["val_loss"] is None


class Exploding(RandomMattes):
    """Raises in the middle of epoch ``at_epoch`` (a crash mid-epoch)."""

    def __init__(self, *a, at_epoch=1, **k):
        super().__init__(*a, **k)
        self.epoch, self.at_epoch, self.calls = 0, at_epoch, 0

    def set_epoch(self, e):
        self.epoch, self.calls = e, 0

    def __getitem__(self, i):
        self.calls += 1
        if self.epoch == self.at_epoch and self.calls > 5:
            raise RuntimeError("crash")
        return super().__getitem__(i)


def test_resume_after_a_crash_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    train, val = RandomMattes(8, 32), RandomMattes(2, 32, seed=1)
    c = cfg("teacher", "epochs=3")
    torch.manual_seed(1)
    straight = matting.dim(width=0.0625)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    train_teacher(straight, train, val, c, tmp_path / "a")

    crashing = matting.dim(width=0.0625)
    crashing.load_state_dict(init)
    with pytest.raises(RuntimeError, match="crash"):
        train_teacher(crashing, Exploding(8, 32, at_epoch=1), val, c, tmp_path / "b")
    assert read_torch_file(tmp_path / "b/last.pt")["epoch"] == 0     # epoch 1 lost, epoch 0 intact
    resumed = matting.dim(width=0.0625)                                # a fresh process would rebuild it
    r = train_teacher(resumed, train, val, c, tmp_path / "b", resume=True)
    assert [row["epoch"] for row in r["rows"]] == [0, 1, 2]
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert json.loads((tmp_path / "b/log.json").read_text())[-1]["val_loss"] == \
        json.loads((tmp_path / "a/log.json").read_text())[-1]["val_loss"]


def _train_forever(out):
    torch.set_num_threads(1)
    train_teacher(matting.dim(width=0.0625), RandomMattes(16, 32), RandomMattes(4, 32, seed=1),
                  cfg("teacher", "epochs=1000", "batch_size=1"), out)


def test_kill_9_mid_epoch_never_corrupts_the_checkpoint_and_resume_finishes(tmp_path):
    # a child process trains; SIGKILL it right after a checkpoint. (spawn, not fork: autograd's
    # worker threads in this process cannot survive a fork once any backward has run)
    child = multiprocessing.get_context("spawn").Process(target=_train_forever, args=(tmp_path,))
    child.start()
    try:
        deadline = time.time() + 120
        while not (tmp_path / "last.pt").exists() and time.time() < deadline and child.is_alive():
            time.sleep(0.02)
        time.sleep(0.2)  # now inside the next epoch, or writing its checkpoint
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
    done = read_torch_file(tmp_path / "last.pt")["epoch"]  # loads: complete, never truncated
    assert 0 <= done < 999
    model = matting.dim(width=0.0625)
    r = train_teacher(model, RandomMattes(16, 32), RandomMattes(4, 32, seed=1),
                      cfg("teacher", f"epochs={done + 2}", "batch_size=1"), tmp_path, resume=True)
    assert [row["epoch"] for row in r["rows"]] == list(range(done + 2))
    assert load_dim(tmp_path / "best.pt").widths == model.widths


# -- the stages ----------------------------------------------------------------------------
def test_prune_stage_freezes_betas_and_shrinks_only_penalised_gammas(tmp_path):
    teacher = matting.dim(width=0.0625)
    c = cfg("prune", "init=teacher", "lambda_enc=0.05", "lambda_dec=0.05")
    student, r = train_prune(teacher, RandomMattes(8, 32), None, c, tmp_path, X)
    assert r["rows"][-1]["kd"] > 0 and r["rows"][-1]["l_ts"] > 0
    best = read_torch_file(tmp_path / "best.pt")
    prunable = best["prunable"]
    assert "up1.conv.cbr_unit.1" not in prunable and len(prunable) == 17
    for name in prunable:
        bn = student.get_submodule(name)
        assert torch.all(bn.bias == 0) and not bn.bias.requires_grad
        assert bn.weight.abs().mean() < 0.5  # started at gamma_init 0.5, pulled toward 0
    assert student.get_submodule("up1.conv.cbr_unit.1").bias.requires_grad
    assert best["adapters"] == {}  # same widths as the teacher: no adapters
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.down2.maxpool_with_argmax._forward_hooks  # taps removed afterwards


def test_sparse_student_at_random_init_as_the_paper(tmp_path):
    from matting.train import make_sparse_student
    teacher = matting.dim(width=0.0625)
    student, sp = make_sparse_student(teacher, X, cfg("prune"))      # init=random, gamma_init=0.5
    assert student is not teacher and student.widths == teacher.widths
    assert not torch.equal(student.down1.conv1.cbr_unit[0].weight, teacher.down1.conv1.cbr_unit[0].weight)
    assert all(torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0) for _, bn, _ in sp.terms)
    assert {lam for name, _, lam in sp.terms if name.startswith("down")} == {1e-4}
    assert {lam for name, _, lam in sp.terms if name.startswith("up")} == {1e-5}


def test_finetune_distils_into_a_narrower_graph_module_with_adapters(tmp_path):
    teacher = matting.dim(width=0.125)
    compiler.save_module(matting.dim(width=0.0625), tmp_path / "art")
    student = compiler.load(tmp_path / "art")
    c = cfg("finetune", "epochs=1")
    init = {k: v.clone() for k, v in student.state_dict().items()}
    student, r = train_finetune(student, teacher, RandomMattes(8, 32), None, c, tmp_path / "run", X)
    best = read_torch_file(tmp_path / "run/best.pt")
    assert set(best["adapters"]) == {f"{i}.weight" for i in range(4)}
    assert best["adapters"]["0.weight"].shape == (16, 8, 1, 1)
    assert any(not torch.equal(init[k], v) for k, v in student.state_dict().items())
    assert r["rows"][0]["kd"] > 0


def test_finetune_from_scratch_reinitialises_with_gamma_init(tmp_path):
    student = matting.dim(width=0.0625)
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(0.123)
    c = cfg("finetune", "epochs=1", "init=scratch", "gamma_init=0.25", "max_steps=1", "lr=1e-9")
    train_finetune(student, matting.dim(width=0.0625), RandomMattes(4, 32), None, c, tmp_path, X)
    assert torch.allclose(student.down1.conv1.cbr_unit[1].weight, torch.tensor(0.25), atol=1e-6)
    assert not torch.allclose(student.down1.conv1.cbr_unit[0].weight, torch.tensor(0.123))


def test_cli_errors_are_one_line(tmp_path, dcp):
    save_dim(matting.dim(width=0.0625), tmp_path / "t.pt")
    r = dcp("train", "prune", "--teacher", tmp_path / "t.pt", "--data", "random:4", "--out", tmp_path / "o", "lrr=1")
    assert r.returncode == 2 and "unknown setting" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    from compiler.cli import main
    assert main(["train", "teacher", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dcp train: error:" in err and "nodata" in err and "Traceback" not in err
