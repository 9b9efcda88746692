"""xcorr.CorrPyramid against RAFT's CorrBlock, as defined and as RAFT writes it."""

import io
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, assert_close_rel
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import corr_pyramid_reference

import xcorr
import xcorr.volumes.family
import xcorr.volumes.pyramid

METHODS = ["all_pairs", "on_demand"]


def raft_corr_block(f1, f2, coords, num_levels, radius):
    """RAFT's ``CorrBlock(f1, f2, num_levels, radius)(coords)`` written as RAFT writes it
    (core/corr.py, core/utils/utils.py ``bilinear_sampler``), in the inputs' dtype."""
    B, C, H, W = f1.shape
    corr = torch.matmul(f1.view(B, C, H * W).transpose(1, 2), f2.view(B, C, H * W))
    corr = corr.view(B * H * W, 1, H, W) / torch.sqrt(torch.tensor(C, dtype=f1.dtype))
    pyramid = [corr]
    for _ in range(num_levels - 1):
        corr = F.avg_pool2d(corr, 2, stride=2)
        pyramid.append(corr)
    r = radius
    coords = coords.permute(0, 2, 3, 1)
    out = []
    for i, corr in enumerate(pyramid):
        d = torch.linspace(-r, r, 2 * r + 1, dtype=coords.dtype)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        grid = coords.reshape(B * H * W, 1, 1, 2) / 2**i + delta
        h, w = corr.shape[-2:]
        x, y = grid.split([1, 1], dim=-1)
        grid = torch.cat([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
        out.append(F.grid_sample(corr, grid, align_corners=True).view(B, H, W, -1))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def make(B, C, H, W, dtype=torch.float64, seed=0, spread=4.0, special=True):
    """f1, f2 (B, C, H, W) and coords (B, 2, H, W): each pixel's own position plus a random
    flow of ``spread`` pixels; with ``special``, some far outside the map and one on an exact
    pixel (where the bilinear weights have a kink: no place for finite differences)."""
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    f2 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    coords = torch.stack([xs, ys]).expand(B, 2, H, W) + spread * torch.randn(
        B, 2, H, W, generator=g, dtype=torch.float64
    )
    coords = coords.clone()
    if special and H * W > 4:
        coords[:, :, 0, 0] = torch.tensor([-7.5, 2.25], dtype=torch.float64)  # left of the map
        coords[:, :, 0, 1] = torch.tensor([W + 3.0, H + 40.0], dtype=torch.float64)  # beyond the corner
        coords[:, :, -1, -1] = torch.tensor([W - 1.0, 0.0], dtype=torch.float64)  # an exact corner pixel
        coords[:, :, -1, 0] = torch.tensor([-0.5, H - 0.75], dtype=torch.float64)  # half a pixel out
    return f1.to(dtype), f2.to(dtype), coords.to(dtype)


@pytest.fixture(params=["levels dense", "windows", "windows, dense gradient", "coarse volumes kept"])
def correlated(request, monkeypatch):
    """Every way a level's taps are correlated, whole (one matrix product) or window by window,
    and their backward passes: windowed, or summed over the lookups into a dense gradient; on
    demand, lookups without a graph read the coarse levels' kept volumes only in the last."""
    dense = request.param == "levels dense"
    gradient = request.param != "windows"
    monkeypatch.setattr(xcorr.volumes.pyramid, "pyramid_level_dense", lambda pixels, radius: dense)
    monkeypatch.setattr(xcorr.volumes.pyramid, "pyramid_gradient_dense", lambda pixels, level, itemsize: gradient)
    if request.param != "coarse volumes kept":
        monkeypatch.setattr(xcorr.volumes.pyramid, "PYRAMID_KEPT_BYTES", 0)
    return request.param


# (B, C, H, W, num_levels, radius): odd sizes, so that pooling floors; levels down to one pixel.
GEOMETRIES = [
    (2, 3, 7, 11, 3, 2),
    (1, 4, 8, 8, 2, 1),
    (3, 2, 9, 5, 1, 3),
    (1, 1, 5, 6, 3, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(method, geometry, dtype, correlated):
    B, C, H, W, L, r = geometry
    f1, f2, coords = make(B, C, H, W, dtype)
    out = xcorr.CorrPyramid(f1, f2, L, r, method=method)(coords)
    assert out.shape == (B, L * (2 * r + 1) ** 2, H, W) and out.dtype == dtype and out.is_contiguous()
    assert_close_rel(out, corr_pyramid_reference(f1, f2, coords, L, r), dtype)


@pytest.mark.parametrize("levels", [0, 1, 2, 3])
def test_on_demand_keeps_the_coarse_volumes_that_fit(levels, monkeypatch):
    """Without a graph, an on-demand pyramid keeps the volumes of its coarsest levels that fit
    the budget (never level 0), made at the first lookup; every lookup agrees with the volumes'
    and with no level kept; a lookup with a graph keeps none."""
    B, C, H, W, L, r = 2, 3, 9, 13, 4, 2
    f1, f2, coords = make(B, C, H, W, torch.float32)
    sizes = [B * H * W * table.shape[1] * 4 for _, table in xcorr.volumes.pyramid._pooled_tables(f2, L)]
    monkeypatch.setattr(xcorr.volumes.pyramid, "PYRAMID_KEPT_BYTES", sum(sizes[L - levels :]) if levels else 0)
    pyr = xcorr.CorrPyramid(f1, f2, L, r, method="on_demand")
    graph = xcorr.CorrPyramid(f1.requires_grad_(), f2, L, r, method="on_demand")
    expected = xcorr.CorrPyramid(f1.detach(), f2, L, r, method="all_pairs")
    with torch.no_grad():
        first, second = pyr(coords), pyr(coords + 0.5)
    assert sorted(pyr._kept) == list(range(L - levels, L))[: min(levels, L - 1)]
    assert all(pyr._kept[i].volume is not None for i in pyr._kept)
    assert_close_rel(first, expected(coords), torch.float32)
    assert_close_rel(second, expected(coords + 0.5), torch.float32)
    assert_close_rel(graph(coords).detach(), first, torch.float32)
    assert graph._kept is None


@pytest.mark.parametrize("method", METHODS)
def test_matches_raft_formulation(method):
    # Every level at least 2x2, where RAFT's normalisation of the grid is defined.
    f1, f2, coords = make(2, 5, 9, 13, spread=6.0)
    expected = raft_corr_block(f1, f2, coords, 3, 3)
    assert_close_rel(xcorr.CorrPyramid(f1, f2, 3, 3, method=method)(coords), expected)
    assert_close_rel(corr_pyramid_reference(f1, f2, coords, 3, 3), expected)


def test_channel_order_is_x_offset_major():
    # f2 is one bright pixel at (x, y) = (5, 2); looking up at (3, 2) sees it at x offset +2.
    f1, f2 = torch.ones(1, 1, 6, 8), torch.zeros(1, 1, 6, 8)
    f2[0, 0, 2, 5] = 1.0
    coords = torch.zeros(1, 2, 6, 8)
    coords[:, 0], coords[:, 1] = 3.0, 2.0
    out = xcorr.CorrPyramid(f1, f2, 1, 2)(coords)[0, :, 0, 0]
    K = 5
    assert out.nonzero().flatten().tolist() == [(2 + 2) * K + (0 + 2)]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_windows_at_every_edge_from_the_first_and_last_pixel(method, dtype, grad, correlated):
    # The first and last pixels of the batch (whose windows' scores begin and end the volumes) and
    # every pixel between, looking at each corner and edge of the map, inside and past it.
    B, C, H, W, L, r = 2, 3, 7, 9, 3, 2
    f1, f2, _ = make(B, C, H, W, dtype)
    xs = torch.tensor([-r - 3.5, -r - 0.5, -0.75, 0.0, 0.5, W / 2, W - 1.0, W - 0.25, W + 0.5, W + r + 0.75])
    ys = torch.tensor([-r - 3.5, -0.5, 0.25, H / 2, H - 1.0, H - 0.5, H + r + 0.75])
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij")).flatten(1)  # (2, 70)
    coords = grid[:, torch.arange(B * H * W) % grid.shape[1]].view(2, B, H, W).transpose(0, 1)
    coords = coords.flip(-1).to(dtype)  # the last pixel at the right edge, past the bottom
    with torch.set_grad_enabled(grad):
        out = xcorr.CorrPyramid(f1.requires_grad_(grad), f2, L, r, method=method)(coords)
    assert_close_rel(out, corr_pyramid_reference(f1.detach(), f2, coords, L, r), dtype)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_score_stays_in_the_windows_that_hold_it(bad, correlated):
    # A bad pixel at the end of a row of f2: a window past the left edge of the next row reads
    # its score beside its own (as a run of the volume), which must not reach the samples.
    f1, f2, coords = make(1, 3, 7, 9, torch.float32)
    f2[0, :, 2, -1] = bad
    pyr = xcorr.CorrPyramid(f1, f2.requires_grad_(), 2, 2, method="all_pairs")
    with torch.no_grad():
        plain = pyr(coords)
    torch.testing.assert_close(plain, pyr(coords), rtol=0, atol=0, equal_nan=True)
    assert bool(torch.isfinite(plain).any()) and not bool(torch.isfinite(plain).all())


@pytest.mark.parametrize("method", METHODS)
def test_lookups_with_and_without_a_graph_are_equal(method, correlated):
    f1, f2, coords = make(2, 5, 9, 13, torch.float32, spread=6.0)
    pyr = xcorr.CorrPyramid(f1, f2.requires_grad_(), 3, 2, method=method)
    with torch.no_grad():
        plain = pyr(coords)
    if pyr._kept:  # read from volumes of one matrix product: other sums, as close as any two
        assert_close_rel(pyr(coords), plain, torch.float32)
    else:
        assert torch.equal(pyr(coords), plain)


@pytest.mark.parametrize("method", METHODS)
def test_float32_error_within_promise(method, correlated):
    f1, f2, coords = make(2, 64, 12, 17, spread=5.0)
    expected = corr_pyramid_reference(f1, f2, coords, 3, 2)
    out = xcorr.CorrPyramid(f1.float(), f2.float(), 3, 2, method=method)(coords.float())
    err = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    assert err <= TOL[torch.float32], err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_computed_in_float32(method, dtype, correlated):
    # Features of magnitude 10: a half-precision sum of 64 products of ~100 would overflow float16.
    f1, f2, coords = make(2, 64, 7, 11)
    f1, f2 = (10 * f1).to(dtype), (10 * f2).to(dtype)
    out = xcorr.CorrPyramid(f1, f2, 2, 2, method=method)(coords.float())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Against the reference on the rounded inputs: the computation itself is float32's.
    assert_close_rel(out, corr_pyramid_reference(f1, f2, coords.float(), 2, 2), torch.float32)


@pytest.mark.parametrize("method", METHODS)
def test_batch_zero(method):
    f1, f2, coords = make(0, 3, 8, 9)
    f1.requires_grad_(True)
    f2.requires_grad_(True)
    coords.requires_grad_(True)
    out = xcorr.CorrPyramid(f1, f2, 2, 1, method=method)(coords)
    assert out.shape == (0, 18, 8, 9) and out.dtype == torch.float64
    out.sum().backward()
    assert f1.grad.shape == f1.shape and f2.grad.shape == f2.shape and coords.grad.shape == coords.shape


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
def test_non_contiguous_inputs_are_read_not_modified(method, layout, correlated):
    f1, f2, coords = make(2, 3, 7, 9)
    f1, f2, coords = relayout(f1, layout), relayout(f2, layout), relayout(coords, layout)
    assert not f1.is_contiguous() and not coords.is_contiguous()
    before = [t.clone() for t in (f1, f2, coords)]
    out = xcorr.CorrPyramid(f1, f2, 2, 2, method=method)(coords)
    assert_close_rel(out, corr_pyramid_reference(f1, f2, coords, 2, 2))
    for t, b in zip((f1, f2, coords), before):
        torch.testing.assert_close(t, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method, correlated):
    f1, f2, coords = make(2, 2, 5, 6, spread=2.0, special=False)
    inputs = [t.requires_grad_(True) for t in (f1, f2, coords)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: xcorr.CorrPyramid(a, b, 2, 1, method=method)(c), inputs, fast_mode=True
    )


@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_reference(method, correlated):
    f1, f2, coords = make(2, 3, 7, 10, special=False)
    coords[:, :, 0, 0] = torch.tensor([-3.5, 2.25], dtype=torch.float64)  # partly outside
    weight = torch.randn(2, 2 * 25, 7, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(fn):
        inputs = [t.clone().requires_grad_(True) for t in (f1, f2, coords)]
        (fn(*inputs) * weight).sum().backward()
        return [t.grad for t in inputs]

    expected = grads(lambda a, b, c: corr_pyramid_reference(a, b, c, 2, 2))
    got = grads(lambda a, b, c: xcorr.CorrPyramid(a, b, 2, 2, method=method)(c))
    for g, e in zip(got, expected):
        assert_close_rel(g, e)


def test_several_lookups_accumulate_gradients():
    f1, f2, coords = make(1, 3, 8, 8, special=False)
    a, b = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    pyr = xcorr.CorrPyramid(a, b, 2, 1)
    (pyr(coords).sum() + pyr(coords + 1.5).square().sum()).backward()
    a2, b2 = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    ref = corr_pyramid_reference(a2, b2, coords, 2, 1).sum()
    (ref + corr_pyramid_reference(a2, b2, coords + 1.5, 2, 1).square().sum()).backward()
    assert_close_rel(a.grad, a2.grad)
    assert_close_rel(b.grad, b2.grad)


@pytest.mark.parametrize("method", METHODS)
def test_backward_passes_of_one_pyramid_each_see_their_own_lookups(method, correlated):
    # A backward pass after some lookups, more lookups, a second backward pass, the first graph
    # run again, and gradients asked of one input only (the graph of the pyramid's features is
    # shared by them all, hence retained).
    f1, f2, coords = make(2, 3, 8, 9, special=False)
    weight = torch.randn(2, 2 * 9, 8, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    shifts = [0.0, 1.25, -2.5]

    def loss(fn, shift):
        return (fn(coords + shift) * weight).square().sum()

    a, b = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    pyr = xcorr.CorrPyramid(a, b, 2, 1, method=method)
    first = loss(pyr, shifts[0]) + loss(pyr, shifts[1])
    first.backward(retain_graph=True)
    loss(pyr, shifts[2]).backward(retain_graph=True)
    first.backward(retain_graph=True)
    (only_a,) = torch.autograd.grad(loss(pyr, shifts[1]), [a])

    def reference(weights):
        a2, b2 = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
        ref = lambda c: corr_pyramid_reference(a2, b2, c, 2, 1)  # noqa: E731
        sum(w * loss(ref, s) for w, s in zip(weights, shifts)).backward()
        return a2.grad, b2.grad

    expected_a, expected_b = reference([2, 2, 1])
    assert_close_rel(a.grad, expected_a)
    assert_close_rel(b.grad, expected_b)
    assert_close_rel(only_a, reference([0, 1, 0])[0])


@settings(max_examples=12, deadline=None)
@given(
    B=st.integers(1, 2),
    C=st.integers(1, 5),
    H=st.integers(4, 9),
    W=st.integers(4, 9),
    L=st.integers(1, 3),
    r=st.integers(1, 3),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_random_sizes(B, C, H, W, L, r, method, seed):
    f1, f2, coords = make(B, C, H, W, seed=seed, spread=3.0)
    out = xcorr.CorrPyramid(f1, f2, L, r, method=method)(coords)
    assert_close_rel(out, corr_pyramid_reference(f1, f2, coords, L, r))


def test_auto_follows_the_planner():
    f1, f2, _ = make(1, 2, 8, 8)
    assert xcorr.CorrPyramid(f1, f2, 2, 1).method == "all_pairs"
    # RAFT's sizes, as shapes only: the standard problem's volumes fit, the high-resolution ones not.
    assert (
        xcorr.volumes.family.pyramid_volume_bytes((2, 256, 46, 62), 4, torch.float32)
        == 2 * 2852 * (2852 + 23 * 31 + 11 * 15 + 5 * 7) * 4
    )
    assert xcorr.volumes.family.select_pyramid((2, 256, 46, 62), 4, torch.float16) == "all_pairs"
    volume = (136 * 240) ** 2 * 4
    assert (
        xcorr.volumes.family.pyramid_volume_bytes((1, 256, 136, 240), 4, torch.float32)
        > volume
        > xcorr.volumes.family.PYRAMID_VOLUME_BYTES
    )
    assert xcorr.volumes.family.select_pyramid((1, 256, 136, 240), 4, torch.float32) == "on_demand"
    assert "method='all_pairs'" in repr(xcorr.CorrPyramid(f1, f2, 2, 1))


MEMORY_SCRIPT = """
import resource, sys, torch, xcorr
torch.set_num_threads(1)
B, C, H, W = 1, 32, 128, 160
g = torch.Generator().manual_seed(0)
f1, f2 = torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)
ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
coords = torch.stack([xs, ys]).float()[None] + 4 * torch.randn(B, 2, H, W, generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pyr = xcorr.CorrPyramid(f1, f2, 4, 4, method="on_demand")
out = pyr(coords)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_on_demand_peak_memory_is_a_small_fraction_of_the_volume():
    # 128x160, C=32: the all-pairs volumes would take 1.8 GB; they are never made.
    volume = xcorr.volumes.family.pyramid_volume_bytes((1, 32, 128, 160), 4, torch.float32)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    grown = int(run.stdout.split()[-1])
    assert grown <= volume / 10, (grown, volume)


F1, F2, COORDS = make(2, 3, 8, 8, torch.float32)

# (call, error type, message regex): every rule of the arguments.
ERRORS = [
    (lambda: xcorr.CorrPyramid(F1.numpy(), F2), TypeError, r"f1 must be a torch.Tensor of shape \(B, C, H, W\)"),
    (lambda: xcorr.CorrPyramid(F1[0], F2), ValueError, r"f1 must be 4-D \(B, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda: xcorr.CorrPyramid(F1, F2[:, :2]), ValueError, r"same shape.*f1 \(2, 3, 8, 8\) and f2 \(2, 2, 8, 8\)"),
    (lambda: xcorr.CorrPyramid(F1, F2.double()), TypeError, r"f1 and f2 must have the same dtype"),
    (lambda: xcorr.CorrPyramid(F1.long(), F2.long()), TypeError, r"f1 must have a floating-point dtype"),
    (lambda: xcorr.CorrPyramid(F1, F2, 0), ValueError, r"num_levels must be a positive int, got 0"),
    (lambda: xcorr.CorrPyramid(F1, F2, 2.0), TypeError, r"num_levels must be a positive int, got float 2.0"),
    (lambda: xcorr.CorrPyramid(F1, F2, True), TypeError, r"num_levels must be a positive int, got bool True"),
    (lambda: xcorr.CorrPyramid(F1, F2, 2, -1), ValueError, r"radius must be a positive int, got -1"),
    (lambda: xcorr.CorrPyramid(F1, F2, 2, "4"), TypeError, r"radius must be a positive int, got str '4'"),
    (lambda: xcorr.CorrPyramid(F1, F2, method="alt"), ValueError, r"unknown method 'alt'.*'all_pairs', 'on_demand'"),
    (lambda: xcorr.CorrPyramid(F1, F2, method=None), TypeError, r"method must be a string"),
    (lambda: xcorr.CorrPyramid(F1, F2, 5), ValueError, r"num_levels=5 needs f1 and f2 of at least 16x16 pixels"),
    (
        lambda: xcorr.CorrPyramid(F1[:, :0], F2[:, :0]),
        ValueError,
        r"^f1 and f2 must have at least one channel, got shape \(2, 0, 8, 8\)$",
    ),
    (
        lambda: xcorr.CorrPyramid(F1, F2, 2)(COORDS[:, :1]),
        ValueError,
        r"coords must have shape \(B, 2, H, W\) = \(2, 2, 8, 8\)",
    ),
    (lambda: xcorr.CorrPyramid(F1, F2, 2)(COORDS[:1]), ValueError, r"got \(1, 2, 8, 8\)"),
    (lambda: xcorr.CorrPyramid(F1, F2, 2)(COORDS[0]), ValueError, r"coords must be 4-D \(B, 2, H, W\)"),
    (lambda: xcorr.CorrPyramid(F1, F2, 2)(COORDS.long()), TypeError, r"coords must have a floating-point dtype"),
    (lambda: xcorr.CorrPyramid(F1, F2, 2)(COORDS.tolist()), TypeError, r"coords must be a torch.Tensor"),
]


@pytest.mark.parametrize("fn, error, message", ERRORS)
def test_bad_input_raises_in_the_callers_terms(fn, error, message):
    with pytest.raises(error, match=message):
        fn()


class Lookup(torch.nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, f1, f2, coords):
        return xcorr.CorrPyramid(f1, f2, 2, 2, method=self.method)(coords)


# The torch.export-based exporter takes 10-20 s a graph here: it exports the on-demand lookup, the
# TorchScript one both methods.
@pytest.mark.parametrize(
    "method, dynamo", [("on_demand", True), ("all_pairs", False), ("on_demand", False)], ids=["dynamo", "ts", "ts"]
)
def test_onnx_export_with_dynamic_batch(method, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    names = ["f1", "f2", "coords"]
    args = make(2, 3, 7, 10, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            batch = torch.export.Dim("batch")
            model = torch.onnx.export(
                Lookup(method), args, dynamo=True, verbose=False, input_names=names, dynamic_shapes=({0: batch},) * 3
            ).model_proto
        else:
            f = io.BytesIO()
            axes = {name: {0: "batch"} for name in names}
            torch.onnx.export(Lookup(method), args, f, dynamo=False, input_names=names, dynamic_axes=axes)
            model = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # no custom op
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for B in (5, 1):
        f1, f2, coords = make(B, 3, 7, 10, torch.float32, seed=B)
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (f1, f2, coords))}
        (got,) = session.run(None, feed)
        assert_close_rel(torch.from_numpy(got), corr_pyramid_reference(f1, f2, coords, 2, 2), tol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_compiles_without_graph_break_forward_and_backward(method, fresh_dynamo):
    def f(a, b, c):
        return xcorr.CorrPyramid(a, b, 2, 2, method=method)(c).square().sum()

    f1, f2, coords = make(2, 3, 7, 10)
    compiled = [t.clone().requires_grad_(True) for t in (f1, f2, coords)]
    eager = [t.clone().requires_grad_(True) for t in (f1, f2, coords)]
    torch.compile(f, fullgraph=True, backend="aot_eager")(*compiled).backward()
    f(*eager).backward()
    for c, e in zip(compiled, eager):
        assert_close_rel(c.grad, e.grad)


def test_pyramids_of_one_signature_are_validated_and_planned_once(monkeypatch):
    f1, f2, coords = make(1, 4, 8, 8)
    xcorr.CorrPyramid(f1, f2, 2, 1)
    checks = []
    real = xcorr.volumes.pyramid.check_corr_pyramid
    monkeypatch.setattr(xcorr.volumes.pyramid, "check_corr_pyramid", lambda *a: checks.append(a[2:]) or real(*a))
    pyramids = [xcorr.CorrPyramid(f1, f2, 2, 1) for _ in range(3)]
    out = [p(coords) + p(coords) for p in pyramids]  # looked up twice: planned as the first one
    assert checks == [] and all(torch.equal(o, out[0]) for o in out)
    xcorr.CorrPyramid(f1, f2, 2, 2)  # another radius: validated once
    xcorr.CorrPyramid(f1, f2, 2, 2)
    assert checks == [(2, 2, "auto")]


def test_a_pyramid_builds_in_the_buffers_of_the_last_one_of_its_shape():
    from xcorr._spares import SPARES

    xcorr.clear_cache()
    f1, f2, coords = make(1, 3, 8, 9, torch.float32)
    pyr = xcorr.CorrPyramid(f1, f2, 2, 1, method="all_pairs")
    first = pyr(coords)
    volumes = [level.volume.data_ptr() for level in pyr._levels]
    assert len(SPARES) == 1  # the pooling's row sums, given back
    del pyr
    assert len(SPARES) == 3
    # A new pair of the same shape: the same memory, values of its own.
    pyr = xcorr.CorrPyramid(f2, f1, 2, 1, method="all_pairs")
    assert [level.volume.data_ptr() for level in pyr._levels] == volumes and len(SPARES) == 1
    assert_close_rel(pyr(coords), corr_pyramid_reference(f2, f1, coords, 2, 1), torch.float32)
    assert not torch.equal(pyr(coords), first)
    del pyr
    xcorr.clear_cache()
    assert len(SPARES) == 0


def test_a_pyramid_after_one_looked_up_once_is_planned_for_one_lookup():
    """RAFT's use (many lookups) keeps the volumes; a pyramid looked up once makes the next one of
    its signature correlate on demand, until a pyramid is looked up more than once again. (Not
    RAFT-Stereo's: there one lookup on demand measured slower than the volumes.)"""
    build = xcorr.CorrPyramid
    f1, f2, coords = make(1, 4, 8, 8)
    xcorr.clear_cache()
    first = build(f1, f2, 2, 1)
    assert first.method == "all_pairs"
    reference = first(coords)
    once = build(f1, f2, 2, 1)
    assert once.method == "on_demand"
    assert_close_rel(once(coords), reference)
    once(coords)  # now twice
    assert build(f1, f2, 2, 1).method == "all_pairs"
    build(f1, f2, 2, 1)(coords)
    assert build(f1, f2, 2, 1, method="all_pairs").method == "all_pairs"  # another signature
    xcorr.clear_cache()  # forgets the lookups seen
    assert build(f1, f2, 2, 1).method == "all_pairs"
    build(f1, f2, 2, 1)(coords)
    torch.use_deterministic_algorithms(True)
    try:
        assert build(f1, f2, 2, 1).method == "all_pairs"  # nothing seen decides there
    finally:
        torch.use_deterministic_algorithms(False)
    xcorr.clear_cache()
