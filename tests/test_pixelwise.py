import numpy as np
import pytest
import torch
from helpers import LAYOUTS, assert_close_rel, relayout
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import pixelwise_reference

import xcorr


def make(B, Bz, C, H, W, h, w, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    z = torch.randn(Bz, C, h, w, generator=g, dtype=torch.float64)
    return x.to(device, dtype), z.to(device, dtype)


# (B, Bz, C, H, W, h, w): shared and per-item templates, odd sizes, 1x1 templates and searches.
GEOMETRIES = [
    (1, 1, 3, 9, 11, 3, 5),
    (3, 3, 2, 8, 7, 4, 3),
    (6, 2, 4, 5, 13, 2, 2),
    (2, 1, 1, 1, 1, 1, 1),
    (4, 4, 5, 6, 6, 7, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_reference(geometry, dtype, device):
    x, z = make(*geometry, dtype=dtype, device=device)
    out = xcorr.pixelwise(x, z)
    B, _, _, H, W, h, w = geometry
    assert out.shape == (B, h * w, H, W) and out.dtype == dtype and out.device == x.device
    assert_close_rel(out, pixelwise_reference(x, z), dtype)


def test_channel_order_is_row_major_over_the_template():
    x = torch.ones(1, 1, 2, 2)
    z = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert xcorr.pixelwise(x, z)[0, :, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(layout, device):
    x, z = make(4, 2, 3, 12, 12, 4, 4, device=device)
    x, z = relayout(x, z, layout)
    before = (x.clone(), z.clone())
    assert_close_rel(xcorr.pixelwise(x, z), pixelwise_reference(x, z))
    torch.testing.assert_close(x, before[0], rtol=0, atol=0)
    torch.testing.assert_close(z, before[1], rtol=0, atol=0)


@pytest.mark.parametrize("Bz", [0, 1, 3])
def test_batch_zero(Bz, device):
    x, z = make(0, Bz, 3, 9, 8, 3, 2, device=device)
    x.requires_grad_(True)
    z.requires_grad_(True)
    out = xcorr.pixelwise(x, z)
    assert out.shape == (0, 6, 9, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape and z.grad.shape == z.shape
    assert z.grad.abs().sum() == 0


@pytest.mark.parametrize("Bz", [1, 2])
def test_gradcheck(Bz):
    x, z = make(4, Bz, 3, 5, 6, 3, 2)
    x.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(xcorr.pixelwise, (x, z), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_returns_input_dtype(dtype):
    x, z = make(4, 2, 16, 10, 10, 3, 3, dtype)
    x.requires_grad_(True)
    out = xcorr.pixelwise(x, z)
    assert out.dtype == dtype
    assert_close_rel(out, pixelwise_reference(x, z), dtype)
    out.sum().backward()
    assert x.grad.dtype == dtype


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_property_random_shapes(data):
    draw = data.draw
    Bz = draw(st.integers(1, 3))
    B = Bz * draw(st.integers(1, 3))
    C, H, W, h, w = (draw(st.integers(1, n)) for n in (4, 9, 9, 5, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    x, z = make(B, Bz, C, H, W, h, w, dtype, seed=draw(st.integers(0, 1000)))
    assert_close_rel(xcorr.pixelwise(x, z), pixelwise_reference(x, z), dtype)


X, Z = torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 3, 3)
# One row a case: (call, error, message regex).
# fmt: off
BAD_INPUTS = [
    (lambda: xcorr.pixelwise(np.zeros((2, 3, 8, 8)), Z), TypeError, r"x must be a torch\.Tensor.*numpy\.ndarray"),
    (lambda: xcorr.pixelwise(X, (1, 2)), TypeError, r"z must be a torch\.Tensor of shape \(Bz, C, h, w\).*tuple"),
    (lambda: xcorr.pixelwise(X[0], Z), ValueError, r"x must be 4-D \(B, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda: xcorr.pixelwise(X, Z[0]), ValueError, r"z must be 4-D \(Bz, C, h, w\), got shape \(3, 3, 3\)"),
    (lambda: xcorr.pixelwise(X.int(), Z.int()), TypeError, r"x must have a floating-point dtype, got torch\.int32"),
    (lambda: xcorr.pixelwise(X, Z.half()), TypeError, r"same dtype, got x torch\.float32 and z torch\.float16"),
    (lambda: xcorr.pixelwise(X, Z.to("meta")), ValueError, r"same device, got x on cpu and z on meta"),
    (lambda: xcorr.pixelwise(X, torch.zeros(1, 6, 3, 3)), ValueError, r"pixelwise needs z to have as many channels as x.*C=3.*Cz=6"),
    (lambda: xcorr.pixelwise(torch.zeros(3, 3, 8, 8), torch.zeros(2, 3, 3, 3)), ValueError, r"multiple of z's batch.*B=3.*Bz=2"),
    (lambda: xcorr.pixelwise(X, torch.zeros(0, 3, 3, 3)), ValueError, r"z has no templates.*x has 2 search items"),
    (lambda: xcorr.pixelwise(X, torch.zeros(1, 3, 3, 0)), ValueError, r"non-empty template, got shape \(1, 3, 3, 0\)"),
    (lambda: xcorr.pixelwise(X[:, :0], Z[:, :0]), ValueError, r"^x must have at least one channel, got shape \(2, 0, 8, 8\)$"),
    (lambda: xcorr.pixelwise(X, Z[:, :0]), ValueError, r"^z must have at least one channel, got shape \(1, 0, 3, 3\)$"),
]
# fmt: on


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
