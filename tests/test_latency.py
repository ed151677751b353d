"""The latency model: backends, cached tables (mocked timer), the correction loop (a fake
backend whose latency we control) and one real end-to-end latency compile on a tiny model.
No assertion here depends on how fast anything ran."""
import json

import pytest
import torch
from torch import nn

import compiler
import passes
from compiler import latency, latency_tables
from compiler.latency_fit import fit_latency, format_latency, latency_model
from passes import analyse, build_groups, trace
from passes.count import layer_axes
from passes.select import select_budget
from tests_helpers import randomise_bn


def tiny():
    torch.manual_seed(0)
    return randomise_bn(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(32, 4, 1))).eval()


def analysed(model, x):
    gm = trace(model, x)
    ctx = analyse(gm)
    groups = build_groups(ctx)
    return gm, ctx, groups, layer_axes(ctx, groups)


class MacTimer:
    """A fake clock: a unit's 'time' is its MACs (plus a fixed cost), and it counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, module, x):
        self.calls += 1
        return 0.01 + passes.count(module, x)[1] / 1e6


def test_cuda_backends_fail_clearly_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for backend in latency.CUDA_BACKENDS:
        with pytest.raises(passes.DCPError, match="needs a CUDA GPU"):
            latency.check_backend(backend)
    with pytest.raises(passes.DCPError, match="unknown latency backend"):
        latency.check_backend("tpu")
    with pytest.raises(passes.DCPError, match="needs a CUDA GPU"):
        compiler.compile(tiny(), torch.zeros(1, 3, 16, 16), target_latency=0.5, backend="trt")


def test_units_are_timed_in_context_with_their_followers():
    gm, _, _, layers = analysed(tiny(), torch.zeros(1, 3, 16, 16))
    specs = [latency.unit_spec(gm, layer) for layer in layers]
    assert [s.channels for s in specs] == [(3, 16), (16, 32), (32, 4)]
    assert [f[0] for f in specs[1].followers] == ["bn", "same", "same"]  # BN, ReLU, MaxPool
    unit, x = specs[1].build(8, 24)
    assert tuple(x.shape) == (1, 8, 16, 16) and tuple(unit(x).shape) == (1, 24, 8, 8)


def test_tables_are_cached_and_reused(tmp_path):
    gm, _, groups, layers = analysed(tiny(), torch.zeros(1, 3, 16, 16))
    timer = MacTimer()
    _, tables, first = latency_model(gm, groups, layers, "torch-cpu", round_to=4, cache=tmp_path, timer=timer)
    assert first["timings"] == timer.calls >= 2 * first["measured"] > 0 and first["cached"] == 0
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 3
    assert json.loads(files[0].read_text())["env"]["backend"] == "torch-cpu"
    again = MacTimer()
    _, tables2, second = latency_model(gm, groups, layers, "torch-cpu", round_to=4, cache=tmp_path, timer=again)
    assert again.calls == 0 and second["cached"] == first["measured"]
    assert all((a.ms == b.ms).all() for a, b in zip(tables, tables2))
    # another input shape is another signature: measured again, next to the old files
    gm2, _, groups2, layers2 = analysed(tiny(), torch.zeros(1, 3, 24, 24))
    latency_model(gm2, groups2, layers2, "torch-cpu", round_to=4, cache=tmp_path, timer=again)
    assert again.calls > 0 and len(list((tmp_path / "latency").glob("*.json"))) == 6


def test_environment_key_names_backend_device_and_versions():
    key = latency_tables.environment_key("torch-cpu")
    assert key["backend"] == "torch-cpu" and key["torch"] == torch.__version__ and key["device"]
    assert latency_tables.environment_key("ort-cpu")["onnxruntime"]


def test_table_interpolates_between_grid_points(tmp_path):
    gm, _, groups, layers = analysed(tiny(), torch.zeros(1, 3, 16, 16))
    cost, tables, _ = latency_model(gm, groups, layers, "torch-cpu", round_to=1, grid_points=3,
                                    cache=tmp_path, timer=lambda m, x: float(x.shape[1] * sum(
                                        p.shape[0] for p in m.parameters() if p.dim() == 4)))
    t = tables[1]  # time = w_in * w_out here: bilinear is exact at grid points, between them close
    assert t(16, 32) == pytest.approx(16 * 32)
    assert t(t.w_in[0], t.w_out[0]) == pytest.approx(t.w_in[0] * t.w_out[0])
    assert t.w_in[0] < 16 and t.w_out[0] < 32


def fake_measure(bias):
    """Whole-model 'latency': MACs plus a constant, times a bias the tables do not know."""
    def measure(models):
        x = torch.zeros(1, 3, 16, 16)
        return {k: 1.0 + bias(k) * passes.count(m, x)[1] / 1e6 for k, m in models.items()}
    return measure


def test_the_correction_loop_meets_a_target_the_tables_mispredict(tmp_path):
    x = torch.zeros(1, 3, 16, 16)
    gm, ctx, groups, layers = analysed(tiny(), x)
    scores = passes.importance.channel_scores(gm, groups, "bn")
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, max_ratio=0.95)  # noqa: E731
    # the compact model runs 30 % slower per MAC than the tables say: one correction at least
    measure = fake_measure(lambda k: 1.3 if k == "compact" else 1.0)
    keep, rep = fit_latency(gm, ctx, groups, layers, x, 0.5, choose, cache=tmp_path, timer=MacTimer(),
                            measure=measure, rounds=4)
    assert len(rep["rounds"]) >= 2
    assert abs(rep["rounds"][0]["measured_ratio"] - 0.5) > 0.05 * 0.5
    assert abs(rep["measured_ratio"] - 0.5) <= abs(rep["rounds"][0]["measured_ratio"] - 0.5)
    assert rep["measured_ratio"] == pytest.approx(0.5, rel=0.1)
    assert len(rep["layers"]) == 3 and "predicted" in format_latency(rep)
    with pytest.raises(passes.DCPError, match="target_latency"):
        fit_latency(gm, ctx, groups, layers, x, 1.5, choose, timer=MacTimer(), measure=measure)
    with pytest.raises(passes.DCPError, match="out of reach"):
        fit_latency(gm, ctx, groups, layers, x, 0.01, choose, cache=tmp_path, timer=MacTimer(), measure=measure)


def test_end_to_end_latency_compile_on_torch_cpu(tmp_path, one_thread):
    """Real timings (their values are not asserted): the plan is exact and the report complete.
    One thread: on a machine busy with other work, two-thread timings stall by whole scheduler
    slices, and the narrowest plan could even measure slower than the original."""
    torch.manual_seed(0)  # wide enough that convolutions, not per-call overhead, take the time
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                       nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                                       nn.Conv2d(128, 4, 1))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.zeros(1, 3, 48, 48)
    res = compiler.compile(model, x, target_latency=0.85, backend="torch-cpu", round_to=8,
                           latency_options={"cache": tmp_path, "grid_points": 3, "rounds": 2, "repeats": 3})
    rep = res.report["latency"]
    assert rep["backend"] == "torch-cpu" and 1 <= len(rep["rounds"]) <= 2 and rep["table"]["measured"] > 0
    assert res.report["verify"]["masked_rel"] < 1e-5
    assert res.report["macs_after"] == passes.count(res.module, x)[1]  # how much is pruned depends on timings
    assert [r["node"] for r in rep["layers"]] == ["_0", "_3", "_6"]
    assert "latency on torch-cpu" in res.summary()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # builds a real latency table of DIM 0.125 at 160 (minutes on a loaded 2-core machine)
def test_cli_compile_to_a_latency_budget(tmp_path, dcp):
    out = dcp("compile", "--model", "dim:0.125", "--size", "160", "160", "--target-latency", "0.9", "--backend",
              "torch-cpu", "--round-to", "8", "--max-ratio", "0.8", "--normalize", "mean",
              "--latency-cache", tmp_path / "cache", "-o", tmp_path / "art", timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "latency on torch-cpu" in out.stdout and "predicted" in out.stdout
    assert list((tmp_path / "cache" / "latency").glob("*.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_backend_without_a_gpu_is_one_clear_error(tmp_path, dcp):
    bad = dcp("compile", "--model", "dim:0.125", "--size", "64", "64", "--target-latency", "0.5",
              "--backend", "cuda-fp16", "--latency-cache", tmp_path / "cache", "-o", tmp_path / "x")
    assert bad.returncode == 2 and "needs a CUDA GPU" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_a_table_that_does_not_fall_with_width_still_reaches_its_narrowest_plan(tmp_path):
    """Noisy tables (a busy machine) can make a narrower unit look slower: the greedy must not
    give up, and the measurement decides."""
    x = torch.zeros(1, 3, 16, 16)
    gm, ctx, groups, layers = analysed(tiny(), x)
    scores = passes.importance.channel_scores(gm, groups, "bn")
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, max_ratio=0.9)  # noqa: E731
    bumpy = lambda module, xx: 1.0 + (5.0 if xx.shape[1] % 2 else 0.0) + passes.count(module, xx)[1] / 1e6  # noqa: E731
    keep, rep = fit_latency(gm, ctx, groups, layers, x, 0.6, choose, cache=tmp_path, timer=bumpy,
                            measure=fake_measure(lambda k: 1.0), rounds=3)
    assert rep["rounds"] and all(len(k) >= 1 for k in keep.values())


def test_a_clock_that_says_the_narrowest_plan_is_slower_is_a_warning_not_an_error(tmp_path):
    """Timings on a busy machine: every pruned plan 'measures' slower than the original."""
    x = torch.zeros(1, 3, 16, 16)
    gm, ctx, groups, layers = analysed(tiny(), x)
    scores = passes.importance.channel_scores(gm, groups, "bn")
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, max_ratio=0.9)  # noqa: E731
    noisy = lambda models: {"original": 1.0, "compact": 1.7}  # noqa: E731
    keep, rep = fit_latency(gm, ctx, groups, layers, x, 0.5, choose, cache=tmp_path, timer=MacTimer(),
                            measure=noisy, rounds=3)
    assert "unreliable timings" in rep["warning"] and "WARNING" in format_latency(rep)
    keep, rep = fit_latency(gm, ctx, groups, layers, x, 1.0, choose, cache=tmp_path, timer=MacTimer(),
                            measure=noisy, rounds=3)  # keeping everything meets 1.0 whatever the clock says
    assert rep["measured_ratio"] == 1.0 and len(rep["rounds"]) == 1
