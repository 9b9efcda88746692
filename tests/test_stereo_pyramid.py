"""xcorr.StereoCorrPyramid against RAFT-Stereo's CorrBlock1D, as defined and as RAFT-Stereo writes it."""

import gc

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel
from reference import stereo_pyramid_reference

import xcorr
import xcorr.volumes.family
import xcorr.volumes.spec
import xcorr.volumes.stereo_pyramid
from xcorr._spares import SPARES

METHODS = ["all_pairs", "on_demand"]

#: What the tests hold the pyramid to, relative to the largest |value| of the float64 reference.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def corr_block_1d(left, right, coords, num_levels, radius):
    """RAFT-Stereo's ``CorrBlock1D(left, right, num_levels, radius)(coords)`` written as RAFT-Stereo
    writes it (core/corr.py, core/utils/utils.py ``bilinear_sampler``), in the inputs' dtype (it
    divides by a float32 ``sqrt(C)`` and returns float32)."""
    B, D, H, W = left.shape
    corr = torch.einsum("aijk,aijh->ajkh", left, right).reshape(B, H, W, 1, W).contiguous()
    corr = (corr / torch.sqrt(torch.tensor(D, dtype=left.dtype))).reshape(B * H * W, 1, 1, W)
    pyramid = [corr]
    for _ in range(num_levels):  # one level more than it looks up, as RAFT-Stereo does
        corr = F.avg_pool2d(corr, [1, 2], stride=[1, 2])
        pyramid.append(corr)
    x = coords[:, :1].permute(0, 2, 3, 1)
    out = []
    for i in range(num_levels):
        corr = pyramid[i]
        dx = torch.linspace(-radius, radius, 2 * radius + 1, dtype=coords.dtype).view(2 * radius + 1, 1)
        x0 = dx + x.reshape(B * H * W, 1, 1, 1) / 2**i
        grid = torch.cat([2 * x0 / (corr.shape[-1] - 1) - 1, torch.zeros_like(x0)], dim=-1)  # H = 1: y not scaled
        out.append(F.grid_sample(corr, grid, align_corners=True).view(B, H, W, -1))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def make(B, C, H, W, dtype=torch.float64, seed=0, disparity=6.0, special=True):
    """left, right (B, C, H, W) and coords (B, 2, H, W): each pixel's own x less a random disparity
    in (-1, ``disparity``) (RAFT-Stereo's coords1), a random y (never read); with ``special``, some
    far outside the row, half a pixel out and on an exact pixel."""
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    right = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    xs = torch.arange(W, dtype=torch.float64).expand(B, H, W)
    x = xs - (disparity + 1) * torch.rand(B, H, W, generator=g, dtype=torch.float64) + 1
    y = 100 * torch.randn(B, H, W, generator=g, dtype=torch.float64)
    if special and W > 3:
        x[:, 0, 0], x[:, 0, 1] = -40.5, W + 30.25  # far left, far right
        x[:, -1, 0], x[:, -1, -1] = -0.5, W - 1.0  # half a pixel out, the last pixel exactly
    coords = torch.stack([x, y], dim=1)
    return left.to(dtype), right.to(dtype), coords.to(dtype)


