import pytest
import torch
from helpers import GEOMETRIES, METHODS, MODES, assert_close_rel, make
from reference import xcorr_reference

import xcorr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES[:5])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["auto", "direct", "fft", "gather"])
def test_plan_equals_xcorr(method, mode, geometry, dtype, device):
    B, Bz, C, K, H, W, h, w, padding, stride, dilation = geometry
    x, z = make(B, Bz, C, K, H, W, h, w, mode, dtype, device)
    kw = dict(padding=padding, stride=stride, dilation=dilation)
    p = xcorr.plan(z, x.shape, mode, method=method, **kw)
    out = p(x)
    expected = xcorr.xcorr(x, z, mode, method=p.method, **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert_close_rel(out, xcorr_reference(x, z, mode, **kw), dtype)


@pytest.mark.parametrize("method", ["direct", "fft", "gather"])
def test_plan_serves_new_frames_and_batches(method):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 5, 5, generator=gen, dtype=torch.float64)
    p = xcorr.plan(z, (3, 4, 21, 19), "depthwise", padding=2, method=method)
    for B in (3, 1, 0, 5):  # one template serves any number of search items
        x = torch.randn(B, 4, 21, 19, generator=gen, dtype=torch.float64)
        out = p(x)
        assert out.shape == (B, 4, 21, 19)
        assert_close_rel(out, xcorr_reference(x, z, "depthwise", padding=2))


def test_plan_reads_the_template_once_and_keeps_gradients():
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    p = xcorr.plan(z, x.shape, method="fft")
    p(x).square().sum().backward()
    gx, gz = x.grad.clone(), z.grad.clone()
    x.grad = z.grad = None
    xcorr.xcorr(x, z, method="fft").square().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gz, z.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_plan_half_precision(dtype):
    x, z = make(2, 1, 3, 2, 10, 10, 3, 3, "upchannel", dtype)
    p = xcorr.plan(z, x.shape, "upchannel")
    out = p(x)
    assert out.dtype == dtype
    assert_close_rel(out, xcorr_reference(x, z, "upchannel"), dtype)


def test_plan_repr_shows_the_choice():
    p = xcorr.plan(torch.zeros(1, 3, 3, 3), (2, 3, 8, 8), padding=1, method="fft")
    assert repr(p) == "Plan(z=(1, 3, 3, 3), search_shape=(2, 3, 8, 8), mode='naive', padding=(1, 1), method='fft')"


Z = torch.zeros(1, 3, 3, 3)
P = xcorr.plan(Z, (2, 3, 8, 8))
BAD_INPUTS = [
    (
        lambda: xcorr.plan(Z, (2, 3, 8)),
        TypeError,
        r"search_shape must be 4 non-negative ints \(B, C, H, W\), got \(2, 3, 8\)",
    ),
    (lambda: xcorr.plan(Z, "2x3x8x8"), TypeError, r"search_shape must be 4 non-negative ints"),
    (lambda: xcorr.plan([1], (2, 3, 8, 8)), TypeError, r"z must be a torch\.Tensor"),
    (lambda: xcorr.plan(Z, (2, 4, 8, 8)), ValueError, r"mode 'naive' needs z to have as many channels as x"),
    (lambda: xcorr.plan(Z, (2, 3, 2, 8)), ValueError, r"template must fit in the padded search"),
    (
        lambda: xcorr.plan(Z, (2, 3, 8, 8), method="winograd"),
        ValueError,
        r"unknown method 'winograd'; valid values are 'auto', 'direct', 'fft'",
    ),
    (
        lambda: P(torch.zeros(2, 3, 9, 8)),
        ValueError,
        r"x must have the planned \(C, H, W\) = \(3, 8, 8\), got shape \(2, 3, 9, 8\)",
    ),
    (lambda: P(torch.zeros(3, 8, 8)), ValueError, r"x must be 4-D"),
    (lambda: P(torch.zeros(2, 3, 8, 8, dtype=torch.float64)), TypeError, r"same dtype"),
]
# Zero channels, for every method and mode: our error when the plan is made.
BAD_INPUTS += [
    (
        lambda mode=mode, method=method: xcorr.plan(Z[:, :0], (2, 0, 8, 8), mode, method=method),
        ValueError,
        r"^search_shape must have at least one channel, got shape \(2, 0, 8, 8\)$",
    )
    for mode in MODES
    for method in METHODS
]
BAD_INPUTS += [
    (
        lambda mode=mode, method=method: xcorr.plan(Z[:, :0], (2, 3, 8, 8), mode, method=method),
        ValueError,
        r"^z must have at least one channel, got shape \(1, 0, 3, 3\)$",
    )
    for mode in MODES
    for method in METHODS
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_plan_validates_each_kind_of_search_once(monkeypatch):
    from xcorr.correlation import plans

    z = torch.randn(1, 3, 3, 3)
    p = xcorr.plan(z, (2, 3, 8, 8), method="gather")
    checks = []
    real = plans.check_planned_search
    monkeypatch.setattr(plans, "check_planned_search", lambda *a: checks.append(a[0].shape) or real(*a))
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        assert_close_rel(p(x), xcorr_reference(x, z))
    p(torch.randn(4, 3, 8, 8))  # a new batch: validated once more
    p(torch.randn(4, 3, 8, 8))
    assert checks == [(2, 3, 8, 8), (4, 3, 8, 8)]
    with pytest.raises(TypeError, match="same dtype"):  # a new dtype is a new kind of search
        p(x.double())


def test_a_plan_keeps_its_method_when_the_planner_changes():
    p = xcorr.plan(torch.randn(1, 3, 3, 3), (2, 3, 8, 8), method="auto")
    method = p.method
    xcorr.clear_cache()
    xcorr.set_autotune(False)
    try:
        assert p.method == method and p(torch.randn(2, 3, 8, 8)).shape == (2, 1, 6, 6)
    finally:
        xcorr.set_autotune(None)


def test_empty_batch_through_a_plan_keeps_the_template_in_the_graph():
    z = torch.randn(1, 3, 3, 3, requires_grad=True)
    p = xcorr.plan(z, (0, 3, 8, 8), method="fft")
    out = p(torch.randn(0, 3, 8, 8))
    assert out.shape == (0, 1, 6, 6)
    out.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
