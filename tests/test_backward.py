"""The hand-written backward passes: direct (forward correlations) and FFT (saved spectra)."""
import pytest
import torch
from conftest import assert_close_rel
from reference import xcorr_reference
from test_ops import MODES, make

import xcorr
from xcorr.backends import fft

# (B, Bz, C, K, H, W, h, w, padding, stride, dilation)
GEOMETRIES = [
    (2, 2, 2, 2, 7, 8, 3, 2, (1, 0), (1, 2), (2, 1)),
    (3, 1, 2, 3, 9, 7, 2, 3, 2, 3, 1),  # one template shared by three items
    (1, 1, 3, 1, 6, 6, 6, 6, 0, 1, 1),  # template as large as the search
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_gradcheck(method, mode, geometry):
    B, Bz, C, K, H, W, h, w, padding, stride, dilation = geometry
    x, z = make(B, Bz, C, K, H, W, h, w, mode)
    x.requires_grad_(True)
    z.requires_grad_(True)

    def f(x, z):
        return xcorr.xcorr(x, z, mode, padding=padding, stride=stride, dilation=dilation, method=method)

    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_gradgradcheck_direct(mode):
    method = "direct"
    x, z = make(2, 1, 2, 2, 6, 6, 2, 3, mode)
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, padding=1, method=method)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, z), fast_mode=True)


def test_fft_second_derivative_is_refused_clearly():
    x, z = make(2, 1, 2, 1, 6, 6, 2, 3, "naive")
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(xcorr.xcorr(x, z, method="fft").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(gx.sum(), x)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_of_one_input_only(mode):
    x, z = make(2, 2, 2, 2, 8, 8, 3, 3, mode)
    for method in ("direct", "fft"):
        xx = x.clone().requires_grad_(True)
        xcorr.xcorr(xx, z, mode, method=method).sum().backward()
        zz = z.clone().requires_grad_(True)
        xcorr.xcorr(x, zz, mode, method=method).sum().backward()
        assert xx.grad.shape == x.shape and zz.grad.shape == z.shape


def test_long_axes_are_tiled():
    n, T, L = fft.axis_plan(2000, 5)
    assert n > 1 and T == L < 2000 and n * (T - 5 + 1) >= 2000 - 5 + 1
    assert fft.axis_plan(22, 6) == (1, 22, 24)  # short: one transform at a fast length


@pytest.mark.parametrize("mode", MODES)
def test_overlap_save_tiles(mode, monkeypatch):
    # Tiles of 12 (odd leftovers at both axes' ends), with padding, stride and dilation.
    monkeypatch.setattr(fft, "tile_length", lambda padded, span: min(padded, 12))
    assert fft.axis_plan(40, 5) == (5, 12, 12)
    x, z = make(2, 1, 2, 2, 37, 30, 3, 4, mode)
    kw = dict(padding=(1, 2), stride=(2, 1), dilation=(2, 1))
    out = xcorr.xcorr(x, z, mode, method="fft", **kw)
    assert_close_rel(out, xcorr_reference(x, z, mode, **kw))
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, method="fft", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


@pytest.mark.parametrize("Bz", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_chunks_under_a_memory_budget(mode, Bz, monkeypatch):
    monkeypatch.setattr(fft, "MEMORY_BUDGET", 1)  # one item (or one template's items) per chunk
    x, z = make(4, Bz, 2, 2, 9, 8, 3, 3, mode)
    out = xcorr.xcorr(x, z, mode, padding=1, method="fft")
    assert_close_rel(out, xcorr_reference(x, z, mode, 1))
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, padding=1, method="fft")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


def test_chunk_size_follows_the_budget(monkeypatch):
    spec = xcorr._checks.check_xcorr(torch.empty(64, 8, 100, 100), torch.empty(64, 8, 9, 9), "naive", 0, 1, 1)
    assert fft.chunk_items(spec) >= 64
    monkeypatch.setattr(fft, "MEMORY_BUDGET", 8 << 20)
    assert 1 <= fft.chunk_items(spec) < 64


@pytest.mark.parametrize("n", [1, 7, 11, 13, 97, 255, 1000])
def test_fast_lengths(n):
    m = fft.next_fast_len(n)
    assert m >= n
    r = m
    for p in (2, 3, 5, 7):
        while r % p == 0:
            r //= p
    assert r == 1
    assert all(fft.next_fast_len(k) != k for k in range(n, m))
