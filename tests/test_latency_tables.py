"""Latency tables under a disturbed clock: a stall of the machine while they are built must not
reach the cached table, and a real staircase (a narrower layer that IS slower) must survive."""
import json

import pytest
import torch

import passes
from compiler.latency_fit import fit_latency, latency_model
from compiler.latency_tables import TABLE_RULES
from passes.select import select_budget
from test_latency import MacTimer, analysed, fake_measure, tiny


def true_ms(module, x):
    return 0.01 + passes.count(module, x)[1] / 1e6


class StallingTimer:
    """The true cost, except that calls ``first`` .. ``first + length - 1`` run 100x slower (the
    VM descheduled for a while: every entry timed then is wrong, full-width ones included)."""

    def __init__(self, first, length, factor=100.0):
        self.first, self.length, self.factor, self.calls = first, length, factor, 0

    def __call__(self, module, x):
        self.calls += 1
        slow = self.first <= self.calls < self.first + self.length
        return true_ms(module, x) * (self.factor if slow else 1.0)


def expected_tables(tables):
    out = []
    for t in tables:
        out.append([[true_ms(*t.spec.build(a, b)) for b in t.w_out] for a in t.w_in])
    return out


@pytest.mark.parametrize("first,length", [(1, 6), (10, 15), (20, 25)])  # the build has 58 calls
def test_a_stall_while_the_tables_are_built_does_not_reach_them(tmp_path, first, length):
    """Any stall shorter than one sweep, even one across the two sweeps' boundary."""
    gm, _, groups, layers = analysed(tiny(), torch.zeros(1, 3, 16, 16))
    stall = StallingTimer(first, length)
    _, tables, stats = latency_model(gm, groups, layers, "torch-cpu", round_to=4, cache=tmp_path, timer=stall)
    assert stats["timings"] == stall.calls and stall.calls > first + length  # the stall was inside the build
    for table, want in zip(tables, expected_tables(tables)):
        assert table.ms.ravel().tolist() == pytest.approx(sum(want, []))
    for f in (tmp_path / "latency").glob("*.json"):  # and so the cache is clean too
        data = json.loads(f.read_text())
        assert data["rules"] == TABLE_RULES and max(data["ms"].values()) < 10


def test_a_stall_spanning_whole_sweeps_is_retimed_where_it_breaks_the_tables_shape(tmp_path):
    """Every call of the first two sweeps is slow for the narrowest entries only: both sweeps
    agree, but an entry above a wider one of its own table is re-timed."""
    gm, _, groups, layers = analysed(tiny(), torch.zeros(1, 3, 16, 16))
    entries = latency_model(gm, groups, layers, "torch-cpu", round_to=4, cache=tmp_path / "probe",
                            timer=true_ms)[2]["measured"]

    class NarrowSlow:
        calls = 0

        def __call__(self, module, x):
            self.calls += 1
            narrow = x.shape[1] == 4 and self.calls <= 2 * entries  # 4 input channels, during both sweeps
            return true_ms(module, x) * (50.0 if narrow else 1.0)
    _, tables, stats = latency_model(gm, groups, layers, "torch-cpu", round_to=4, cache=tmp_path, timer=NarrowSlow())
    assert stats["retimed"] > 0
    for table, want in zip(tables, expected_tables(tables)):
        assert table.ms.ravel().tolist() == pytest.approx(sum(want, []))


def test_a_real_staircase_survives_retiming(tmp_path):
    """A width that is slower than a wider one on every run (a GPU kernel staircase) stays in
    the table as measured: the selection should see it, not an averaged-away version."""
    gm, _, groups, layers = analysed(tiny(), torch.zeros(1, 3, 16, 16))
    stair = lambda module, x: true_ms(module, x) + (5.0 if x.shape[1] % 8 else 0.0)  # noqa: E731
    _, tables, stats = latency_model(gm, groups, layers, "torch-cpu", round_to=4, cache=tmp_path, timer=stair)
    t = tables[1]
    odd = [a for a in t.w_in if a % 8]
    assert odd and stats["retimed"] > 0  # the odd widths looked disturbed, were re-timed, and stayed slow
    for a in odd:
        assert t(a, t.w_out[-1]) > t(16, t.w_out[-1])


def test_tables_that_add_up_to_far_more_than_the_model_are_reported(tmp_path):
    """Disturbed in every sweep alike (nothing inside the tables shows it): the whole-model
    measurement does, and the report says so."""
    x = torch.zeros(1, 3, 16, 16)
    gm, ctx, groups, layers = analysed(tiny(), x)
    scores = passes.importance.channel_scores(gm, groups, "bn")
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, max_ratio=0.9)  # noqa: E731
    slow = lambda module, xx: 1000 * MacTimer()(module, xx)  # noqa: E731
    _, rep = fit_latency(gm, ctx, groups, layers, x, 0.5, choose, cache=tmp_path, timer=slow,
                         measure=fake_measure(lambda k: 1.0), rounds=2)
    assert "add up to" in rep["warning"]
    _, rep = fit_latency(gm, ctx, groups, layers, x, 0.5, choose, cache=tmp_path / "ok", timer=MacTimer(),
                         measure=fake_measure(lambda k: 1.0), rounds=2)
    assert rep["warning"] is None


