import numpy as np
import pytest
import torch
from helpers import (
    GEOMETRIES,
    LAYOUTS,
    METHODS,
    MODES,
    TOL,
    assert_close_rel,
    direct_float32_tol,
    make,
    relayout,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import xcorr_reference, xcorr_reference_grads

import xcorr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(method, mode, geometry, dtype, device):
    B, Bz, C, K, H, W, h, w, padding, stride, dilation = geometry
    x, z = make(B, Bz, C, K, H, W, h, w, mode, dtype, device)
    out = xcorr.xcorr(x, z, mode, padding=padding, stride=stride, dilation=dilation, method=method)
    expected = xcorr_reference(x, z, mode, padding, stride, dilation)
    assert out.dtype == dtype and out.device == x.device
    assert_close_rel(out, expected, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_inputs(method, mode, layout, device):
    x, z = make(4, 2, 3, 2, 12, 12, 4, 4, mode, device=device)
    x, z = relayout(x, z, layout)
    before = (x.clone(), z.clone())
    out = xcorr.xcorr(x, z, mode, padding=1, method=method)
    assert_close_rel(out, xcorr_reference(x, z, mode, padding=1))
    torch.testing.assert_close(x, before[0], rtol=0, atol=0)
    torch.testing.assert_close(z, before[1], rtol=0, atol=0)


@pytest.mark.parametrize("Bz", [0, 1, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_batch_zero(method, mode, Bz, device):
    x, z = make(0, Bz, 3, 2, 9, 8, 3, 2, mode, device=device)
    x.requires_grad_(True)
    z.requires_grad_(True)
    out = xcorr.xcorr(x, z, mode, padding=1, method=method)
    K = {"naive": 1, "depthwise": 3, "upchannel": 2}[mode]
    assert out.shape == (0, K, 9, 9)
    out.sum().backward()
    assert x.grad.shape == x.shape and z.grad.shape == z.shape
    assert z.grad.abs().sum() == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["direct", "fft", "gather"])
def test_gradcheck(method, mode):
    x, z = make(4, 2, 2, 2, 7, 8, 3, 2, mode)
    x.requires_grad_(True)
    z.requires_grad_(True)

    def f(x, z):
        return xcorr.xcorr(x, z, mode, padding=(1, 0), stride=(1, 2), dilation=(2, 1), method=method)

    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_matches_reference_autograd(mode):
    # A random output weight, so that every output gradient differs and a misplaced one shows.
    x, z = make(3, 3, 2, 2, 9, 9, 3, 3, mode)
    kw = dict(padding=(1, 0), stride=(1, 2), dilation=(2, 1))
    weight = torch.randn(xcorr_reference(x, z, mode, **kw).shape, generator=torch.Generator().manual_seed(1))
    expected = xcorr_reference_grads(x, z, mode, weight, **kw)
    for method in ("direct", "fft", "gather"):
        xx, zz = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
        (xcorr.xcorr(xx, zz, mode, method=method, **kw) * weight).sum().backward()
        assert_close_rel(xx.grad, expected[0])
        assert_close_rel(zz.grad, expected[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_returns_input_dtype(method, dtype):
    x, z = make(2, 1, 3, 2, 10, 10, 3, 3, "upchannel", dtype)
    out = xcorr.xcorr(x, z, "upchannel", method=method)
    assert out.dtype == dtype
    assert_close_rel(out, xcorr_reference(x, z, "upchannel"), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_gradients(method, mode, dtype):
    x, z = make(4, 2, 8, 2, 11, 10, 3, 4, mode, torch.float32)
    grads = {}
    for kind in (torch.float32, dtype):
        xx, zz = x.to(kind).detach().requires_grad_(True), z.to(kind).detach().requires_grad_(True)
        xcorr.xcorr(xx, zz, mode, padding=1, method=method).sum().backward()
        assert xx.grad.dtype == zz.grad.dtype == kind
        grads[kind] = (xx.grad, zz.grad)
    for got, want in zip(grads[dtype], grads[torch.float32]):
        # The inputs themselves are rounded to dtype, so allow a few roundings.
        assert ((got.float() - want).abs().max() / want.abs().max()).item() < 10 * torch.finfo(dtype).eps


PROBES = [(0, 0), (64, 31), (128, 128), (5, 127)]


# The seed's full-size examples: 255x255 searches and 127x127 templates of 256 channels. A
# training batch of 2 takes the path of any larger one (per-item templates, FFT, one item and 15
# channels a chunk) in a third of a batch of 8's time (20 s against 58 s for the two modes).
@pytest.mark.parametrize(
    "B, mode, shape",
    [
        (1, "naive", (1, 1, 129, 129)),  # SiamFC tracking: F.conv2d(x, z)
        (2, "naive", (2, 1, 129, 129)),  # SiamFC training: groups=B
        (1, "depthwise", (1, 256, 129, 129)),  # SiamRPN++ tracking: groups=C
        (2, "depthwise", (2, 256, 129, 129)),  # SiamRPN++ training: groups=B*C
    ],
)
def test_seed_examples(B, mode, shape):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(B, 256, 255, 255, generator=g)
    z = torch.rand(B, 256, 127, 127, generator=g)
    out = xcorr.xcorr(x, z, mode)
    assert out.shape == shape
    got = torch.stack([out[:, :, i, j] for i, j in PROBES], dim=-1)
    assert_close_rel(got, xcorr_reference(x, z, mode, positions=PROBES), torch.float32)


# Large templates of few channels, where a float32 running sum is longest: "auto" keeps the
# promised 2e-6, and "direct" asked for by name stays within its own, looser bound.
LARGE_TEMPLATES = [(1, 48), (1, 96), (2, 64)]  # (C, side)


def _large_template_cases():
    for method in METHODS:
        for mode in MODES:
            for C, side in LARGE_TEMPLATES:
                if method == "gather" and mode == "depthwise":
                    continue  # one product map per tap, for export
                yield method, mode, C, side


@pytest.mark.parametrize("method, mode, C, side", list(_large_template_cases()))
def test_float32_error_with_large_templates(method, mode, C, side):
    g = torch.Generator().manual_seed(side)
    x = torch.rand(1, C, side + 7, side + 9, generator=g, dtype=torch.float64)
    z = torch.rand(1, 2 * C if mode == "upchannel" else C, side, side, generator=g, dtype=torch.float64)
    out = xcorr.xcorr(x.float(), z.float(), mode, method=method)
    # One template: upchannel's dense kernel sums all C*h*w products of an output in one run.
    terms = C * side * side if mode == "upchannel" else side * side
    tol = direct_float32_tol(terms) if method == "direct" else None
    assert_close_rel(out, xcorr_reference(x, z, mode), torch.float32, tol)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    mode=st.sampled_from(MODES),
    method=st.sampled_from(METHODS),
)
def test_property_random_shapes(data, mode, method):
    draw = data.draw
    Bz = draw(st.integers(1, 3))
    B = Bz * draw(st.integers(1, 3))
    C, K = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, dh * (h - 1) + 1 - 2 * ph), 20))
    W = draw(st.integers(max(1, dw * (w - 1) + 1 - 2 * pw), 20))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    x, z = make(B, Bz, C, K, H, W, h, w, mode, dtype, seed=draw(st.integers(0, 1000)))
    kw = dict(padding=(ph, pw), stride=(sh, sw), dilation=(dh, dw))
    out = xcorr.xcorr(x, z, mode, method=method, **kw)
    expected = xcorr_reference(x, z, mode, **kw)
    if expected.numel() and expected.abs().max() == 0:
        # Every tap fell on padding: no output to be relative to, so bound the rounding of
        # inexact methods (FFT) by the largest possible term sum instead.
        bound = TOL[dtype] * x.abs().max() * z.abs().max() * z[0].numel()
        assert out.abs().max() <= bound
    else:
        assert_close_rel(out, expected, dtype)


def test_docstring_example():
    x, z = torch.ones(2, 3, 8, 8), torch.ones(1, 3, 3, 3)
    assert xcorr.xcorr(x, z).shape == (2, 1, 6, 6)
    assert xcorr.xcorr(x, z, "depthwise")[0, :, 0, 0].tolist() == [9.0, 9.0, 9.0]


X, Z = torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 3, 3)
# One row a case: (call, error, message regex).
# fmt: off
BAD_INPUTS = [
    (lambda: xcorr.xcorr(np.zeros((2, 3, 8, 8)), Z), TypeError, r"x must be a torch\.Tensor.*numpy\.ndarray"),
    (lambda: xcorr.xcorr(X, [1, 2]), TypeError, r"z must be a torch\.Tensor.*list"),
    (lambda: xcorr.xcorr(X[0], Z), ValueError, r"x must be 4-D \(B, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda: xcorr.xcorr(X, Z[0, 0]), ValueError, r"z must be 4-D .*got shape \(3, 3\)"),
    (lambda: xcorr.xcorr(X.long(), Z.long()), TypeError, r"x must have a floating-point dtype, got torch\.int64"),
    (lambda: xcorr.xcorr(X.bool(), Z), TypeError, r"x must have a floating-point dtype, got torch\.bool"),
    (lambda: xcorr.xcorr(X, Z.to(torch.complex64)), TypeError, r"z must have a floating-point dtype, got torch\.complex64"),
    (lambda: xcorr.xcorr(X, Z.double()), TypeError, r"same dtype, got x torch\.float32 and z torch\.float64"),
    (lambda: xcorr.xcorr(X, Z.to("meta")), ValueError, r"same device, got x on cpu and z on meta"),
    (lambda: xcorr.xcorr(X, torch.zeros(1, 4, 3, 3)), ValueError, r"mode 'naive' needs z to have as many channels as x.*C=3.*Cz=4"),
    (lambda: xcorr.xcorr(X, torch.zeros(1, 2, 3, 3), "depthwise"), ValueError, r"mode 'depthwise' needs z.*Cz=2"),
    (lambda: xcorr.xcorr(X, torch.zeros(1, 7, 3, 3), "upchannel"), ValueError, r"'upchannel' needs z's channels to be a positive multiple K\*C.*Cz=7"),
    (lambda: xcorr.xcorr(torch.zeros(3, 3, 8, 8), torch.zeros(2, 3, 3, 3)), ValueError, r"x's batch must be a multiple of z's batch.*B=3.*Bz=2"),
    (lambda: xcorr.xcorr(X, torch.zeros(0, 3, 3, 3)), ValueError, r"z has no templates"),
    (lambda: xcorr.xcorr(X, torch.zeros(1, 3, 9, 3)), ValueError, r"template must fit in the padded search.*spans 9x3.*is 8x8$"),
    (lambda: xcorr.xcorr(Z, X[:1]), ValueError, r"z \(1, 3, 8, 8\) with dilation \(1, 1\) spans 8x8, but x \(1, 3, 3, 3\) .* is 3x3; z \(template\) is larger than x \(search\): xcorr takes \(x, z\) = \(search, template\); the arguments may be swapped"),
    (lambda: xcorr.xcorr(X, Z, dilation=4), ValueError, r"template must fit.*dilation \(4, 4\) spans 9x9"),
    (lambda: xcorr.xcorr(X, torch.zeros(1, 3, 0, 3)), ValueError, r"non-empty template"),
    (lambda: xcorr.xcorr(X, Z, "pixel"), ValueError, r"unknown mode 'pixel'; valid values are 'naive', 'depthwise', 'upchannel'"),
    (lambda: xcorr.xcorr(X, Z, method="winograd"), ValueError, r"unknown method 'winograd'; valid values are 'auto', 'direct', 'fft'"),
    (lambda: xcorr.xcorr(X, Z, mode=1), TypeError, r"mode must be a string"),
    (lambda: xcorr.xcorr(X, Z, padding=-1), ValueError, r"padding must be non-negative, got -1"),
    (lambda: xcorr.xcorr(X, Z, padding=(0, -2)), ValueError, r"padding must be non-negative, got \(0, -2\)"),
    (lambda: xcorr.xcorr(X, Z, stride=0), ValueError, r"stride must be at least 1, got 0"),
    (lambda: xcorr.xcorr(X, Z, dilation=(1, 0)), ValueError, r"dilation must be at least 1, got \(1, 0\)"),
    (lambda: xcorr.xcorr(X, Z, stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1\.5"),
    (lambda: xcorr.xcorr(X, Z, padding=(1, 2, 3)), TypeError, r"padding must be an int or a pair of ints"),
    (lambda: xcorr.choose_method(X[:, :0], Z[:, :0]), ValueError, r"x must have at least one channel, got shape \(2, 0, 8, 8\)"),
]
# Zero channels, for every method and mode: our error, before a backend divides by the channels.
BAD_INPUTS += [
    (lambda mode=mode, method=method: xcorr.xcorr(X[:, :0], Z[:, :0], mode, method=method), ValueError, r"^x must have at least one channel, got shape \(2, 0, 8, 8\)$")
    for mode in MODES for method in METHODS
]
BAD_INPUTS += [
    (lambda mode=mode, method=method: xcorr.xcorr(X, Z[:, :0], mode, method=method), ValueError, r"^z must have at least one channel, got shape \(1, 0, 3, 3\)$")
    for mode in MODES for method in METHODS
]
# fmt: on


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("mode", ["naive", "upchannel"])
def test_fft_on_large_maps_in_pieces_equals_direct(mode):
    # Maps of more than a MiB of spectrum: the template spectra are transformed map by map and
    # the outputs inverted in pieces of maps; the result and both gradients as direct's.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5 if mode == "naive" else 1, 2, 420, 700, generator=g, dtype=torch.float64)
    z = torch.randn(5 if mode == "naive" else 1, 2 * (5 if mode == "upchannel" else 1), 9, 13, generator=g)
    z = z.double()
    out = {}
    for method in ("fft", "direct"):
        xi, zi = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
        y = xcorr.xcorr(xi, zi, mode=mode, method=method)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        out[method] = (y, xi.grad, zi.grad)
    for a, b in zip(out["fft"], out["direct"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-8)
