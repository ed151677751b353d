"""compiler.compile: exact compact models, plans that honour ratio / round_to / scopes / widths."""
import json
import subprocess
import sys

import pytest
import torch

import compiler
import matting
import passes
from tests_helpers import randomise_bn

X64 = torch.zeros(1, 4, 64, 64)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return randomise_bn(matting.dim(width=0.25)).eval()


def conv_widths(module):
    return {n: m.out_channels for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("round_to", [1, 8])
def test_dim_compiles_exactly_at_every_ratio(teacher, ratio, round_to):
    res = compiler.compile(teacher, X64, ratio=ratio, round_to=round_to)
    assert res.report["verify"]["masked_rel"] < 1e-5
    before, after = conv_widths(teacher), conv_widths(res.module)
    for name, width in after.items():
        assert 1 <= width <= before[name]
        if round_to == 8 and name != "up1.conv.cbr_unit.0":
            assert width % 8 == 0 or width == before[name], (name, width)
    pruned = sum(before.values()) - sum(after.values())
    assert pruned > 0 and res.report["macs_after"] < res.report["macs_before"]
    x = torch.randn(1, 4, 97, 131)
    with torch.no_grad():
        assert res.module(x).shape == (1, 1, 97, 131)


def test_the_two_sides_of_each_unpool_keep_the_same_channels(teacher):
    res = compiler.compile(teacher, X64, ratio=0.5)
    for enc, dec in [("down1.conv2", "up2.conv"), ("down2.conv2", "up3.conv"),
                     ("down3.conv3", "up4.conv"), ("down4.conv3", "up5.conv")]:
        assert torch.equal(res.kept[f"{enc}.cbr_unit.0"], res.kept[f"{dec}.cbr_unit.0"])
        assert torch.equal(res.kept[f"{enc}.cbr_unit.0"], res.kept[f"{enc}.cbr_unit.1"])  # and its BN


def test_kept_channels_are_the_highest_scoring(teacher):
    res = compiler.compile(teacher, X64, ratio=0.5)
    gamma = teacher.down3.conv1.cbr_unit[1].weight.abs()
    kept = res.kept["down3.conv1.cbr_unit.0"]
    dropped = torch.ones_like(gamma, dtype=torch.bool)
    dropped[kept] = False
    assert gamma[kept].min() >= gamma[dropped].max()


def test_global_ratio_removes_that_fraction_of_prunable_channels(teacher):
    res = compiler.compile(teacher, X64, ratio=0.4)
    groups = [g for g in res.report["groups"] if g["frozen"] is None]
    total, kept = sum(g["size"] for g in groups), sum(g["kept"] for g in groups)
    assert total - kept == int(0.4 * total)


def test_paper_scopes_threshold_encoder_and_decoder_separately():
    t = matting.dim(width=0.25).eval()
    with torch.no_grad():  # decoder gammas 10x smaller, as the decoder's weaker L1 leaves them
        for name, m in t.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) * (0.1 if name.startswith("up") else 1.0))
    res = compiler.compile(t, X64, ratio=0.5, importance="bn", scopes=matting.PAPER_SCOPES)
    # the paper's rule, written out: each pool drops its lowest half of |gamma|; a channel tied
    # across an unpool goes only if both of its pools drop it
    bns = {n: m.weight.abs() for n, m in t.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and n != "up1.conv.cbr_unit.1"}
    dropped = {}
    for prefix in ("down", "up"):
        names = [n for n in bns if n.startswith(prefix)]
        flat = torch.cat([bns[n] for n in names])
        cut = torch.zeros_like(flat, dtype=torch.bool)
        cut[torch.argsort(flat, stable=True)[: len(flat) // 2]] = True
        dropped.update(zip(names, cut.split([len(bns[n]) for n in names])))
    tied = {"down1.conv2": "up2.conv", "down2.conv2": "up3.conv", "down3.conv3": "up4.conv", "down4.conv3": "up5.conv"}
    widths = conv_widths(res.module)
    for name in bns:
        layer = name.removesuffix(".cbr_unit.1")
        gone = dropped[name]
        if layer in tied:
            gone = gone & dropped[f"{tied[layer]}.cbr_unit.1"]
        elif layer in tied.values():
            continue
        assert widths[f"{layer}.cbr_unit.0"] == len(gone) - int(gone.sum()), layer
    assert res.report["verify"]["masked_rel"] < 1e-5


def test_explicit_widths_reproduce_the_uniform_half_width_net():
    teacher = matting.dim(width=0.25).eval()
    half = matting.dim(width=0.125)
    widths = {f"{k}.cbr_unit.0": v for k, v in half.widths.items()}
    res = compiler.compile(teacher, X64, widths=widths)
    assert sum(p.numel() for p in res.module.parameters()) == sum(p.numel() for p in half.parameters())


def test_importance_map_and_its_errors(teacher):
    scores = {"down2.conv1.cbr_unit.1": torch.arange(32.0)}
    res = compiler.compile(teacher, X64, ratio=0.5, importance=scores)
    assert res.kept["down2.conv1.cbr_unit.0"].min() > 0  # channel 0 scored lowest
    with pytest.raises(passes.DCPError, match="not a module"):
        compiler.compile(teacher, X64, importance={"nope": torch.ones(3)})
    with pytest.raises(passes.DCPError, match="ratio"):
        compiler.compile(teacher, X64, ratio=1.0)


def test_never_a_zero_width_layer(teacher):
    res = compiler.compile(teacher, X64, ratio=0.99, min_channels=1)
    assert min(conv_widths(res.module).values()) >= 1


def test_full_width_dim_at_320_compiles_and_verifies():
    res = compiler.compile(matting.dim(), torch.zeros(1, 4, 320, 320), ratio=0.5, importance="l1")
    assert res.report["macs_before"] == pytest.approx(49.89e9, rel=0.005)
    assert res.report["verify"]["masked_rel"] < 1e-5
    assert res.report["macs_after"] == passes.count(res.module, torch.zeros(1, 4, 320, 320))[1]


def test_artifact_loads_in_a_fresh_process_without_the_model_class(tmp_path, teacher):
    res = compiler.compile(teacher, X64, ratio=0.5)
    compiler.save(res, tmp_path / "art")
    x = torch.randn(1, 4, 40, 56)
    with torch.no_grad():
        torch.save({"x": x, "y": res.module(x)}, tmp_path / "io.pt")
    code = ("import sys, torch, compiler; sys.modules.pop('matting', None); "
            f"m = compiler.load(r'{tmp_path / 'art'}'); io = torch.load(r'{tmp_path / 'io.pt'}', weights_only=True); "
            "assert 'matting' not in sys.modules; "
            "print(float((m(io['x']) - io['y']).abs().max()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == 0.0
    plan = json.loads((tmp_path / "art" / "plan.json").read_text())
    assert plan["kept"]["down1.conv2.cbr_unit.0"] == res.kept["down1.conv2.cbr_unit.0"].tolist()


def test_target_macs_fits_the_budget(teacher):
    res = compiler.compile(teacher, X64, target_macs=0.5)
    kept = res.report["macs_after"] / res.report["macs_before"]
    assert 0.45 <= kept <= 0.5 and 0 < res.report["ratio"] < 0.99
    with pytest.raises(passes.DCPError, match="target_macs"):
        compiler.compile(teacher, X64, target_macs=1.5)
    with pytest.raises(passes.DCPError, match="drop scopes"):
        compiler.compile(teacher, X64, target_macs=0.5, scopes=matting.PAPER_SCOPES)


def test_cli_compile_writes_the_artifact_and_rejects_bad_arguments(tmp_path, dcp):
    out = dcp("compile", "--model", "dim:0.125", "--size", "64", "64", "--ratio", "0.5", "--round-to", "8",
              "-o", tmp_path / "art")
    assert out.returncode == 0, out.stderr
    assert "verify at" in out.stdout and "MACs" in out.stdout
    assert {p.name for p in (tmp_path / "art").iterdir()} >= {"graph.json", "weights.pt", "plan.json", "report.md"}
    for args, needle in [(["--ratio", "1.5"], "--ratio must be in [0, 1)"),
                         (["--importance", str(tmp_path / "none.pt")], "no such file"),
                         (["--scopes", "enc:0.5"], "bad --scopes")]:
        bad = dcp("compile", "--model", "dim:0.125", "--size", "64", "64", *args, "-o", tmp_path / "x")
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
