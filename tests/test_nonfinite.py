"""Non-finite inputs: every method has the footprint of the direct definition (an output is
non-finite exactly when its window holds a NaN or an infinity)."""

import itertools

import pytest
import torch
from helpers import MODES

import xcorr

GEOMETRIES = [(0, 1, 1), (1, 2, 1), (2, 1, 2)]  # (padding, stride, dilation)
VALUES = [float("nan"), float("inf"), -float("inf")]


def _case(mode, value, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    C = 3
    x = torch.randn(2, C, 16, 15, generator=g, dtype=dtype)
    z = torch.randn(2, 2 * C if mode == "upchannel" else C, 3, 4, generator=g, dtype=dtype)
    x[0, 1, 5, 7] = value  # one in the middle
    x[1, 2, 0, 0] = value  # one in a corner, reached by few windows
    return x, z


@pytest.mark.parametrize(
    "method, mode, geometry, value", list(itertools.product(["fft", "gather", "auto"], MODES, GEOMETRIES, VALUES))
)
def test_footprint_is_that_of_direct_summation(method, mode, geometry, value):
    padding, stride, dilation = geometry
    x, z = _case(mode, value)
    kw = dict(padding=padding, stride=stride, dilation=dilation)
    expected = xcorr.xcorr(x, z, mode, method="direct", **kw)
    out = xcorr.xcorr(x, z, mode, method=method, **kw)
    finite = torch.isfinite(expected)
    assert not finite.all() and finite.any()
    assert torch.equal(torch.isfinite(out), finite)
    torch.testing.assert_close(out[finite], expected[finite], rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", ["naive", "depthwise"])
def test_footprint_through_plans_and_with_gradients(mode):
    x, z = _case(mode, float("nan"), torch.float32)
    expected = torch.isfinite(xcorr.xcorr(x, z, mode, method="direct"))
    assert torch.equal(torch.isfinite(xcorr.plan(z, x.shape, mode, method="fft")(x)), expected)
    xg, zg = x.clone().requires_grad_(), z.clone().requires_grad_()
    out = xcorr.xcorr(xg, zg, mode, method="fft")
    assert torch.equal(torch.isfinite(out), expected)
    out[expected].sum().backward()  # the finite outputs' gradients stay finite where no NaN entered
    assert torch.isfinite(zg.grad).all()
    assert torch.isfinite(xg.grad[torch.isfinite(x)]).all()


def test_non_finite_template_spoils_only_what_direct_spoils():
    x, z = _case("depthwise", 0.0)
    z[1, 2, 1, 1] = float("nan")  # template 1, channel 2: that channel of its items, everywhere
    for method in ("fft", "direct"):
        out = xcorr.xcorr(x, z, "depthwise", method=method)
        assert torch.isnan(out[1, 2]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[1, :2]).all()


def test_inputs_are_not_modified():
    x, z = _case("naive", float("nan"))
    before = x.clone()
    xcorr.xcorr(x, z, method="fft")
    assert torch.equal(torch.isnan(x), torch.isnan(before)) and torch.equal(x.nan_to_num(), before.nan_to_num())
