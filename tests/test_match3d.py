"""Template matching on volumes: tensors (N, C, D, H, W), numpy volumes, 3-D peaks; against a
float64 loop over every placement (OpenCV's definitions and flat-window rules in 3-D) and
scikit-image's ``match_template``."""

import itertools

import numpy as np
import pytest
import torch

import xcorr

METHODS = ["sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed"]
BOUNDS = {"sqdiff_normed": (0, 1), "ccorr_normed": (-1, 1), "ccoeff_normed": (-1, 1)}


def reference(image, template, method, mask=None):
    """OpenCV's definitions in float64, one placement at a time, with its rules for normed scores.

    image (C, D, H, W), template (C, d, h, w), mask broadcastable to the template or None: numpy.
    """
    image, template = np.asarray(image, np.float64), np.asarray(template, np.float64)
    _, d, h, w = template.shape
    m = np.ones_like(template) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), template.shape)
    out = np.zeros(tuple(n - t + 1 for n, t in zip(image.shape[1:], (d, h, w))))
    family, axes = method.split("_")[0], (1, 2, 3)
    for a, b, c in itertools.product(*map(range, out.shape)):
        win = image[:, a : a + d, b : b + h, c : c + w]
        if family == "ccoeff":
            t = m * (template - (m * template).sum(axes, keepdims=True) / m.sum(axes, keepdims=True))
            v = m * (win - (m * win).sum(axes, keepdims=True) / m.sum(axes, keepdims=True))
        else:
            t, v = m * template, m * win
        num = ((t - v) ** 2).sum() if family == "sqdiff" else (t * v).sum()
        if not method.endswith("normed"):
            out[a, b, c] = num
            continue
        energy, diff2, tz2 = ((m * win) ** 2).sum(), (v * v).sum(), (t * t).sum()
        if family == "ccoeff" and (tz2 / (m * m).sum(axes)).sum() < np.finfo(np.float64).eps:
            out[a, b, c] = 1.0  # flat template
            continue
        flat = diff2 <= min(0.5, 10 * np.finfo(np.float32).eps * energy)
        den = 0.0 if flat else np.sqrt(diff2 * tz2)
        worst = 1.0 if method == "sqdiff_normed" else 0.0
        if den == 0 or abs(num) >= 1.125 * den:
            out[a, b, c] = worst
        else:
            out[a, b, c] = np.clip(num / den, -1, 1)
    return out


