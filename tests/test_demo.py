"""`dcp demo --fast`: the whole pipeline end to end, at toy scale."""
import json


def test_fast_demo_writes_a_complete_report(tmp_path, dcp):
    out = dcp("demo", "--fast", "--out", tmp_path / "demo", timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    demo = tmp_path / "demo"
    report = (demo / "report.md").read_text()
    for needle in ("| teacher |", "| student |", "plots/widths.png", "plots/gammas.png", "plots/latency.png",
                   "plots/grid.png", "ONNX Runtime"):
        assert needle in report, needle
    for plot in ("widths", "gammas", "latency", "grid"):
        assert (demo / "plots" / f"{plot}.png").stat().st_size > 5000
    metrics = json.loads((demo / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student", "MAC student"} and all(0 <= m["sad"] < 1e3 for m in metrics.values())
    assert "| MAC student |" in report and "## Latency budget" in report
    plan = json.loads((demo / "compiled" / "plan.json").read_text())["report"]
    # how far the latency student is pruned depends on timings (its target is the MAC student's measured latency)
    assert plan["latency"]["backend"] == "torch-cpu" and plan["verify"]["masked_rel"] < 1e-5
    assert 0 < plan["latency"]["target"] <= 1 and plan["latency"]["rounds"]
    mac_plan = json.loads((demo / "compiled_macs" / "plan.json").read_text())["report"]
    assert mac_plan["macs_after"] <= 0.5 * mac_plan["macs_before"] and mac_plan["verify"]["masked_rel"] < 1e-5
    assert (demo / "student.onnx").is_file() and (demo / "finetune" / "model" / "graph.json").is_file()


def test_demo_rejects_unknown_settings(tmp_path, dcp):
    out = dcp("demo", "--fast", "--out", tmp_path / "d", "--set", "nope=1")
    assert out.returncode == 2 and "known settings" in out.stderr
