"""Checkpoints: our files, plain state_dicts, the public pickled checkpoint (trusted only), VGG16."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

import matting
from matting.checkpoint import init_from_vgg16, load_dim, save_dim
from passes import DCPError


def same_outputs(a, b):
    x = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_round_trip_keeps_widths_and_weights(tmp_path):
    model = matting.dim(width=0.125, widths={"down3.conv2": 5})
    save_dim(model, tmp_path / "m.pt", epoch=3)
    loaded = load_dim(tmp_path / "m.pt")
    assert loaded.widths == model.widths and same_outputs(model, loaded)


def test_plain_and_data_parallel_state_dicts_load(tmp_path):
    model = matting.dim(width=0.125)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "dp.pth")
    assert same_outputs(model, load_dim(tmp_path / "plain.pth"))
    assert same_outputs(model, load_dim(tmp_path / "dp.pth"))


def test_public_checkpoint_loads_only_when_trusted(tmp_path):
    # The public BEST_checkpoint.tar pickles DataParallel(DIMModel) from a module named `models`;
    # make one in a separate process where that class exists, then load it here, where it does not.
    (tmp_path / "models.py").write_text(textwrap.dedent("""
        import torch.nn as nn, matting
        class DIMModel(nn.Module):
            def __init__(self):
                super().__init__()
                src = matting.dim(width=0.125)
                for name, child in src.named_children():
                    self.add_module(name, child)
    """))
    code = ("import torch, models; m = models.DIMModel(); "
            "torch.save({'epoch': 1, 'model': torch.nn.DataParallel(m)}, 'BEST_checkpoint.tar'); "
            "torch.save(m.state_dict(), 'expected.pt')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True,
                   env={"PYTHONPATH": f"{tmp_path}:{sys.path[0] or '.'}", **_env()})
    with pytest.raises(DCPError, match="trust-pickle"):
        load_dim(tmp_path / "BEST_checkpoint.tar")
    loaded = load_dim(tmp_path / "BEST_checkpoint.tar", trust_pickle=True)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def _env():
    import os
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("content,match", [(b"", "corrupt or truncated"), (b"not a zip at all", "not a readable")])
def test_corrupt_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(DCPError):
        load_dim(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    save_dim(matting.dim(width=0.125), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DCPError, match="corrupt or truncated|not a readable"):
        load_dim(tmp_path / "cut.pt")


def test_missing_file_and_wrong_content(tmp_path):
    with pytest.raises(DCPError, match="no such file"):
        load_dim(tmp_path / "nope.pt")
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DCPError, match="not a DIM state_dict"):
        load_dim(tmp_path / "other.pt")


def test_vgg16_init_copies_the_encoder_and_zeros_the_trimap_channel(tmp_path):
    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    model = init_from_vgg16(matting.dim(), tmp_path / "vgg16.pth")
    first = model.down1.conv1.cbr_unit[0].weight
    assert torch.equal(first[:, :3], vgg.features[0].weight) and first[:, 3].abs().sum() == 0
    assert torch.equal(model.down5.conv3.cbr_unit[0].weight, vgg.features[28].weight)
    with pytest.raises(DCPError, match="full-width"):
        init_from_vgg16(matting.dim(width=0.5), tmp_path / "vgg16.pth")


def test_cli_errors_are_one_line_without_traceback(tmp_path, dcp):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    for args, needle in [(["inspect", "--model", str(tmp_path / "missing.pt")], "no such model file"),
                         (["inspect", "--model", str(tmp_path / "bad.pt")], "not a readable torch checkpoint"),
                         (["inspect", "--model", "dim:abc"], "bad model spec")]:
        out = dcp(*args)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_cli_inspect_prints_the_table_and_totals(dcp):
    out = dcp("inspect", "--model", "dim", "--size", "224", "224")
    assert out.returncode == 0, out.stderr
    assert "down1_conv1_cbr_unit_0" in out.stdout and "total: 25,582,595 parameters, 24.45 GMACs" in out.stdout
    out = dcp("inspect", "--model", "dim:0.25", "--size", "64", "64", "--groups", "--graph")
    assert "15 groups, 13 prunable" in out.stdout and "graph():" in out.stdout
