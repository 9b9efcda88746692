"""Per-pass methods: the gradients as correlations of their own, each pass on its own method."""

from dataclasses import replace

import pytest
import torch
from helpers import assert_close_rel
from reference import xcorr_reference

import xcorr
from xcorr.correlation import adjoint as _adjoint
from xcorr.correlation import api as ops
from xcorr.correlation import family
from xcorr.correlation import passes as _passes
from xcorr.correlation.family import CORRELATION, PER_PASS, pass_problems
from xcorr.correlation.spec import check_xcorr
from xcorr.planning.engine import ENGINE

GEOMETRIES = [(0, 1, 1), (1, 2, 1), (2, 1, 2), (1, 3, 2)]  # padding, stride, dilation
BATCHES = [(1, 1), (4, 2), (3, 3), (4, 1)]  # B, Bz


pytestmark = pytest.mark.usefixtures("fresh_planner")


def _inputs(mode, B, Bz, dtype=torch.float64, C=3, size=(13, 11), template=(3, 4)):
    gen = torch.Generator().manual_seed(B * 10 + Bz)
    Cz = 2 * C if mode == "upchannel" else C
    x = torch.randn(B, C, *size, generator=gen, dtype=dtype, requires_grad=True)
    z = torch.randn(Bz, Cz, *template, generator=gen, dtype=dtype, requires_grad=True)
    return x, z


#: (forward, search gradient, template gradient): each method on each pass at least once (gather
#: computes depthwise too, though the planner does not offer it there).
MIXES = [("fft", "direct", "gather"), ("direct", "fft", "direct"), ("gather", "gather", "fft")]


@pytest.mark.parametrize("mode", ["naive", "depthwise", "upchannel"])
@pytest.mark.parametrize("B, Bz", BATCHES)
@pytest.mark.parametrize("padding, stride, dilation", GEOMETRIES)
def test_every_mix_of_methods_gives_the_reference_gradients(mode, B, Bz, padding, stride, dilation):
    x, z = _inputs(mode, B, Bz)
    spec = check_xcorr(x, z, mode, padding, stride, dilation)
    ref = xcorr_reference(x, z, mode, padding, stride, dilation)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (x, z), g)
    for mix in MIXES:
        passes = _passes.Passes(*mix)
        out = _passes.run(x, z, spec, passes)
        got = torch.autograd.grad(out, (x, z), g)
        assert_close_rel(out, ref)
        for a, b in zip(got, want):
            assert_close_rel(a, b)


@pytest.mark.parametrize("mode", ["naive", "depthwise", "upchannel"])
def test_gradient_problems_have_the_shapes_of_the_gradients(mode):
    x, z = _inputs(mode, 4, 2)
    spec = check_xcorr(x, z, mode, (1, 2), (2, 1), (1, 2))
    search, template = _adjoint.search_problem(spec), _adjoint.template_problem(spec)
    # the search problem's output covers the padded search; the template problem's the template
    assert search.out_size[0] <= spec.padded_search[0] and search.out_size[1] <= spec.padded_search[1]
    assert search.out_shape[:2] == (spec.batch, spec.channels)
    assert template.out_size[0] >= spec.z_shape[2] and template.out_size[1] >= spec.z_shape[3]
    assert template.batch == spec.templates * spec.channels


def test_mixed_passes_pass_gradcheck_and_a_second_derivative():
    x, z = _inputs("depthwise", 2, 1, size=(7, 6), template=(3, 2))
    spec = check_xcorr(x, z, "depthwise", 1, (1, 2), 1)
    passes = _passes.Passes("direct", "fft", "gather")
    assert torch.autograd.gradcheck(lambda a, b: _passes.run(a, b, spec, passes), (x, z), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda a, b: _passes.run(a, b, spec, passes), (x, z), fast_mode=True)


def test_only_the_needed_gradient_is_computed(monkeypatch):
    x, z = _inputs("naive", 2, 1)
    z = z.detach()
    spec = check_xcorr(x, z, "naive", 0, 1, 1)
    monkeypatch.setattr(_passes, "template_gradient", lambda *a: pytest.fail("template gradient computed"))
    out = _passes.run(x, z, spec, _passes.Passes("direct", "fft", "fft"))
    (gx,) = torch.autograd.grad(out.sum(), (x,))
    assert_close_rel(gx, torch.autograd.grad(xcorr_reference(x, z).sum(), (x,))[0])


