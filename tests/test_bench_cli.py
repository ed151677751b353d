"""`dcp bench`, compiler.bench and benchmarks/latency.py, on tiny models (CPU)."""
import json
import sys

import pytest
import torch
from torch import nn

import compiler
import matting
from compiler import bench

sys.path.insert(0, str(bench.Path(__file__).resolve().parents[1] / "benchmarks"))
import latency  # noqa: E402


def test_cli_writes_json_markdown_and_plot_with_speedup_next_to_mac_ratio(dcp, tmp_path):
    compiler.save_module(matting.dim(width=0.03125), tmp_path / "art")
    r = dcp("bench", "--model", "dim:0.0625", "--compare", tmp_path / "art", "--sizes", "32", "48",
            "--backends", "eager-fp32", "eager-fp16-cl", "--repeats", "2", "--warmup", "1", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "| backend | size | model | GMACs | MAC ratio | median ms | speedup | speedup/MAC ratio |" in r.stdout
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    timed = [row for row in data["rows"] if row["backend"] == "eager-fp32"]
    assert {(row["model"], row["size"]) for row in timed} == {(m, s) for m in ("dim:0.0625", str(tmp_path / "art"))
                                                             for s in (32, 48)}
    for row in timed:
        assert len(row["runs"]) == 2 and row["median_ms"] > 0
        if row["model"] == "dim:0.0625":
            assert row["mac_ratio"] == 1.0 and row["speedup"] == 1.0
        else:  # half the widths: about 4x fewer MACs
            assert 3.0 < row["mac_ratio"] < 4.5
            assert row["efficiency"] == pytest.approx(row["speedup"] / row["mac_ratio"])
    if not bench.gpu_present():  # CUDA backends are reported as skipped, not crashed on
        gpu_rows = [row for row in data["rows"] if row["backend"] == "eager-fp16-cl"]
        assert gpu_rows and all(row["note"] == "skipped: needs a CUDA GPU" for row in gpu_rows)
    assert data["meta"]["env"]["torch"] == torch.__version__
    assert (tmp_path / "out" / "bench.md").read_text().startswith("| backend |")
    assert (tmp_path / "out" / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_bad_input_in_one_line(dcp):
    r = dcp("bench", "--model", "dim:0.0625", "--sizes", "16", "--quick")
    assert r.returncode == 2 and r.stderr.strip() == "dcp bench: error: sizes must be at least 32 (five 2x poolings), got [16]"
    r = dcp("bench", "--model", "nope", "--quick")
    assert r.returncode == 2 and "no such model file or folder: nope" in r.stderr


def test_ort_rows_run_the_exported_model():
    conv = lambda c: nn.Sequential(nn.Conv2d(4, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 1, 3, padding=1))
    rows = bench.run({"wide": conv(16), "narrow": conv(8)}, sizes=[32], backends=["ort-cpu", "ort-cuda"],
                     repeats=3, warmup=1, progress=False)
    ort_rows = {r.model: r for r in rows if r.backend == "ort-cpu"}
    assert ort_rows["wide"].speedup == 1.0 and ort_rows["narrow"].mac_ratio == pytest.approx(2.0, rel=0.05)
    assert all(r.median_ms > 0 and len(r.runs) == 3 for r in ort_rows.values())
    if not bench.gpu_present():
        assert all(r.note == "skipped: needs a CUDA GPU" for r in rows if r.backend == "ort-cuda")


def test_a_failing_backend_is_reported_not_fatal():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no kernel for this")

    rows = bench._time_group({"ok": nn.Sequential(nn.Conv2d(4, 2, 1)), "broken": Broken()},
                             "eager-fp32", 32, repeats=3, warmup=1, onnx_paths={}, device="cpu")
    ok, broken = rows
    assert len(ok.runs) == 3 and ok.median_ms > 0 and ok.note == ""
    assert broken.median_ms is None and broken.note == "failed: RuntimeError: no kernel for this"


def test_latency_students_are_compiled_and_a_compiler_error_fails_the_benchmark(monkeypatch):
    teacher = matting.dim(width=0.125).eval()
    studs, how = latency.students(teacher, 0.5, 64, round_tos=(1, 8))
    assert how.startswith("compiler.compile(ratio=0.5, round_to=1|8") and len(studs) == 2
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert all(isinstance(m, torch.fx.GraphModule) and size(m) < size(teacher) / 2 for m in studs.values())

    def broken(*args, **kwargs):
        raise compiler.DCPError("no rule for this op")

    monkeypatch.setattr(compiler, "compile", broken)
    with pytest.raises(compiler.DCPError, match="no rule for this op"):
        latency.students(teacher, 0.5, 64)


def test_latency_uniform_baseline_is_width_scaled_and_rounded():
    for round_to in (1, 8):
        widths = latency.width_scaled(0.5, round_to).widths
        assert widths["down1.conv1"] == 32 and widths["down5.conv3"] == 256
        assert all(w % round_to == 0 for w in widths.values())
    assert latency.width_scaled(0.3, 8).widths["down1.conv1"] == 48  # 44.8 -> 48