def test_depthwise_and_grouped_units_are_built_at_widths_pruning_can_give(tmp_path):
    """A MobileNet-style block (expand, depthwise, project) and a grouped conv: the depthwise
    unit's input width IS its output width (a 1-D table), a grouped one's widths are multiples
    of its groups; every grid point builds and runs, and a latency compile fits."""
    torch.manual_seed(0)
    from torch import nn
    from tests_helpers import randomise_bn
    model = randomise_bn(nn.Sequential(
        nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16),
        nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 5, 1))).eval()
    x = torch.zeros(1, 3, 16, 16)
    gm, ctx, groups, layers = analysed(model, x)
    built = []

    def timer(module, xx):
        out = module(xx)  # raises if a unit was built at widths that do not fit together
        built.append((xx.shape[1], out.shape[1]))
        return true_ms(module, xx)
    _, tables, _ = latency_model(gm, groups, layers, "torch-cpu", round_to=2, cache=tmp_path, timer=timer)
    dw = tables[1]
    assert dw.spec.depthwise and dw.w_in == [24] and len(dw.w_out) > 1
    grouped = tables[3]
    assert grouped.spec.hyper["groups"] == 4 and len(grouped.w_in) > 1 and len(grouped.w_out) > 1
    for a in grouped.w_in:
        for b in grouped.w_out:
            conv = grouped.spec.build(a, b)[0].layers[0]
            assert conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    assert len(built) >= sum(len(t.w_in) * len(t.w_out) for t in tables)
    scores = passes.importance.channel_scores(gm, groups, "bn")
    choose = lambda cost, budget: select_budget(groups, scores, cost, budget, max_ratio=0.8)  # noqa: E731
    keep, rep = fit_latency(gm, ctx, groups, layers, x, 0.6, choose, cache=tmp_path, timer=timer,
                            measure=fake_measure(lambda k: 1.0), rounds=2)
    assert rep["rounds"] and len(rep["layers"]) == 5


def test_compile_keeps_the_mac_plan_when_the_tables_misprice_the_layers(tmp_path):
    """Tables that say the first conv's channels are dear when the backend (here: MACs) says
    they are cheap: at the same measured latency the MAC-driven plan keeps more importance, and
    compile picks it, naming both in the report. With honest tables the latency plan stays."""
    import compiler
    from torch import nn
    from tests_helpers import randomise_bn
    torch.manual_seed(0)  # fine enough steps to land within 5 % of the target
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                       nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                       nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                       nn.Conv2d(64, 4, 1))).eval()
    x = torch.zeros(1, 3, 16, 16)
    misprice = lambda module, xx: true_ms(module, xx) + (0.2 * module.layers[0].out_channels  # noqa: E731
                                                         if xx.shape[1] == 3 else 0.0)

    def by_macs(models):  # the backend: latency proportional to MACs
        return {k: 3 * passes.count(m, x)[1] / 1e6 for k, m in models.items()}
    res = compiler.compile(model, x, target_latency=0.5, round_to=2, max_ratio=0.9, importance="l1",
                           latency_options={"cache": tmp_path, "timer": misprice, "rounds": 4, "measure": by_macs})
    rep = res.report["latency"]
    rivals = {r["selector"]: r for r in rep["rivals"]}
    assert set(rivals) == {"latency", "macs"}
    assert rep["selector"] == "macs" and rivals["macs"]["value_at_target"] > rivals["latency"]["value_at_target"]
    assert "macs-driven" in res.summary()
    honest = compiler.compile(model, x, target_latency=0.5, round_to=2, max_ratio=0.9, importance="l1",
                              latency_options={"cache": tmp_path / "honest", "timer": true_ms, "rounds": 4,
                                               "measure": by_macs})
    rep = honest.report["latency"]
    chosen = next(r for r in rep["rivals"] if r["selector"] == rep["selector"])
    assert all(chosen["value_at_target"] >= r["value_at_target"] for r in rep["rivals"]
               if abs(r["measured_ratio"] - 0.5) <= 0.025)


def test_rivals_are_compared_at_the_target_not_at_their_own_latency():
    """A plan 4 % over the target keeps more importance than one 4 % under it because it takes
    more time: along the measured slope, the faster plan is the better one at the target."""
    from compiler.latency_fit import _better, _rival, _slope
    slope = _slope([(0.40, 0.70), (0.48, 0.84), (0.52, 0.86), (0.60, 0.97)])
    slow = _rival("macs", 0.52, 0.86, 3, slope, 0.5)
    fast = _rival("latency", 0.48, 0.84, 1, slope, 0.5)
    assert slope > 1 and fast["value_at_target"] > slow["value_at_target"]
    assert _better(fast, slow, 0.5, 0.05) and not _better(slow, fast, 0.5, 0.05)
    off = _rival("macs", 0.60, 0.99, 3, slope, 0.5)  # outside the tolerance: never better than one inside
    assert not _better(off, fast, 0.5, 0.05) and _better(fast, off, 0.5, 0.05)
    assert _slope([(0.5, 0.8), (0.5, 0.9)]) == 0.0 and _slope([(0.4, 0.9), (0.6, 0.8)]) == 0.0