def test_per_pass_is_an_option_only_with_a_backward_pass_and_outside_tracing(monkeypatch):
    spec = check_xcorr(torch.empty(2, 4, 20, 20), torch.empty(1, 4, 5, 5), "depthwise", 0, 1, 1)
    assert PER_PASS not in CORRELATION.options(spec, False)
    assert CORRELATION.options(spec, True)[-1] == PER_PASS
    assert PER_PASS in ENGINE.estimate(spec, True) and PER_PASS not in ENGINE.estimate(spec)
    assert PER_PASS not in CORRELATION.options(replace(spec, x_shape=(0, 4, 20, 20)), True)
    monkeypatch.setattr(family, "tracing", lambda: True)
    assert PER_PASS not in CORRELATION.options(spec, True)


def test_the_planner_mixes_methods_when_the_model_says_so(monkeypatch):
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    spec = check_xcorr(x, z, "depthwise", 0, 1, 1)
    costs = {"direct": 1.0, "fft": 5.0}
    search, template = pass_problems(spec)
    cheap = {template: {"direct": 3.0, "fft": 0.1, "gather": 9.0}, search: {"direct": 0.5, "fft": 2.0}}

    def estimate(s, grad=False, constants=None):
        if s == spec:
            return {**costs, "direct": 9.0, "fft": 20.0} if grad else costs
        return cheap[s]

    monkeypatch.setattr(CORRELATION, "method_estimates", lambda s, grad, c: estimate(s, grad))
    xcorr.set_autotune(False)
    assert CORRELATION.passes(ENGINE.decide(spec, True), spec) == _passes.Passes("direct", "direct", "fft")
    assert CORRELATION.passes(ENGINE.decide(spec, False), spec) == _passes.Passes("direct", "direct", "direct")
    ran = []
    real = _passes.run
    monkeypatch.setattr(_passes, "run", lambda *a: ran.append(a[-1]) or real(*a))
    out = xcorr.xcorr(x, z, "depthwise")
    ref = xcorr_reference(x, z, "depthwise")
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (x, z), g), torch.autograd.grad(ref, (x, z), g)):
        assert_close_rel(a, b)
    assert ran == [_passes.Passes("direct", "direct", "fft")]
    choice = xcorr.choose_method(x, z, "depthwise")
    assert choice == "direct" and choice.passes == _passes.Passes("direct", "direct", "fft")
    assert str(choice.passes) == "direct/direct/fft"


def test_choose_method_measures_and_reports_every_pass():
    x = torch.randn(2, 3, 14, 14, requires_grad=True)
    z = torch.randn(1, 3, 5, 5, requires_grad=True)
    measured = xcorr.choose_method(x, z, "depthwise", measure=True)
    assert set(measured.pass_timings) == {"forward", "search", "template"}
    assert set(measured.timings) == {"direct", "fft", PER_PASS}
    winners = {name: min(t, key=t.get) for name, t in measured.pass_timings.items()}
    best = min(measured.timings, key=measured.timings.get)
    if best == PER_PASS:
        assert measured.passes == _passes.Passes(winners["forward"], winners["search"], winners["template"])
    else:
        assert measured.passes == _passes.Passes(best, best, best)
    assert measured.method == measured.passes.forward
    # the winners serve auto from now on, without the model
    assert xcorr.choose_method(x, z, "depthwise").passes == measured.passes
    assert "passes=" in repr(measured)


def test_template_plans_keep_one_method(monkeypatch):
    monkeypatch.setattr(ENGINE, "decide", lambda spec, grad=False: PER_PASS)
    monkeypatch.setattr(CORRELATION, "pass_methods", lambda spec: _passes.Passes("gather", "fft", "fft"))
    x, z = torch.randn(2, 3, 12, 12), torch.randn(1, 3, 4, 4, requires_grad=True)
    assert xcorr.plan(z, x.shape).method == "gather"
    assert ops.resolve(check_xcorr(x, z, "naive", 0, 1, 1), "auto", True) == "gather"