def torch_reference(x, z, method, mask=None):
    """The reference of each image of a batch against its template: (N, 1, D', H', W')."""
    k = x.shape[0] // z.shape[0]
    out = []
    for n in range(x.shape[0]):
        m = None
        if mask is not None:
            m = mask.reshape(-1, *mask.shape[-4:]) if mask.dim() == 5 else mask
            m = (m[n // k if m.dim() == 5 and m.shape[0] > 1 else 0] if m.dim() == 5 else m).double().numpy()
        out.append(reference(x[n].double().numpy(), z[n // k].double().numpy(), method, m))
    return torch.from_numpy(np.stack(out)).unsqueeze(1)


def volume_pair(N, Nt, C, D, H, W, d, h, w, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, C, D, H, W, generator=g, dtype=torch.float64)
    z = torch.rand(Nt, C, d, h, w, generator=g, dtype=torch.float64)
    return x.to(dtype), z.to(dtype)


def assert_scores(out, expected, method, dtype):
    out, expected = out.double(), expected.double()
    assert out.shape == expected.shape
    if method.endswith("normed"):
        tol = 2e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(out, expected, rtol=0, atol=tol)
        low, high = BOUNDS[method]
        assert out.min() >= low and out.max() <= high
    else:
        tol = 2e-5 if dtype == torch.float32 else 1e-10
        assert (out - expected).abs().max() <= tol * expected.abs().max()


@pytest.fixture(params=["fft", "direct", "planner"])
def route(request, monkeypatch):
    """The numerator by FFT, by direct summation, then as the planner chooses."""
    if request.param != "planner":
        method = request.param
        monkeypatch.setattr(
            xcorr.matching.dense, "_numerator", lambda xs, zs: (xcorr.xcorr(xs, zs, method=method), method)
        )
    return request.param


# --- tensors against the float64 loop ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_tensor_volumes_match_reference(method, dtype, route):
    x, z = volume_pair(4, 2, 2, 7, 8, 9, 3, 4, 3, dtype)
    out = xcorr.match_template(x, z, method)
    assert out.dtype == dtype and out.shape == (4, 1, 5, 5, 7)
    assert_scores(out, torch_reference(x, z, method), method, dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask_shape", [(3, 2, 4), (1, 3, 2, 4), (2, 3, 2, 4), (2, 1, 3, 2, 4), (2, 2, 3, 2, 4)])
def test_tensor_volume_masks_match_reference(method, mask_shape):
    x, z = volume_pair(4, 2, 2, 6, 7, 8, 3, 2, 4, seed=3)
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(mask_shape, generator=g, dtype=torch.float64) + 0.05
    out = xcorr.match_template(x, z, method, mask=mask)
    full = mask
    while full.dim() < 5:
        full = full.unsqueeze(0)
    expected = torch.cat(
        [
            torch_reference(x[n : n + 1], z[n // 2 : n // 2 + 1], method, full[n // 2 if full.shape[0] > 1 else 0])
            for n in range(4)
        ]
    )
    assert_scores(out, expected, method, torch.float64)


@pytest.mark.parametrize("method", METHODS)
def test_binary_volume_masks_match_reference(method):
    x, z = volume_pair(2, 1, 1, 6, 5, 7, 3, 3, 3, torch.float32, seed=5)
    mask = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(6)) > 0.3
    out = xcorr.match_template(x, z, method, mask=mask)
    expected = torch_reference(x, z, method, mask.double())
    assert_scores(out, expected, method, torch.float32)
    torch.testing.assert_close(out, xcorr.match_template(x, z, method, mask=mask.to(torch.uint8) * 7))


@pytest.mark.parametrize("method", METHODS)
def test_batch_zero_and_one(method):
    x, z = volume_pair(1, 1, 2, 5, 6, 7, 2, 3, 2)
    assert_scores(xcorr.match_template(x, z, method), torch_reference(x, z, method), method, torch.float64)
    empty = xcorr.match_template(x[:0], z, method)
    assert empty.shape == (0, 1, 4, 4, 6)


@pytest.mark.parametrize("method", ["sqdiff_normed", "ccorr", "ccoeff_normed"])
def test_non_contiguous_and_untouched(method):
    x, z = volume_pair(2, 1, 3, 9, 7, 8, 3, 2, 4, torch.float32, seed=7)
    xt = x.permute(0, 1, 4, 3, 2).contiguous().permute(0, 1, 4, 3, 2)  # same values, other strides
    zt = z.transpose(2, 4).contiguous().transpose(2, 4)
    assert not xt.is_contiguous() and not zt.is_contiguous()
    before = (xt.clone(), zt.clone())
    out = xcorr.match_template(xt, zt, method)
    assert torch.equal(xt, before[0]) and torch.equal(zt, before[1])
    torch.testing.assert_close(out, xcorr.match_template(x, z, method), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(method, masked):
    x, z = volume_pair(2, 1, 2, 5, 4, 5, 2, 3, 2, seed=8)
    x.requires_grad_(True)
    z.requires_grad_(True)
    mask = (
        torch.rand(2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) + 0.2 if masked else None
    )
    assert torch.autograd.gradcheck(lambda a, b: xcorr.match_template(a, b, method, mask=mask), (x, z), fast_mode=True)


def dark_volume(seed=10, offset=0.0):
    """A float32 volume with a zeroed block holding sparse specks, a flat block, and noise."""
    rng = np.random.default_rng(seed)
    v = rng.random((2, 1, 14, 15, 16)).astype(np.float32) + np.float32(offset)
    v[:, :, 2:10, 1:11, 2:12] = 0  # black
    v[0, 0, 5, 4, 6] = v[1, 0, 7, 8, 3] = np.float32(1e-3)  # specks in the black
    v[1, 0, 3, 6, 9] = np.float32(0.5)
    v[:, :, 9:, 9:, 10:] = np.float32(0.7)  # flat, not black
    return torch.from_numpy(v)


@pytest.mark.parametrize("offset", [0.0, 50.0])
@pytest.mark.parametrize("method", ["sqdiff_normed", "ccorr_normed", "ccoeff_normed"])
def test_normed_scores_exact_on_dark_and_flat_windows(method, offset, route):
    x = dark_volume(offset=offset)
    z = x[:1, :, 4:8, 9:13, 8:13].clone() + torch.rand(1, 1, 4, 4, 5, generator=torch.Generator().manual_seed(11))
    out = xcorr.match_template(x, z, method)
    expected = torch_reference(x, z, method)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("method", METHODS)
def test_flat_and_zero_templates_follow_opencv(method):
    x = dark_volume()
    for value in (0.0, 0.3):
        z = torch.full((1, 1, 3, 4, 2), value)
        out = xcorr.match_template(x, z, method)
        assert torch.isfinite(out).all()
        assert_scores(out, torch_reference(x, z, method), method, torch.float32)
