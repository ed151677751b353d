"""compiler.export_onnx and `dcp export`: dynamo export, onnx.checker, ORT against torch."""
import onnx
import pytest
import torch
from torch import nn

import compiler
import matting
from compiler import onnx_export
from compiler.onnx_export import compare_with_torch, export_onnx
from passes.errors import DCPError


def random_bn_scores(model):
    gen = torch.Generator().manual_seed(0)
    return {n: torch.rand(m.num_features, generator=gen) for n, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d)}


@pytest.fixture(scope="module")
def teacher_onnx(tmp_path_factory):
    model = matting.dim(width=0.0625).eval()
    path = tmp_path_factory.mktemp("teacher") / "teacher.onnx"
    return model, path, export_onnx(model, path, torch.zeros(1, 4, 64, 64))


@pytest.fixture(scope="module")
def compact_artifact(tmp_path_factory):
    """A compiled (pruned) student saved and reloaded as an artifact, as `dcp compile` leaves it."""
    teacher = matting.dim(width=0.125).eval()
    x = torch.zeros(1, 4, 64, 64)
    res = compiler.compile(teacher, x, ratio=0.5, importance=random_bn_scores(teacher))
    folder = tmp_path_factory.mktemp("compact") / "compact"
    compiler.save(res, folder)
    return compiler.load(folder).eval()


def test_teacher_matches_torch_at_the_traced_and_odd_sizes(teacher_onnx):
    _, path, report = teacher_onnx
    assert [c.shape for c in report.checks] == [(1, 4, 64, 64), (2, 4, 97, 131), (1, 4, 200, 150)]
    assert all(c.max_error < 1e-4 for c in report.checks), report.summary()
    assert report.files == [path] and report.dynamic
    onnx.checker.check_model(str(path), full_check=True)


def test_dynamic_axes_are_batch_height_width(teacher_onnx):
    _, path, _ = teacher_onnx
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True] and dims[1].dim_value == 4


def test_teacher_at_more_sizes_than_the_export_checked(teacher_onnx):
    model, path, _ = teacher_onnx
    checks, provider = compare_with_torch(path, model, [(1, 4, 33, 95), (3, 4, 128, 64)], torch.float32)
    assert provider == "CPUExecutionProvider"
    assert all(c.max_error < 1e-4 for c in checks), checks


def test_compact_artifact_lowered_and_folded_has_no_unpool_scatter_or_indices(compact_artifact, tmp_path):
    path = tmp_path / "compact.onnx"
    report = export_onnx(compact_artifact, path, torch.zeros(1, 4, 64, 64), lower_unpool=True, fold_bn=True)
    assert all(c.max_error < 1e-4 for c in report.checks), report.summary()
    assert len(report.checks) == 3
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"MaxUnpool", "ScatterND", "ScatterElements", "BatchNormalization"}, ops
    assert all(len(n.output) == 1 for n in graph.node if n.op_type == "MaxPool")  # no Indices output


@pytest.mark.slow
def test_static_export_fixes_the_shape(compact_artifact, tmp_path):
    report = export_onnx(compact_artifact, tmp_path / "s.onnx", torch.zeros(1, 4, 48, 80), dynamic=False)
    assert [c.shape for c in report.checks] == [(1, 4, 48, 80)] and not report.dynamic
    dims = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 4, 48, 80]


def test_a_failed_check_writes_nothing_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_ATOL", -1.0)  # every output is "off": every check fails
    with pytest.raises(DCPError, match="ONNX Runtime differs from torch at input 1x3x8x8.*nothing written"):
        export_onnx(nn.Sequential(nn.Conv2d(3, 2, 3)), tmp_path / "m.onnx", torch.zeros(1, 3, 8, 8), dynamic=False)
    assert list(tmp_path.iterdir()) == []


def test_the_callers_bound_accepts_what_the_tolerance_alone_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_ATOL", -1.0)
    report = export_onnx(nn.Sequential(nn.Conv2d(3, 2, 3)), tmp_path / "m.onnx", torch.zeros(1, 3, 8, 8),
                         dynamic=False, accept_max_error=1e-3)
    assert report.checks[0].off_fraction == 1.0 and report.checks[0].max_error < 1e-3
    assert [f.name for f in tmp_path.iterdir()] == ["m.onnx"]


def test_check_ok_judges_against_its_own_tolerance():
    within = onnx_export.Check((1, 1), max_error=0.5, off_fraction=1.0, atol=0.5)
    beyond = within._replace(max_error=0.6)
    assert within.ok(max_off_fraction=0.0) and not beyond.ok(max_off_fraction=0.0)
    assert beyond.ok(max_off_fraction=1.0) and beyond.ok(max_off_fraction=0.0, accept_max_error=0.6)
    assert not beyond._replace(max_error=float("nan")).ok(accept_max_error=1.0)


def test_big_weights_go_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    report = export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 3, 16, 16))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert sorted(f.name for f in report.files) == ["m.onnx", "m.onnx.data"]
    assert all(c.max_error < 1e-5 for c in report.checks)


def test_cli_reports_a_bad_model_in_one_line(dcp, tmp_path):
    r = dcp("export", "no_such_model", "-o", tmp_path / "x.onnx")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "dcp export: error: no such model file or folder: no_such_model (or use dim, dim:WIDTH)"]
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_cli_exports_an_artifact_lowered_in_fp16(dcp, compact_artifact, tmp_path):
    compiler.save_module(compact_artifact, tmp_path / "art")
    r = dcp("export", tmp_path / "art", "-o", tmp_path / "m.onnx", "--size", "64", "64", "--lower-unpool",
            "--fold-bn", "--fp16")
    assert r.returncode == 0, r.stderr
    assert "2x4x97x131" in r.stdout and "of pixels above 2e-02" in r.stdout
    assert onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
