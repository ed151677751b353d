"""Group-aware sparsity: which BNs are penalised, the subgradient, and that it sparsifies."""

import pytest
import torch

import matting
from matting import sparsity
from passes.errors import DCPError

X32 = torch.zeros(1, 4, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _names(model):
    return sparsity.prunable_norms(model, X32)


def test_prunable_norms_exclude_the_one_channel_output_bn():
    model = matting.dim(width=0.125)
    names = _names(model)
    all_bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert "up1.conv.cbr_unit.1" not in names
    assert set(names) == set(all_bns) - {"up1.conv.cbr_unit.1"}
    assert names == [n for n in all_bns if n in names]  # model order


def test_frozen_groups_are_not_penalised():
    # a residual-free toy whose last BN feeds the output through a flatten: that group is frozen
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                torch.nn.Conv2d(6, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.Flatten())
    assert _names(model) == ["1"]


def test_encoder_and_decoder_lambdas_by_name():
    assert sparsity.lambda_for("down3.conv1.cbr_unit.1", 1e-4, 1e-5) == 1e-4
    assert sparsity.lambda_for("up4.conv.cbr_unit.1", 1e-4, 1e-5) == 1e-5
    assert sparsity.lambda_for("head.bn", 1e-4, 1e-5, decoder=("up*", "head*")) == 1e-5
    with pytest.raises(DCPError, match="neither encoder"):
        sparsity.lambda_for("head.bn", 1e-4, 1e-5)


def test_prepare_student_sets_gamma_and_freezes_beta_at_zero():
    model = matting.dim(width=0.125)
    names = _names(model)
    sparsity.prepare_student(model, names, gamma_init=0.5, freeze_beta=True)
    bn = model.get_submodule(names[0])
    assert torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0) and not bn.bias.requires_grad
    # with beta at 0, a zero-gamma channel outputs exactly 0 whatever its input
    with torch.no_grad():
        bn.weight[0] = 0
    bn.train()
    out = bn(torch.randn(2, bn.num_features, 5, 5) * 10 + 3)
    assert torch.all(out[:, 0] == 0) and out[:, 1].abs().sum() > 0
    out_bn = model.get_submodule("up1.conv.cbr_unit.1")
    assert out_bn.bias.requires_grad


def test_apply_adds_lambda_times_sign_of_gamma():
    model = matting.dim(width=0.0625)
    enc, dec = "down2.conv1.cbr_unit.1", "up3.conv.cbr_unit.1"
    with torch.no_grad():
        model.get_submodule(enc).weight.copy_(torch.linspace(-1, 1, model.get_submodule(enc).num_features))
    s = sparsity.Sparsity(model, [enc, dec], lambda_enc=1e-4, lambda_dec=1e-5)
    model.get_submodule(dec).weight.grad = torch.full_like(model.get_submodule(dec).weight, 0.25)
    s.apply()
    g_enc = model.get_submodule(enc).weight
    assert torch.equal(g_enc.grad, 1e-4 * torch.sign(g_enc.detach()))
    assert torch.allclose(model.get_submodule(dec).weight.grad, torch.full_like(g_enc.grad[:1], 0.25 + 1e-5))
    assert model.get_submodule("down1.conv1.cbr_unit.1").weight.grad is None  # not penalised
    assert s.penalty() == pytest.approx(1e-4 * g_enc.abs().sum().item() + 1e-5 * 8 * 1.0, rel=1e-5)


def test_sparsity_drives_the_penalised_gammas_to_zero_in_a_few_steps():
    torch.manual_seed(0)
    model = matting.dim(width=0.0625)
    names = _names(model)
    penalised = [n for n in names if n.startswith("down")]  # encoder only: decoder lambda 0
    sparsity.prepare_student(model, names, gamma_init=0.5)
    s = sparsity.Sparsity(model, penalised, lambda_enc=1.0, lambda_dec=0.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x, target = torch.randn(2, 4, 32, 32), torch.rand(2, 1, 32, 32)
    for _ in range(60):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        s.apply()
        opt.step()
    mean_abs = lambda ns: torch.cat([model.get_submodule(n).weight.detach().abs() for n in ns]).mean().item()
    free = [n for n in names if n not in penalised]
    assert mean_abs(penalised) < 0.05      # started at 0.5; Adam moves ~lr per step toward 0
    assert mean_abs(free) > 0.35           # the data loss alone barely moves them


def test_bn_importance_reads_the_gammas_of_a_checkpoint():
    model = matting.dim(width=0.0625)
    with torch.no_grad():
        model.down1.conv1.cbr_unit[1].weight.fill_(-0.3)
    scores = sparsity.bn_importance(model.state_dict())
    assert "down1.conv1.cbr_unit.1" in scores and "down1.conv1.cbr_unit.0" not in scores
    assert torch.allclose(scores["down1.conv1.cbr_unit.1"], torch.full((4,), 0.3))
    only = sparsity.bn_importance(model, ["up2.conv.cbr_unit.1"])
    assert list(only) == ["up2.conv.cbr_unit.1"]
    with pytest.raises(DCPError, match="no BN"):
        sparsity.bn_importance(model, ["nope.bn"])


def test_importance_from_a_pruning_checkpoint(tmp_path):
    from matting.checkpoint import atomic_save
    model = matting.dim(width=0.0625)
    atomic_save({"state_dict": model.state_dict(), "prunable": ["down1.conv1.cbr_unit.1"]}, tmp_path / "best.pt")
    assert list(sparsity.importance_from_checkpoint(tmp_path / "best.pt")) == ["down1.conv1.cbr_unit.1"]
    atomic_save(model.state_dict(), tmp_path / "plain.pt")
    assert len(sparsity.importance_from_checkpoint(tmp_path / "plain.pt")) == 18


def test_dcp_compile_scores_only_the_checkpoints_prunable_bns(tmp_path, dcp):
    from matting.checkpoint import atomic_save, save_dim
    model = matting.dim(width=0.125)
    names = _names(model)
    save_dim(model, tmp_path / "student.pt", prunable=names[:-1])
    scores = sparsity.importance_from_checkpoint(tmp_path / "student.pt")
    assert list(scores) == sorted(names[:-1])
    r = dcp("compile", "--model", tmp_path / "student.pt", "--importance", tmp_path / "student.pt",
            "--size", "64", "64", "-o", tmp_path / "art")
    assert r.returncode == 0, r.stderr
    atomic_save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "no_bn.pt")
    r = dcp("compile", "--model", "dim:0.125", "--importance", tmp_path / "no_bn.pt", "-o", tmp_path / "x")
    assert r.returncode == 2 and "has no BatchNorm layers to read gammas from" in r.stderr
