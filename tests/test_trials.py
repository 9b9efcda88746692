"""Measured winners for repeated calls: the policy, its budget, its cache and its off switch."""

import pytest
import torch
from helpers import assert_close_rel
from reference import xcorr_reference

import xcorr
from xcorr.correlation.family import CORRELATION
from xcorr.planning import engine
from xcorr.planning import trials as _trials
from xcorr.planning.engine import ENGINE

pytestmark = pytest.mark.usefixtures("fresh_planner")


class Clock:
    """A fake ``perf_counter``: each option's run advances it by that option's cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _trials_with(costs, estimates, monkeypatch, grad=False):
    clock = Clock()
    monkeypatch.setattr(_trials.time, "perf_counter", clock)
    ran, recorded = [], []

    def make_run(option):
        def run(x, z):
            ran.append(option)
            clock.now += costs[option]
            return x * 1.0

        return run

    trials = _trials.Trials(list(estimates), estimates, make_run, grad, recorded.append)
    return trials, ran, recorded, clock


def test_the_fastest_option_is_kept_and_the_measuring_stays_within_budget(monkeypatch):
    # the pick takes 1 s; "b" is faster; "c" is estimated far too slow to be worth trying
    costs = {"a": 1.0, "b": 0.5, "c": 10.0}
    trials, ran, recorded, _ = _trials_with(costs, {"a": 1.0, "b": 1.2, "c": 30.0}, monkeypatch)
    x = torch.ones(1)
    for _ in range(20):
        trials(x, x)
    assert ran[: _trials.SETTLE_CALLS] == ["a"] * _trials.SETTLE_CALLS
    assert ran.count("b") >= _trials.TRIAL_CALLS and "c" not in ran
    assert recorded == ["b"] and trials.winner == "b"
    assert ran[-5:] == ["b"] * 5
    assert trials.budget == pytest.approx(_trials.BUDGET_FRACTION * _trials.BUDGET_CALLS * 1.0)


def test_only_options_estimated_near_the_pick_are_tried(monkeypatch):
    # "c" fits the budget by its estimate (4x the pick's: 3 s extra of a 5 s budget) but is not
    # near: a model that errs on it could cost many budgets in one call
    costs = {"a": 1.0, "b": 0.9, "c": 40.0}
    trials, ran, recorded, _ = _trials_with(costs, {"a": 1.0, "b": 2.9, "c": 4.0}, monkeypatch)
    x = torch.ones(1)
    for _ in range(20):
        trials(x, x)
    assert trials.options == ["a", "b"] and "c" not in ran
    assert recorded == ["b"]


def test_an_option_slower_than_estimated_costs_at_most_one_call_beyond_the_budget(monkeypatch):
    # "c" is estimated as fast as the pick but takes 8 s: one call shows it, the second is skipped
    costs = {"a": 1.0, "c": 8.0}
    trials, ran, recorded, _ = _trials_with(costs, {"a": 1.0, "c": 1.0}, monkeypatch)
    x = torch.ones(1)
    for _ in range(10):
        trials(x, x)
    assert ran.count("c") == 1 and recorded == ["a"]
    assert trials.spent == pytest.approx(7.0)
    assert trials.spent <= trials.budget + costs["c"]
    assert trials.timings == {"a": 1.0, "c": 8.0}


def test_total_measuring_cost_is_under_five_percent_of_a_hundred_calls(monkeypatch):
    costs = {"a": 1.0, "b": 1.4, "c": 1.6, "d": 1.2}
    trials, ran, _, _ = _trials_with(costs, {"a": 1.0, "b": 1.3, "c": 1.5, "d": 1.1}, monkeypatch)
    x = torch.ones(1)
    for _ in range(100):
        trials(x, x)
    extra = sum(costs[o] for o in ran) - 100 * costs["a"]
    assert 0 < extra <= _trials.BUDGET_FRACTION * 100 * costs["a"]
    assert trials.winner == "a"


def test_repeated_training_calls_measure_forward_and_backward_and_save_the_winner(monkeypatch, tmp_path):
    x = torch.randn(2, 3, 15, 15, dtype=torch.float64, requires_grad=True)
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    ref = xcorr_reference(x, z)
    want = torch.autograd.grad(ref.sum(), (x, z))
    spec = xcorr.correlation.spec.check_xcorr(x, z, "naive", 0, 1, 1)
    pick = ENGINE.decide(spec, True)
    # a budget that every option fits (the budget itself is tested above, on a fake clock)
    monkeypatch.setattr(_trials, "BUDGET_FRACTION", 100.0)
    noted = []
    real_note = _trials.Trials._note
    monkeypatch.setattr(_trials.Trials, "_note", lambda self, o, s: noted.append(o) or real_note(self, o, s))
    for _ in range(20):
        out = xcorr.xcorr(x, z)
        got = torch.autograd.grad(out.sum(), (x, z))
        assert_close_rel(out, ref)  # the same values whichever option runs
        for a, b in zip(got, want):
            assert_close_rel(a, b)
    assert ENGINE.is_measured(CORRELATION.key(spec, True))
    # the pick settled, then the others were timed (forward and backward: noted when the backward ended)
    assert noted[: _trials.SETTLE_CALLS] == [pick] * _trials.SETTLE_CALLS
    costs = ENGINE.estimate(spec, True)
    near = {o for o in CORRELATION.options(spec, True) if costs[o] <= _trials.NEAR_ESTIMATE * costs[pick]}
    assert set(noted) == near
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    xcorr.clear_cache()
    assert xcorr.load_tuning(path) >= 1 and ENGINE.is_measured(CORRELATION.key(spec, True))
    assert "loaded from" in ENGINE.tuning_source


def test_calls_without_a_backward_end_the_trials_with_the_pick():
    x = torch.randn(2, 3, 15, 15, requires_grad=True)
    z = torch.randn(1, 3, 4, 4)
    spec = xcorr.correlation.spec.check_xcorr(x, z, "naive", 0, 1, 1)
    pick = ENGINE.decide(spec, True)
    for _ in range(_trials.SETTLE_CALLS + _trials.PENDING_CALLS + 3):
        xcorr.xcorr(x, z)  # grad mode on, but nobody calls backward
    assert ENGINE.is_measured(CORRELATION.key(spec, True))
    assert ENGINE.measured_winners()[CORRELATION.key(spec, True)] == pick


@pytest.mark.parametrize("setting", [False, True])
def test_autotune_settings_turn_the_trials_off(setting, monkeypatch):
    made = []
    monkeypatch.setattr(engine, "Trials", lambda *a, **k: made.append(a) or pytest.fail("trials made"))
    xcorr.set_autotune(setting)
    x, z = torch.randn(2, 3, 12, 12), torch.randn(1, 3, 4, 4)
    for _ in range(6):
        xcorr.xcorr(x, z)
    assert made == []


def test_trials_are_made_once_per_signature_by_default(monkeypatch):
    made = []
    real = engine.Trials
    monkeypatch.setattr(engine, "Trials", lambda *a, **k: made.append(a[0]) or real(*a, **k))
    x, z = torch.randn(2, 3, 12, 12), torch.randn(1, 3, 4, 4)
    pick = ENGINE.decide(xcorr.correlation.spec.check_xcorr(x, z, "naive", 0, 1, 1))
    for _ in range(30):
        xcorr.xcorr(x, z)
    assert len(made) == 1 and made[0][0] == pick
    xcorr.xcorr(x, z, method="direct")  # a forced method is not tried against others
    assert len(made) == 1