# (B, C, H, W, num_levels, radius): odd sizes, so that pooling floors; a coarsest level one pixel wide.
GEOMETRIES = [
    (2, 3, 5, 13, 3, 2),
    (1, 4, 1, 8, 4, 1),
    (3, 2, 4, 7, 1, 3),
    (1, 1, 3, 6, 2, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(method, geometry, dtype):
    B, C, H, W, L, r = geometry
    left, right, coords = make(B, C, H, W, dtype)
    out = xcorr.StereoCorrPyramid(left, right, L, r, method=method)(coords)
    assert out.shape == (B, L * (2 * r + 1), H, W) and out.dtype == dtype and out.is_contiguous()
    expected = stereo_pyramid_reference(left, right, coords, L, r)
    assert_close_rel(out, expected, tol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_matches_raft_stereo_formulation(method, dtype):
    # W = 13 with 3 levels: CorrBlock1D pools a fourth level (one pixel) and never reads it; every
    # level it reads is at least two pixels wide, where its normalisation of the grid is defined.
    left, right, coords = make(2, 5, 5, 13, dtype, disparity=8.0)
    expected = corr_block_1d(left, right, coords, 3, 2)
    assert_close_rel(xcorr.StereoCorrPyramid(left, right, 3, 2, method=method)(coords), expected, tol=TOLERANCE[dtype])
    if dtype == torch.float64:  # the reference and RAFT-Stereo's formulation agree with each other
        assert_close_rel(stereo_pyramid_reference(left, right, coords, 3, 2), expected, tol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_x_coordinates_alone_give_the_same_lookup(method):
    left, right, coords = make(2, 3, 4, 11)
    pyr = xcorr.StereoCorrPyramid(left, right, 2, 2, method=method)
    both = pyr(coords)
    assert torch.equal(pyr(coords[:, :1]), both)
    other_y = torch.stack([coords[:, 0], torch.full_like(coords[:, 0], -1e6)], dim=1)
    assert torch.equal(pyr(other_y), both)


@pytest.mark.parametrize("method", METHODS)
def test_positions_outside_the_row_read_zeros(method):
    left, right, _ = make(1, 3, 2, 9)
    pyr = xcorr.StereoCorrPyramid(left, right, 2, 1, method=method)
    x = torch.tensor([-5.0, -1e9, 13.0, float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    coords = torch.zeros(1, 1, 2, 9, dtype=torch.float64)
    # Level 0 (9 pixels) is sampled 1 pixel either side, level 1 (4 pixels) at x/2 -1, +0, +1:
    # from x = -5 (down to -2.5 + 1) or 13 (from 6.5 - 1), every sample falls outside.
    coords[0, 0, 0, :6] = x
    out = pyr(coords)
    assert torch.equal(out[0, :, 0, :6], torch.zeros(6, 6, dtype=torch.float64))
    assert out[0, :, 1].abs().sum() > 0


def test_half_a_pixel_out_reads_half_the_edge():
    left, right = torch.ones(1, 1, 1, 4), torch.zeros(1, 1, 1, 4)
    right[..., 0] = 2.0
    coords = torch.full((1, 1, 1, 4), -0.5)
    out = xcorr.StereoCorrPyramid(left, right, 1, 1)(coords)[0, :, 0, 0]
    # Offsets -1, 0, +1 at -1.5, -0.5, 0.5: outside, half of pixel 0, halfway from pixel 0 to 1.
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 1.0]), rtol=0, atol=1e-7)


def test_channel_order_is_level_then_offset():
    # right is one bright pixel at x = 6; looking up at x = 4 sees it at offset +2 of level 0
    # and, pooled into pixel 3 of level 1 (half of it), at offset +1 of level 1 (x = 2).
    left, right = torch.ones(1, 1, 1, 8), torch.zeros(1, 1, 1, 8)
    right[..., 6] = 1.0
    coords = torch.full((1, 2, 1, 8), 4.0)
    out = xcorr.StereoCorrPyramid(left, right, 2, 2)(coords)[0, :, 0, 0]
    K = 5
    assert out.nonzero().flatten().tolist() == [0 * K + (2 + 2), 1 * K + (1 + 2)]
    assert out[4].item() == 1.0 and out[K + 3].item() == 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_computed_in_float32(method, dtype):
    # Features of magnitude 10: a half-precision sum of 64 products of ~100 would overflow float16.
    left, right, coords = make(2, 64, 3, 11)
    left, right = (10 * left).to(dtype), (10 * right).to(dtype)
    out = xcorr.StereoCorrPyramid(left, right, 2, 2, method=method)(coords.to(dtype))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Against the reference on the rounded inputs: the computation itself is float32's.
    expected = stereo_pyramid_reference(left, right, coords.to(dtype), 2, 2)
    assert_close_rel(out, expected, tol=TOLERANCE[torch.float32])


@pytest.mark.parametrize("method", METHODS)
def test_batch_zero(method):
    left, right, coords = make(0, 3, 4, 9)
    inputs = [t.requires_grad_(True) for t in (left, right, coords)]
    out = xcorr.StereoCorrPyramid(*inputs[:2], 2, 1, method=method)(inputs[2])
    assert out.shape == (0, 6, 4, 9) and out.dtype == torch.float64
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in inputs)


@pytest.mark.parametrize("method", METHODS)
def test_batch_one(method):
    left, right, coords = make(1, 2, 3, 10)
    out = xcorr.StereoCorrPyramid(left, right, 3, 2, method=method)(coords)
    assert_close_rel(out, stereo_pyramid_reference(left, right, coords, 3, 2), tol=1e-12)


LAYOUTS = ["transposed", "channels_last", "sliced", "expanded"]


def relayout(t, layout):
    if layout == "transposed":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "channels_last":
        return t.to(memory_format=torch.channels_last)
    if layout == "sliced":
        return torch.cat([t, t], dim=1)[:, ::2]
    return t[:1].expand(t.shape[0], -1, -1, -1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_inputs_are_read_not_modified(method, layout):
    left, right, coords = make(2, 3, 5, 9)
    left, right, coords = relayout(left, layout), relayout(right, layout), relayout(coords, layout)
    assert not left.is_contiguous() and not coords.is_contiguous()
    before = [t.clone() for t in (left, right, coords)]
    out = xcorr.StereoCorrPyramid(left, right, 2, 2, method=method)(coords)
    assert_close_rel(out, stereo_pyramid_reference(left, right, coords, 2, 2), tol=1e-12)
    for t, b in zip((left, right, coords), before):
        torch.testing.assert_close(t, b, rtol=0, atol=0)


@pytest.mark.parametrize("coords_channels", [2, 1])
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method, coords_channels):
    # Positions away from whole pixels (where the linear weights have a kink), some partly out.
    left, right, coords = make(2, 2, 3, 9, special=False)
    inputs = [t.requires_grad_(True) for t in (left, right, coords[:, :coords_channels].contiguous())]
    assert torch.autograd.gradcheck(
        lambda a, b, c: xcorr.StereoCorrPyramid(a, b, 3, 1, method=method)(c), inputs, fast_mode=True
    )


@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_reference(method):
    left, right, coords = make(2, 3, 4, 11, special=False)
    coords[:, 0, 0, 0] = -2.25  # partly outside
    weight = torch.randn(2, 3 * 5, 4, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(fn):
        inputs = [t.clone().requires_grad_(True) for t in (left, right, coords)]
        (fn(*inputs) * weight).sum().backward()
        return [t.grad for t in inputs]

    expected = grads(lambda a, b, c: stereo_pyramid_reference(a, b, c, 3, 2))
    got = grads(lambda a, b, c: xcorr.StereoCorrPyramid(a, b, 3, 2, method=method)(c))
    for g, e in zip(got, expected):
        assert_close_rel(g, e, tol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_several_lookups_accumulate_gradients(method):
    # RAFT-Stereo's training step: one pyramid, lookups at coordinates that change, one backward.
    left, right, coords = make(1, 3, 3, 10, special=False)
    a, b = left.clone().requires_grad_(True), right.clone().requires_grad_(True)
    pyr = xcorr.StereoCorrPyramid(a, b, 2, 1, method=method)
    (pyr(coords).sum() + pyr(coords - 1.5).square().sum()).backward()
    a2, b2 = left.clone().requires_grad_(True), right.clone().requires_grad_(True)
    ref = stereo_pyramid_reference(a2, b2, coords, 2, 1).sum()
    (ref + stereo_pyramid_reference(a2, b2, coords - 1.5, 2, 1).square().sum()).backward()
    assert_close_rel(a.grad, a2.grad, tol=1e-12)
    assert_close_rel(b.grad, b2.grad, tol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_partial_and_repeated_backward_passes(method):
    # The lookups' gradients meet in one buffer per pyramid: a pass that asks for the coordinates'
    # gradient alone, and a second pass over a kept graph, must each see only their own.
    left, right, coords = make(1, 3, 3, 10, special=False)
    a, b, c = (t.clone().requires_grad_(True) for t in (left, right, coords))
    pyr = xcorr.StereoCorrPyramid(a, b, 2, 1, method=method)
    out = pyr(c)
    (g_coords,) = torch.autograd.grad(out.square().sum(), [c], retain_graph=True)
    loss = (out * out.detach()).sum() + pyr(c - 1.5).sum()
    loss.backward(retain_graph=True)
    first = a.grad.clone(), b.grad.clone()
    loss.backward()
    a2, b2, c2 = (t.clone().requires_grad_(True) for t in (left, right, coords))
    ref = stereo_pyramid_reference(a2, b2, c2, 2, 1)
    (expected_coords,) = torch.autograd.grad(ref.square().sum(), [c2], retain_graph=True)
    ((ref * ref.detach()).sum() + stereo_pyramid_reference(a2, b2, c2 - 1.5, 2, 1).sum()).backward()
    assert_close_rel(g_coords, expected_coords, tol=1e-12)
    for got, twice, expected in zip(first, (a.grad, b.grad), (a2.grad, b2.grad)):
        assert_close_rel(got, expected, tol=1e-12)
        assert_close_rel(twice, 2 * expected, tol=1e-12)


def test_pyramids_built_in_the_buffers_of_the_last_one():
    # A volume goes back to a pool when its pyramid is freed, and its gradient when its backward
    # pass is done; the next pyramid of the shape finds them full of the last one's values (here
    # NaN), zero columns included.
    SPARES.clear()
    left, right, coords = make(2, 3, 4, 11)
    row = xcorr.volumes.spec.level_columns(xcorr.volumes.spec.level_widths(11, 3), 2)[1]
    SPARES.give([torch.full((2 * 4 * 11, row), float("nan"), dtype=torch.float64) for _ in range(2)])
    weight = torch.randn(2, 3 * 5, 4, 11, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = left.clone().requires_grad_(True), right.clone().requires_grad_(True)
    pyramid = xcorr.StereoCorrPyramid(a, b, 3, 2, method="all_pairs")
    out = pyramid(coords)
    (out * weight).sum().backward()
    assert len(SPARES) == 1  # the gradient's, back
    del pyramid
    gc.collect()
    assert len(SPARES) == 2  # and the volume
    a2, b2 = left.clone().requires_grad_(True), right.clone().requires_grad_(True)
    expected = stereo_pyramid_reference(a2, b2, coords, 3, 2)
    (expected * weight).sum().backward()
    assert_close_rel(out, expected, tol=1e-12)
    assert_close_rel(a.grad, a2.grad, tol=1e-12)
    assert_close_rel(b.grad, b2.grad, tol=1e-12)


def test_auto_follows_the_planner():
    left, right, _ = make(1, 2, 3, 8)
    assert xcorr.StereoCorrPyramid(left, right, 2, 1).method == "all_pairs"
    assert "method='all_pairs'" in repr(xcorr.StereoCorrPyramid(left, right, 2, 1))
    bytes_of = xcorr.volumes.family.stereo_pyramid_volume_bytes
    # RAFT-Stereo at 320x736 (features at 1/4: 80x184): 44 MiB of volumes with 5 blocks of 10 zero
    # columns; at 1984x2872, 1.9 GiB.
    assert bytes_of((2, 256, 80, 184), 4, 4, torch.float32) == 2 * 80 * 184 * (184 + 92 + 46 + 23 + 5 * 10) * 4
    assert bytes_of((2, 256, 80, 184), 4, 4, torch.float16) == bytes_of((2, 256, 80, 184), 4, 4, torch.float32)
    assert bytes_of((1, 256, 496, 718), 4, 4, torch.float32) > xcorr.volumes.family.PYRAMID_VOLUME_BYTES
    select = xcorr.volumes.family.select_stereo_pyramid
    assert select((2, 256, 80, 184), 4, 4, torch.float32) == "all_pairs"
    assert select((1, 256, 496, 718), 4, 4, torch.float32) == "on_demand"
    # Past the budget by the zero columns alone (20 of them beside 256 at radius 4, 8 at radius 1).
    assert select((1, 1, 3900, 256), 1, 4, torch.float32) == "on_demand"
    assert select((1, 1, 3900, 256), 1, 1, torch.float32) == "all_pairs"


def test_module_namespace_holds_the_pyramids():
    assert xcorr.nn.StereoCorrPyramid is xcorr.StereoCorrPyramid
    assert xcorr.nn.CorrPyramid is xcorr.CorrPyramid


def test_pyramids_of_one_signature_are_validated_and_planned_once(monkeypatch):
    left, right, coords = make(1, 4, 2, 8)
    xcorr.StereoCorrPyramid(left, right, 2, 1)
    checks = []
    module = xcorr.volumes.stereo_pyramid
    real = module.check_stereo_corr_pyramid
    monkeypatch.setattr(module, "check_stereo_corr_pyramid", lambda *a: checks.append(a[2:]) or real(*a))
    out = [xcorr.StereoCorrPyramid(left, right, 2, 1)(coords) for _ in range(3)]
    assert checks == [] and all(torch.equal(o, out[0]) for o in out)
    xcorr.StereoCorrPyramid(left, right, 2, 2)  # another radius: validated once
    xcorr.StereoCorrPyramid(left, right, 2, 2)
    assert checks == [(2, 2, "auto")]


@pytest.mark.parametrize("method", METHODS)
def test_compiles_without_graph_break_forward_and_backward(method, fresh_dynamo):
    def f(a, b, c):
        return xcorr.StereoCorrPyramid(a, b, 2, 2, method=method)(c).square().sum()

    left, right, coords = make(2, 3, 3, 10)
    compiled = [t.clone().requires_grad_(True) for t in (left, right, coords)]
    eager = [t.clone().requires_grad_(True) for t in (left, right, coords)]
    torch.compile(f, fullgraph=True, backend="aot_eager")(*compiled).backward()
    f(*eager).backward()
    for c, e in zip(compiled, eager):
        assert_close_rel(c.grad, e.grad, tol=1e-12)


L, R, COORDS = make(2, 3, 4, 8, torch.float32)

# (call, error type, message regex): every rule of the arguments.
ERRORS = [
    (lambda: xcorr.StereoCorrPyramid(L.numpy(), R), TypeError, r"left must be a torch.Tensor of shape \(B, C, H, W\)"),
    (lambda: xcorr.StereoCorrPyramid(L[0], R), ValueError, r"left must be 4-D \(B, C, H, W\), got shape \(3, 4, 8\)"),
    (
        lambda: xcorr.StereoCorrPyramid(L, R[:, :2]),
        ValueError,
        r"same shape.*left \(2, 3, 4, 8\) and right \(2, 2, 4, 8\)",
    ),
    (lambda: xcorr.StereoCorrPyramid(L, R[..., :6]), ValueError, r"left \(2, 3, 4, 8\) and right \(2, 3, 4, 6\)"),
    (lambda: xcorr.StereoCorrPyramid(L, R.double()), TypeError, r"left and right must have the same dtype"),
    (lambda: xcorr.StereoCorrPyramid(L, R.to("meta")), ValueError, r"left and right must be on the same device"),
    (lambda: xcorr.StereoCorrPyramid(L.long(), R.long()), TypeError, r"left must have a floating-point dtype"),
    (lambda: xcorr.StereoCorrPyramid(L[:, :0], R[:, :0]), ValueError, r"at least one channel"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 0), ValueError, r"num_levels must be a positive int, got 0"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2.0), TypeError, r"num_levels must be a positive int, got float 2.0"),
    (
        lambda: xcorr.StereoCorrPyramid(L, R, 5),
        ValueError,
        r"num_levels=5 needs left and right at least 16 pixels wide.*got shape \(2, 3, 4, 8\)",
    ),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2, -1), ValueError, r"radius must be a positive int, got -1"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2, 0), ValueError, r"radius must be a positive int, got 0"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2, "4"), TypeError, r"radius must be a positive int, got str '4'"),
    (
        lambda: xcorr.StereoCorrPyramid(L, R, method="alt"),
        ValueError,
        r"unknown method 'alt'.*'all_pairs', 'on_demand'",
    ),
    (lambda: xcorr.StereoCorrPyramid(L, R, method=None), TypeError, r"method must be a string"),
    (
        lambda: xcorr.StereoCorrPyramid(L, R, 2)(COORDS[:, :, :, :7]),
        ValueError,
        r"coords must have shape \(B, 2, H, W\) = \(2, 2, 4, 8\).*or \(B, 1, H, W\) = \(2, 1, 4, 8\); "
        r"got \(2, 2, 4, 7\)",
    ),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2)(torch.cat([COORDS, COORDS], 1)), ValueError, r"got \(2, 4, 4, 8\)"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2)(COORDS[:1]), ValueError, r"got \(1, 2, 4, 8\)"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2)(COORDS[0]), ValueError, r"coords must be 4-D \(B, 2, H, W\)"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2)(COORDS.long()), TypeError, r"coords must have a floating-point dtype"),
    (lambda: xcorr.StereoCorrPyramid(L, R, 2)(COORDS.tolist()), TypeError, r"coords must be a torch.Tensor"),
    (
        lambda: xcorr.StereoCorrPyramid(L, R, 2)(COORDS.to("meta")),
        ValueError,
        r"coords must be on the features' device cpu, got meta",
    ),
]


@pytest.mark.parametrize("fn, error, message", ERRORS)
def test_bad_input_raises_in_the_callers_terms(fn, error, message):
    with pytest.raises(error, match=message):
        fn()


def test_float32_error_at_raft_stereo_channels():
    # 256 channels, a 96-pixel row, disparities up to 40: RAFT-Stereo's float32 within 1e-5.
    left, right, coords = make(1, 256, 2, 96, disparity=40.0)
    expected = stereo_pyramid_reference(left, right, coords, 4, 4)
    for method in METHODS:
        out = xcorr.StereoCorrPyramid(left.float(), right.float(), 4, 4, method=method)(coords.float())
        err = ((out.double() - expected).abs().max() / expected.abs().max()).item()
        assert err <= TOLERANCE[torch.float32], (method, err)
