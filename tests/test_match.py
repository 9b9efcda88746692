import itertools

import cv2
import numpy as np
import pytest
import torch
from helpers import LAYOUTS, relayout
from hypothesis import given, settings
from hypothesis import strategies as st

import xcorr
import xcorr.matching.dense
from xcorr.correlation.family import CORRELATION
from xcorr.correlation.spec import check_xcorr
from xcorr.planning.engine import ENGINE

METHODS = ["sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed"]
CV = {
    "sqdiff": cv2.TM_SQDIFF,
    "sqdiff_normed": cv2.TM_SQDIFF_NORMED,
    "ccorr": cv2.TM_CCORR,
    "ccorr_normed": cv2.TM_CCORR_NORMED,
    "ccoeff": cv2.TM_CCOEFF,
    "ccoeff_normed": cv2.TM_CCOEFF_NORMED,
}
BOUNDS = {"sqdiff_normed": (0, 1), "ccorr_normed": (-1, 1), "ccoeff_normed": (-1, 1)}


def reference(image, template, method, mask=None):
    """OpenCV's definitions in float64, one window at a time, with the documented bound rules.

    image (H, W, C), template (h, w, C), mask (h, w, C) or None: numpy float64.
    """
    H, W, C = image.shape
    h, w, _ = template.shape
    m = np.ones_like(template) if mask is None else np.broadcast_to(mask, template.shape)
    out = np.zeros((H - h + 1, W - w + 1))
    family = method.split("_")[0]
    for i, j in itertools.product(range(H - h + 1), range(W - w + 1)):
        win = image[i : i + h, j : j + w]
        if family == "ccoeff":
            t = m * (template - (m * template).sum((0, 1)) / m.sum((0, 1)))
            v = m * (win - (m * win).sum((0, 1)) / m.sum((0, 1)))
        else:
            t, v = m * template, m * win
        num = ((t - v) ** 2).sum() if family == "sqdiff" else (t * v).sum()
        if not method.endswith("normed"):
            out[i, j] = num
            continue
        energy = ((m * win) ** 2).sum()
        diff2 = (v * v).sum()
        tz2 = (t * t).sum()
        if family == "ccoeff" and (tz2 / (m * m).sum((0, 1))).sum() < np.finfo(np.float64).eps:
            out[i, j] = 1.0  # flat template
            continue
        flat = diff2 <= min(0.5, 10 * np.finfo(np.float32).eps * energy)
        den = 0.0 if flat else np.sqrt(diff2 * tz2)
        worst = 1.0 if method == "sqdiff_normed" else 0.0
        if den == 0:
            out[i, j] = worst
        elif abs(num) >= 1.125 * den:
            out[i, j] = worst
        else:
            out[i, j] = np.clip(num / den, -1, 1)
    return out


def hwc(a):
    a = np.asarray(a, dtype=np.float64)
    return a[..., None] if a.ndim == 2 else a


def image_pair(dtype, channels, seed=0, shape=(23, 29), tshape=(7, 9)):
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise, like a photograph, then scaled to the dtype's range.
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = np.sin(yy / 3.0)[..., None] + np.cos(xx / 4.0)[..., None] + rng.random(shape + (channels,))
    image = (base - base.min()) / np.ptp(base)
    if dtype == np.uint8:
        image = np.round(image * 255)
    image = image.astype(dtype)
    template = image[5 : 5 + tshape[0], 8 : 8 + tshape[1]].copy()
    template = (template * 0.75 + (20 if dtype == np.uint8 else 0.1)).astype(dtype)  # brightness/contrast change
    if channels == 1:
        image, template = image[..., 0], template[..., 0]
    return image, template


def make_mask(kind, shape, channels, dtype, seed=1):
    rng = np.random.default_rng(seed)
    mshape = shape if kind.endswith("1") or channels == 1 else shape + (channels,)
    if kind.startswith("binary"):
        return (rng.random(mshape) > 0.3).astype(np.uint8) * 255
    return (rng.random(mshape) + 0.05).astype(np.float32 if dtype == np.uint8 else dtype)


def opencv_masked(image, template, method, mask):
    """OpenCV's masked scores, held to the unmasked bounds (its masked normed scores may pass them)."""
    expected = cv2.matchTemplate(image, template, CV[method], mask=mask)
    return np.clip(expected, *BOUNDS[method]) if method in BOUNDS else expected


def assert_like_opencv(out, expected, method):
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.isfinite(out).all()
    if method.endswith("normed"):
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4)
    else:
        err = np.abs(out.astype(np.float64) - expected).max() / np.abs(expected).max()
        assert err <= 2e-5, f"relative error {err:.3g}"


def forced_numerator(method):
    """Matching's numerator computed by ``method``, whatever the planning engine would choose."""
    return lambda xs, zs: (xcorr.xcorr(xs, zs, "naive", method=method), method)


@pytest.fixture(params=["fft", "direct", "planner"])
def route(request, monkeypatch):
    """Run a test with the numerator by FFT, by direct summation, then as the planner chooses."""
    if request.param != "planner":
        monkeypatch.setattr(xcorr.matching.dense, "_numerator", forced_numerator(request.param))
    return request.param


# --- numpy drop-in, against OpenCV -------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("method", METHODS)
def test_numpy_matches_opencv(method, dtype, channels, route):
    image, template = image_pair(dtype, channels)
    out = xcorr.match_template(image, template, method)
    assert_like_opencv(out, cv2.matchTemplate(image, template, CV[method]), method)


@pytest.mark.parametrize("kind", ["binary1", "binaryC", "float1", "floatC"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_masked_matches_opencv(method, channels, kind):
    dtype = np.float32
    image, template = image_pair(dtype, channels, seed=2)
    mask = make_mask(kind, template.shape[:2], channels, dtype)
    out = xcorr.match_template(image, template, method, mask=mask)
    cv_mask = mask if mask.dtype == np.uint8 else mask.astype(template.dtype)
    assert_like_opencv(out, opencv_masked(image, template, method, cv_mask), method)


@pytest.mark.parametrize("method", METHODS)
def test_uint8_masked_matches_opencv(method):
    image, template = image_pair(np.uint8, 3, seed=3)
    mask = make_mask("binary1", template.shape[:2], 3, np.uint8)
    out = xcorr.match_template(image, template, method, mask=mask)
    assert_like_opencv(out, opencv_masked(image, template, method, mask), method)


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    image = data.astronaut()[::4, ::4].copy()  # 128 x 128 x 3 real photograph
    return image, image[40:57, 60:79].copy()


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_real_photo_matches_opencv(photo, method, grey):
    image, template = photo
    if grey:
        image, template = image.mean(2).astype(np.uint8), template.mean(2).astype(np.uint8)
    for img, tpl in ((image, template), (image.astype(np.float32) / 255, template.astype(np.float32) / 255)):
        out = xcorr.match_template(img, tpl, method)
        assert_like_opencv(out, cv2.matchTemplate(img, tpl, CV[method]), method)
        if method in ("sqdiff", "sqdiff_normed", "ccorr_normed", "ccoeff_normed"):
            assert cv2.minMaxLoc(out)[2 if method.startswith("sqdiff") else 3] == (60, 40)


def test_shipped_sample_photo_matches_opencv():
    from xcorr.demo import load_sample

    image = load_sample()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    template = image[100:120, 90:115].copy()
    out = xcorr.match_template(image[80:160, 60:160], template)
    assert_like_opencv(out, cv2.matchTemplate(image[80:160, 60:160], template, cv2.TM_CCOEFF_NORMED), "ccoeff_normed")


@pytest.mark.parametrize("method", METHODS)
def test_float64_numpy_matches_reference(method):
    image, template = image_pair(np.float64, 2, seed=4, shape=(13, 15), tshape=(4, 6))
    mask = np.random.default_rng(0).random(template.shape[:2]) + 0.1
    for m in (None, mask):
        out = xcorr.match_template(image, template, method, mask=m)
        expected = reference(hwc(image), hwc(template), method, None if m is None else m[..., None])
        scale = 1 if method.endswith("normed") else np.abs(expected).max()
        assert out.dtype == np.float32
        assert np.abs(out - expected).max() / scale < 1e-6


def test_numpy_layouts_and_inputs_untouched():
    image, template = image_pair(np.float32, 3, seed=5)
    expected = xcorr.match_template(image, template)
    before = image.copy(), template.copy()
    wide = np.zeros((image.shape[0], 2 * image.shape[1], 3), np.float32)
    wide[:, ::2] = image
    wide = wide[:, ::2]  # strided view
    readonly = image.copy()
    readonly.flags.writeable = False
    for img in (wide, readonly, np.asfortranarray(image)):
        np.testing.assert_allclose(xcorr.match_template(img, template), expected, atol=1e-6)
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(template, before[1])


def test_grey_image_with_one_channel_template():
    image, template = image_pair(np.float32, 1, seed=6)
    np.testing.assert_array_equal(
        xcorr.match_template(image, template[..., None]), xcorr.match_template(image, template)
    )


# --- flat windows and templates ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("method", METHODS)
def test_flat_windows_and_templates_follow_opencv(method, dtype):
    image, template = image_pair(dtype, 1, seed=7, shape=(24, 26), tshape=(6, 5))
    image[2:14, 3:15] = 9  # flat region: windows inside it have no variance
    image[16:, 18:] = 0  # zero region: windows there have no energy either
    flat = np.full_like(template, 9)
    zero = np.zeros_like(template)
    for tpl in (template, flat, zero):
        out = xcorr.match_template(image, tpl, method)
        if method in BOUNDS:
            assert_like_opencv(out, cv2.matchTemplate(image, tpl, CV[method]), method)
        else:
            # OpenCV's unnormalised scores of a flat template carry its float32 rounding (a
            # ccoeff of 1e-3 instead of 0): compare with the float64 definition at the data's scale.
            expected = reference(hwc(image), hwc(tpl), method)
            scale = np.abs(image.astype(np.float64)).max() ** 2 * tpl.size
            assert np.abs(out - expected).max() <= 2e-6 * scale
        if method in BOUNDS:
            lo, hi = BOUNDS[method]
            assert lo <= out.min() and out.max() <= hi
    if method == "ccoeff_normed":
        assert (xcorr.match_template(image, flat, method) == 1).all()
        assert xcorr.match_template(image, template, method)[4, 5] == 0  # flat window
    if method == "sqdiff_normed":
        assert xcorr.match_template(image, zero, method)[17, 19] == 1


@pytest.mark.parametrize("value", [0.3, 0.1, 1 / 3])
@pytest.mark.parametrize("masked", [False, True])
def test_constant_template_of_an_inexact_float32_is_flat(value, masked):
    # 0.3 has no exact float32: centred in float32, the template keeps residues of about 1e-8.
    image = np.random.default_rng(3).random((9, 10)).astype(np.float32)
    template = np.full((2, 3), value, np.float32)
    mask = np.ones((2, 3), np.uint8) if masked else None
    out = xcorr.match_template(image, template, "ccoeff_normed", mask=mask)
    assert (out == 1).all()
    assert (cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED) == 1).all()


@pytest.mark.parametrize("method", ["sqdiff_normed", "ccorr_normed", "ccoeff_normed"])
def test_masked_normed_scores_stay_bounded_where_opencv_does_not(method):
    rng = np.random.default_rng(8)
    image = rng.random((20, 20)).astype(np.float32)
    image[:10, :10] = 0.5 if method == "ccoeff_normed" else 0  # flat windows (no energy, for the others)
    template = rng.random((5, 5)).astype(np.float32)
    mask = np.zeros((5, 5), np.uint8)
    mask[1:4, 1:4] = 1
    flat_template = np.full_like(template, 0.25)
    for tpl in (template, flat_template):
        out = xcorr.match_template(image, tpl, method, mask=mask)
        lo, hi = BOUNDS[method]
        assert np.isfinite(out).all() and lo <= out.min() and out.max() <= hi
        expected = reference(hwc(image), hwc(tpl), method, hwc(mask.astype(np.float64)))
        np.testing.assert_allclose(out, expected, atol=2e-4)
    # OpenCV divides by zero on the flat windows (nan or inf); we give the worst score there.
    cv_out = cv2.matchTemplate(image, template, CV[method], mask=mask)
    assert not np.isfinite(cv_out[:5, :5]).all() or np.abs(cv_out).max() > 1
    assert (
        xcorr.match_template(image, template, method, mask=mask)[:5, :5] == (1 if method == "sqdiff_normed" else 0)
    ).all()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["sqdiff_normed", "ccorr_normed", "ccoeff_normed"]),
    masked=st.booleans(),
    levels=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
)
def test_property_normed_scores_bounded(seed, method, masked, levels, h, w):
    # Few grey levels make flat windows, flat templates and exact matches common.
    rng = np.random.default_rng(seed)
    image = rng.integers(0, levels, (9, 10)).astype(np.float32) * 0.3
    template = rng.integers(0, levels, (h, w)).astype(np.float32) * 0.3
    mask = rng.integers(0, 2, (h, w)).astype(np.uint8) if masked else None
    if mask is not None:
        mask[0, 0] = 1
    out = xcorr.match_template(image, template, method, mask=mask)
    lo, hi = BOUNDS[method]
    assert np.isfinite(out).all() and lo <= out.min() and out.max() <= hi
    expected = reference(hwc(image), hwc(template), method, None if mask is None else hwc(mask.astype(np.float64)))
    np.testing.assert_allclose(out, expected, atol=2e-4)


# --- torch: batched, any device, differentiable ------------------------------------------------


def torch_pair(N, Nt, C, H, W, h, w, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, C, H, W, generator=g, dtype=torch.float64)
    z = torch.rand(Nt, C, h, w, generator=g, dtype=torch.float64)
    return x.to(device, dtype), z.to(device, dtype)


def torch_reference(x, z, method, mask=None):
    k = x.shape[0] // z.shape[0]
    out = []
    for n in range(x.shape[0]):
        t = z[n // k].permute(1, 2, 0).double().cpu().numpy()
        m = None
        if mask is not None:
            mm = mask[n // k if mask.shape[0] > 1 else 0]
            m = mm.permute(1, 2, 0).double().cpu().numpy()
        out.append(reference(x[n].permute(1, 2, 0).double().cpu().numpy(), t, method, m))
    return torch.from_numpy(np.stack(out)).unsqueeze(1) if out else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_torch_batch_matches_reference(method, dtype, device, route):
    x, z = torch_pair(6, 3, 2, 11, 13, 4, 5, dtype, device)
    out = xcorr.match_template(x, z, method)
    assert out.shape == (6, 1, 8, 9) and out.dtype == dtype and out.device == x.device
    expected = torch_reference(x, z, method)
    tol = 2e-4 if dtype == torch.float32 else 1e-9
    scale = 1 if method.endswith("normed") else expected.abs().max()
    assert (out.double().cpu() - expected).abs().max() / scale < tol


@pytest.mark.parametrize("method", METHODS)
def test_torch_batch_matches_opencv_per_item(method, route):
    x, z = torch_pair(4, 2, 3, 17, 15, 5, 4, torch.float32, seed=3)
    out = xcorr.match_template(x, z, method)
    for n in range(4):
        img = x[n].permute(1, 2, 0).contiguous().numpy()
        tpl = z[n // 2].permute(1, 2, 0).contiguous().numpy()
        assert_like_opencv(out[n, 0].numpy(), cv2.matchTemplate(img, tpl, CV[method]), method)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), method=st.sampled_from(METHODS), masked=st.booleans())
def test_property_torch_shapes(data, method, masked):
    draw = data.draw
    Nt = draw(st.integers(1, 3))
    N = Nt * draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    H, W = draw(st.integers(h, h + 6)), draw(st.integers(w, w + 6))
    x, z = torch_pair(N, Nt, C, H, W, h, w, seed=draw(st.integers(0, 1000)))
    mask = torch.rand(Nt, C, h, w, dtype=torch.float64) + 0.1 if masked else None
    out = xcorr.match_template(x, z, method, mask=mask)
    expected = torch_reference(x, z, method, mask)
    scale = 1 if method.endswith("normed") else expected.abs().max().clamp_min(1e-12)
    assert out.shape == (N, 1, H - h + 1, W - w + 1)
    assert (out - expected).abs().max() / scale < 1e-9


@pytest.mark.parametrize("mask_shape", [(4, 5), (1, 4, 5), (2, 4, 5), (3, 1, 4, 5), (1, 2, 4, 5)])
@pytest.mark.parametrize("method", METHODS)
def test_torch_masks_match_reference(method, mask_shape, device):
    x, z = torch_pair(6, 3, 2, 10, 9, 4, 5, device=device, seed=1)
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device) + 0.1
    out = xcorr.match_template(x, z, method, mask=mask)
    m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).expand(-1, 2, -1, -1)
    expected = torch_reference(x, z, method, m4)
    scale = 1 if method.endswith("normed") else expected.abs().max()
    assert (out.cpu() - expected).abs().max() / scale < 1e-9


def test_torch_bool_and_uint8_masks_are_binary():
    x, z = torch_pair(2, 1, 1, 9, 9, 3, 3, seed=4)
    binary = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.float64)
    expected = xcorr.match_template(x, z, "ccoeff_normed", mask=binary)
    for mask in (binary.bool(), (binary * 7).to(torch.uint8)):
        torch.testing.assert_close(xcorr.match_template(x, z, "ccoeff_normed", mask=mask), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", ["sqdiff", "ccoeff_normed", "sqdiff_normed"])
def test_torch_non_contiguous_and_untouched(method, layout, route):
    x, z = torch_pair(4, 2, 3, 12, 12, 4, 4, seed=5)
    x, z = relayout(x, z, layout)
    before = x.clone(), z.clone()
    out = xcorr.match_template(x, z, method)
    expected = xcorr.match_template(x.contiguous(), z.contiguous(), method)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x, before[0], rtol=0, atol=0)
    torch.testing.assert_close(z, before[1], rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_torch_batch_zero_and_one(method):
    x, z = torch_pair(0, 2, 3, 9, 8, 3, 2)
    x.requires_grad_(True)
    z.requires_grad_(True)
    out = xcorr.match_template(x, z, method)
    assert out.shape == (0, 1, 7, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape and z.grad.shape == z.shape
    x1, z1 = torch_pair(1, 1, 1, 9, 8, 9, 8)  # template as large as the image: one position
    assert xcorr.match_template(x1, z1, method).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half_precision_returns_input_dtype(dtype):
    x, z = torch_pair(2, 1, 1, 12, 12, 4, 4, seed=6)
    out = xcorr.match_template(x.to(dtype), z.to(dtype))
    assert out.dtype == dtype
    expected = xcorr.match_template(x.to(dtype).double(), z.to(dtype).double())
    assert (out.double() - expected).abs().max() < (2e-2 if dtype == torch.bfloat16 else 4e-3)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method, masked, route):
    x, z = torch_pair(4, 2, 2, 7, 8, 3, 4, seed=7)
    x.requires_grad_(True)
    z.requires_grad_(True)
    mask = (
        torch.rand(1, 2, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.2
        if masked
        else None
    )
    assert torch.autograd.gradcheck(lambda a, b: xcorr.match_template(a, b, method, mask=mask), (x, z), fast_mode=True)


def test_large_image_pieces_match_one_piece(monkeypatch):
    # The window statistics are computed in pieces; the seams must not show.
    x, z = torch_pair(3, 3, 2, 40, 37, 6, 5, torch.float32, seed=8)
    whole = {m: xcorr.match_template(x, z, m) for m in METHODS}
    monkeypatch.setattr(xcorr.matching.dense, "_PIECE", 200)
    for m in METHODS:
        torch.testing.assert_close(
            xcorr.match_template(x, z, m), whole[m], rtol=0, atol=1e-5 * whole[m].abs().max().item()
        )


def test_variance_survives_a_large_mean():
    # Windows of small variance on a large offset: float32 sums of squares (about 6e9 here, so
    # rounded to a few hundred) would lose the variance (about 5) entirely.
    rng = np.random.default_rng(9)
    image = 1e4 + rng.random((40, 40))
    template = image[10:18, 12:20].copy()
    out = xcorr.match_template(image, template, "ccoeff_normed")
    expected = reference(hwc(image), hwc(template), "ccoeff_normed")
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out[10, 12] == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("shape, tshape", [((30, 31), (3, 3)), ((300, 310), (40, 40))])
def test_numerator_is_xcorrs_bound_call(monkeypatch, shape, tshape):
    calls = []
    real = xcorr.matching.dense.correlation.bound
    monkeypatch.setattr(xcorr.matching.dense.correlation, "bound", lambda *a, **k: calls.append(a) or real(*a, **k))
    image, template = image_pair(np.float32, 1, shape=shape, tshape=tshape)
    xcorr.match_template(image, template, "ccorr")
    ((x, z, mode),) = calls
    assert mode == "naive" and real(x, z, "naive").option == xcorr.choose_method(x, z, "naive")


@pytest.mark.usefixtures("fresh_planner")
def test_repeated_matching_picks_up_a_measured_winner():
    """A training loop of match_template gets what a loop of xcorr gets: the options tried on its
    repeated calls, and the winner kept for the numerator's problem."""
    x = torch.rand(2, 1, 48, 48, requires_grad=True)
    z = torch.rand(1, 1, 7, 7, requires_grad=True)
    key = CORRELATION.key(check_xcorr(x, z, "naive", 0, 1, 1), True)
    calls = 0
    while not ENGINE.is_measured(key):
        xcorr.match_template(x, z, "ccorr").sum().backward()
        calls += 1
        assert calls < 30
    assert ENGINE.measured_winners()[key] in CORRELATION.options(check_xcorr(x, z, "naive", 0, 1, 1), True)


@pytest.fixture
def fast_outcomes(monkeypatch):
    """Whether each piece's float32 window sums were kept (True) or redone in float64 (False)."""
    outcomes = []
    real = xcorr.matching.dense._centred_energy_fast

    def spy(*args):
        out = real(*args)
        outcomes.append(out is not None)
        return out

    monkeypatch.setattr(xcorr.matching.dense, "_centred_energy_fast", spy)
    return outcomes


@pytest.mark.parametrize("step, fast", [(0.0, True), (10.0, False)])
def test_float32_window_sums_or_float64_where_variance_is_small(fast_outcomes, step, fast):
    # With a step of 10 between the halves, every window's variance (about 1/12 per pixel) is
    # under 1% of its energy about the image mean (about 25 per pixel): float64 must take over.
    rng = np.random.default_rng(11)
    image = rng.random((40, 44)).astype(np.float32)
    image[:, 22:] += np.float32(step)
    template = image[6:15, 30:40].copy()
    out = xcorr.match_template(image, template, "ccoeff_normed")
    assert fast_outcomes and all(o == fast for o in fast_outcomes)
    # Against the float64 definition: OpenCV's own float32 numerator is off by 5e-4 with the step.
    np.testing.assert_allclose(out, reference(hwc(image), hwc(template), "ccoeff_normed"), atol=2e-5)
    if not step:
        assert_like_opencv(out, cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED), "ccoeff_normed")


def test_float32_window_sums_gradients(fast_outcomes):
    # The float32 path is differentiable: its gradients agree with the float64 path's (gradcheck).
    x, z = torch_pair(4, 2, 2, 21, 19, 9, 8, seed=12)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        a, b = x.to(dtype).requires_grad_(True), z.to(dtype).requires_grad_(True)
        out = xcorr.match_template(a, b, "ccoeff_normed")
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        grads[dtype] = (a.grad.double(), b.grad.double())
    assert fast_outcomes == [True]  # only the float32 call takes it
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        assert (g32 - g64).abs().max() <= 1e-3 * g64.abs().max()


# --- find_peaks --------------------------------------------------------------------------------


def test_find_peaks_agrees_with_minmaxloc():
    rng = np.random.default_rng(10)
    scores = rng.random((30, 40)).astype(np.float32)
    _, best, low, high = cv2.minMaxLoc(scores)
    ((x, y, s),) = xcorr.find_peaks(scores)
    assert (x, y) == high and s == pytest.approx(best)
    ((x, y, s),) = xcorr.find_peaks(torch.from_numpy(scores), largest=False)
    assert (x, y) == low


def test_find_peaks_suppresses_neighbours():
    scores = np.zeros((20, 20), np.float32)
    scores[5, 5], scores[5, 6], scores[6, 5] = 1.0, 0.9, 0.8
    scores[15, 12] = 0.5
    scores[5, 9] = 0.4
    assert xcorr.find_peaks(scores, 3) == [(5, 5, 1.0), (6, 5, pytest.approx(0.9)), (5, 6, pytest.approx(0.8))]
    near = xcorr.find_peaks(scores, 3, min_distance=4)
    assert [(x, y) for x, y, _ in near] == [(5, 5), (12, 15), (9, 5)]
    assert [(x, y) for x, y, _ in xcorr.find_peaks(scores, 3, min_distance=5)][:2] == [(5, 5), (12, 15)]
    assert len(xcorr.find_peaks(np.ones((2, 2), np.float32), 10)) == 4


def test_find_peaks_batch_and_ties():
    scores = torch.zeros(2, 1, 4, 5)
    scores[0, 0, 1, 2] = 3
    scores[1, 0, 3, 0] = scores[1, 0, 2, 4] = 7  # tie: first in row-major order
    assert xcorr.find_peaks(scores) == [[(2, 1, 3.0)], [(4, 2, 7.0)]]


# --- bad input ---------------------------------------------------------------------------------

IMG, TPL = np.zeros((10, 12), np.float32), np.zeros((3, 4), np.float32)
X, Z = torch.zeros(2, 3, 10, 12), torch.zeros(1, 3, 3, 4)
BAD_INPUTS = [
    (
        lambda: xcorr.match_template(IMG, TPL, "tm_ccoeff"),
        ValueError,
        r"unknown method 'tm_ccoeff'; valid values are 'sqdiff', 'sqdiff_normed', 'ccorr', 'ccorr_normed', 'ccoeff', 'ccoeff_normed'",
    ),
    (lambda: xcorr.match_template(IMG, TPL, 5), TypeError, r"method must be a string"),
    (
        lambda: xcorr.match_template(IMG, torch.zeros(3, 4)),
        TypeError,
        r"both be numpy arrays .* or both torch tensors.*got image numpy\.ndarray and template torch\.Tensor",
    ),
    (lambda: xcorr.match_template([[1]], TPL), TypeError, r"got image list"),
    (
        lambda: xcorr.match_template(IMG, np.zeros((11, 4), np.float32)),
        ValueError,
        r"template \(11x4\) must not be larger than the image \(10x12\)",
    ),
    (
        lambda: xcorr.match_template(IMG, np.zeros((3, 13), np.float32)),
        ValueError,
        r"must not be larger than the image",
    ),
    (lambda: xcorr.match_template(IMG, np.zeros((0, 4), np.float32)), ValueError, r"template must not be empty"),
    (
        lambda: xcorr.match_template(IMG, np.zeros((3, 4, 3), np.float32)),
        ValueError,
        r"same number of channels; got image \(10, 12\) \(1 channel\) and template \(3, 4, 3\) \(3 channels\)$",
    ),
    (
        lambda: xcorr.match_template(IMG[None], TPL[None]),
        ValueError,
        r"same number of channels; got image \(1, 10, 12\) \(12 channels\) and template \(1, 3, 4\) \(4 channels\)$",
    ),
    (
        lambda: xcorr.match_template(IMG[..., None][..., :0], TPL[..., None][..., :0]),
        ValueError,
        r"^image must have at least one channel, got shape \(10, 12, 0\)$",
    ),
    (
        lambda: xcorr.match_template(IMG, TPL[..., None][..., :0]),
        ValueError,
        r"^template must have at least one channel, got shape \(3, 4, 0\)$",
    ),
    (
        lambda: xcorr.match_template(np.zeros((2, 3, 4, 5, 1), np.float32), TPL),
        ValueError,
        r"image must be 2-D \(H, W\), 3-D \(H, W, C\) or 4-D \(D, H, W, C\) \(or pass channel_axis\), got shape \(2, 3, 4, 5, 1\)",
    ),
    (
        lambda: xcorr.match_template(IMG.astype(np.int32), TPL.astype(np.int32)),
        TypeError,
        r"image must have dtype uint8, float32, float64; got int32",
    ),
    (
        lambda: xcorr.match_template(IMG, TPL.astype(np.uint8)),
        TypeError,
        r"same dtype, got image float32 and template uint8",
    ),
    (
        lambda: xcorr.match_template(IMG, TPL, mask=np.ones((3, 5), np.uint8)),
        ValueError,
        r"mask must have the template's size.*got mask \(3, 5\) for template \(3, 4\)",
    ),
    (
        lambda: xcorr.match_template(IMG, TPL, mask=np.ones((3, 4, 2), np.uint8)),
        ValueError,
        r"mask must have the template's size with 1 channel, \(h, w\) or \(h, w, 1\); got mask \(3, 4, 2\) for template \(3, 4\)$",
    ),
    (
        lambda: xcorr.match_template(
            np.zeros((10, 12, 3), np.float32), np.zeros((3, 4, 3), np.float32), mask=np.ones((3, 4, 2), np.uint8)
        ),
        ValueError,
        r"mask must have the template's size with 1 or 3 channels, \(h, w\) or \(h, w, C\); got mask \(3, 4, 2\)",
    ),
    (
        lambda: xcorr.match_template(IMG, TPL, mask=np.ones((3, 4), np.int16)),
        TypeError,
        r"mask must have dtype bool, uint8, float32, float64; got int16",
    ),
    (lambda: xcorr.match_template(IMG, TPL, mask=torch.ones(3, 4)), TypeError, r"mask must be a numpy array"),
    (
        lambda: xcorr.match_template(IMG, TPL, mask=np.zeros((3, 4), np.uint8)),
        ValueError,
        r"mask must have a non-zero weight",
    ),
    (
        lambda: xcorr.match_template(IMG, TPL, mask=-np.ones((3, 4), np.float32)),
        ValueError,
        r"mask must be non-negative, got a minimum of -1",
    ),
    (
        lambda: xcorr.match_template(
            np.zeros((10, 12, 2), np.float32),
            np.zeros((3, 4, 2), np.float32),
            "ccoeff",
            mask=np.stack([np.ones((3, 4)), np.zeros((3, 4))], 2).astype(np.float32),
        ),
        ValueError,
        r"non-zero weight in every channel",
    ),
    (lambda: xcorr.match_template(X[0], Z), ValueError, r"image must be 4-D \(N, C, H, W\), got shape \(3, 10, 12\)"),
    (lambda: xcorr.match_template(X, Z[0]), ValueError, r"template must be 4-D \(Nt, C, h, w\)"),
    (
        lambda: xcorr.match_template(X.long(), Z.long()),
        TypeError,
        r"image must have a floating-point dtype, got torch\.int64",
    ),
    (
        lambda: xcorr.match_template(X, Z.double()),
        TypeError,
        r"same dtype, got image torch\.float32 and template torch\.float64",
    ),
    (lambda: xcorr.match_template(X, Z.to("meta")), ValueError, r"same device, got image on cpu and template on meta"),
    (
        lambda: xcorr.match_template(X, torch.zeros(1, 2, 3, 4)),
        ValueError,
        r"same number of channels; got image \(2, 3, 10, 12\) and template \(1, 2, 3, 4\)",
    ),
    (
        lambda: xcorr.match_template(X[:, :0], Z[:, :0]),
        ValueError,
        r"^image must have at least one channel, got shape \(2, 0, 10, 12\)$",
    ),
    (
        lambda: xcorr.match_template(X, Z[:, :0]),
        ValueError,
        r"^template must have at least one channel, got shape \(1, 0, 3, 4\)$",
    ),
    (
        lambda: xcorr.match_template(torch.zeros(3, 3, 10, 12), torch.zeros(2, 3, 3, 4)),
        ValueError,
        r"multiple of the number of templates",
    ),
    (
        lambda: xcorr.match_template(X, torch.zeros(0, 3, 3, 4)),
        ValueError,
        r"multiple of the number of templates Nt >= 1",
    ),
    (
        lambda: xcorr.match_template(X, torch.zeros(1, 3, 11, 4)),
        ValueError,
        r"template \(11x4\) must not be larger than the image \(10x12\)",
    ),
    (lambda: xcorr.match_template(X, torch.zeros(1, 3, 3, 0)), ValueError, r"template must not be empty"),
    (
        lambda: xcorr.match_template(X, Z, mask=torch.ones(2, 3, 3, 4)),
        ValueError,
        r"mask must be \(h, w\), \(1 or 3, h, w\) or \(1, 1 or 3, h, w\) with the template's \(h, w\) = \(3, 4\); got mask \(2, 3, 3, 4\)",
    ),
    (
        lambda: xcorr.match_template(X[:, :1], Z[:, :1].expand(2, 1, 3, 4), mask=torch.ones(2, 2, 3, 4)),
        ValueError,
        r"mask must be \(h, w\), \(1, h, w\) or \(1 or 2, 1, h, w\) with the template's \(h, w\) = \(3, 4\); got mask \(2, 2, 3, 4\)",
    ),
    (
        lambda: xcorr.match_template(X, Z, mask=torch.ones(2, 3, 4)),
        ValueError,
        r"got mask \(2, 3, 4\) for template \(1, 3, 3, 4\)",
    ),
    (lambda: xcorr.match_template(X, Z, mask=torch.ones(3, 5)), ValueError, r"got mask \(3, 5\)"),
    (
        lambda: xcorr.match_template(X, Z, mask=torch.ones(3, 4, dtype=torch.int32)),
        TypeError,
        r"mask must be floating-point, bool or uint8, got torch\.int32",
    ),
    (lambda: xcorr.match_template(X, Z, mask=np.ones((3, 4))), TypeError, r"mask must be a torch\.Tensor"),
    (
        lambda: xcorr.match_template(X, Z, mask=torch.ones(3, 4, device="meta")),
        ValueError,
        r"mask must be on the template's device cpu, got meta",
    ),
    (lambda: xcorr.find_peaks([1, 2]), TypeError, r"scores must be a numpy array or torch tensor, got list"),
    (
        lambda: xcorr.find_peaks(np.zeros(5)),
        ValueError,
        r"scores must be 2-D \(H', W'\) or 4-D \(N, 1, H', W'\), or for volumes 3-D \(D', H', W'\) or "
        r"5-D \(N, 1, D', H', W'\), got shape \(5,\)",
    ),
    (lambda: xcorr.find_peaks(torch.zeros(2, 2, 3, 3)), ValueError, r"got shape \(2, 2, 3, 3\)"),
    (lambda: xcorr.find_peaks(IMG, 0), ValueError, r"k must be a positive int, got 0"),
    (lambda: xcorr.find_peaks(IMG, 1.5), TypeError, r"k must be a positive int, got float 1\.5"),
    (lambda: xcorr.find_peaks(IMG, min_distance=0), ValueError, r"min_distance must be a positive int, got 0"),
    (
        lambda: xcorr.find_peaks(IMG, min_distance="far"),
        TypeError,
        r"min_distance must be a positive int, got str 'far'",
    ),
    (lambda: xcorr.find_peaks(IMG, largest=None), TypeError, r"largest must be a bool, got NoneType"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- dark and flat windows of real photographs -------------------------------------------------


def dark_photos():
    """Real photographs with dark and flat regions: astronaut's black sky as it is; coffee (colour)
    and camera (grey) with a region darkened to a few grey levels and a flat one."""
    from skimage import data

    coffee = data.coffee()[::2, ::2].copy()
    coffee[20:90, 150:260] //= 64
    coffee[120:180, 20:90] = 37
    camera = data.camera()[::2, ::2].copy()
    camera[10:80, 160:250] //= 50
    camera[150:200, 30:100] = 0
    camera[170, 60] = 1  # one non-zero pixel in the black: windows of energy 1
    return {"astronaut": data.astronaut()[::2, ::2].copy(), "coffee": coffee, "camera": camera}


@pytest.fixture(scope="module")
def darkened():
    return dark_photos()


@pytest.mark.parametrize("side", [16, 64, 128])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_scores_exact_on_dark_windows_of_photos(darkened, name, side):
    # A float32 numerator's error is about the same everywhere; dark and flat windows divide it
    # by a tiny spread. Every normed score must stay within 2e-4 of float64. OpenCV is the
    # reference for the others only: its normed scores are off float64 by up to 9e-4 here.
    image = darkened[name]
    rng = np.random.default_rng(side)
    r, c = rng.integers(0, image.shape[0] - side), rng.integers(0, image.shape[1] - side)
    template = image[r : r + side, c : c + side].copy()
    for method in METHODS:
        out = xcorr.match_template(image, template, method)
        exact = xcorr.match_template(image.astype(np.float64), template.astype(np.float64), method)
        assert_like_opencv(out, exact.astype(np.float64), method)
        if method not in BOUNDS:
            assert_like_opencv(out, cv2.matchTemplate(image, template, CV[method]), method)


@pytest.mark.parametrize("side", [32, 48, 64])
def test_scores_exact_on_windows_black_in_all_but_a_speck_of_colour(side):
    # Windows black in two channels and in all but a pixel or two of 1/255 in the third, on a
    # colour photograph: the float32 template's centring residue times the channel means once
    # moved ccoeff_normed by 1.2e-3 there (OpenCV too). Checked against the definition itself.
    from skimage import data

    photo = data.astronaut()
    image = photo.copy()
    image[300:420, 50:200] = 0
    specks = np.random.default_rng(side).random((120, 150)) < 0.002
    image[300:420, 50:200, 2][specks] = 1
    template = photo[100 : 100 + side, 200 : 200 + side].copy()
    T = template.astype(np.float64)
    Tc = T - T.mean((0, 1))
    for method in ("ccoeff_normed", "ccorr_normed", "sqdiff_normed"):
        out = xcorr.match_template(image, template, method)
        exact = xcorr.match_template(image.astype(np.float64), template.astype(np.float64), method)
        np.testing.assert_allclose(out, exact, rtol=0, atol=2e-4)
    out = xcorr.match_template(image, template, "ccoeff_normed")
    windows = [(r, c) for r in range(300, 421 - side, 11) for c in range(50, 201 - side, 13)]
    for r, c in windows:  # inside the black region
        window = image[r : r + side, c : c + side].astype(np.float64)
        Ic = window - window.mean((0, 1))
        den = np.sqrt((Ic**2).sum() * (Tc**2).sum())
        definition = (Ic * Tc).sum() / den if den > 0 else 0.0
        assert abs(out[r, c] - definition) < 2e-4


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("template_from", ["bright", "dark"])
def test_scores_exact_on_a_dark_region_of_a_bright_image(route, template_from, channels):
    # A region of spread 3e-4 on an image of mean about 40: float32 values shifted by that mean
    # keep only 4e-6 of each pixel, which once moved ccoeff_normed there by 2e-3. The float64
    # work (the recomputed numerators, the window sums) shifts the image itself.
    rng = np.random.default_rng(channels)
    image = (rng.random((61, 67, channels)) + 50).astype(np.float32)
    image[10:40, 20:55] *= 0.001
    if channels == 3:
        image[10:40, 20:55, :2] = 0
    image = image[..., 0] if channels == 1 else image
    r, c = (44, 5) if template_from == "bright" else (12, 24)
    template = image[r : r + 13, c : c + 11].copy()
    if template_from == "bright":
        template += rng.random(template.shape).astype(np.float32)
    for method in ("ccoeff_normed", "ccorr_normed", "sqdiff_normed"):
        out = xcorr.match_template(image, template, method)
        exact = xcorr.match_template(image.astype(np.float64), template.astype(np.float64), method)
        np.testing.assert_allclose(out, exact, rtol=0, atol=2e-4, err_msg=method)


@pytest.mark.parametrize("method", ["sqdiff_normed", "ccorr_normed", "ccoeff_normed"])
def test_masked_scores_exact_on_dark_windows_of_photos(darkened, method):
    image = darkened["coffee"]
    template = image[60:124, 200:264].copy()  # half dark, half not
    mask = make_mask("binary1", template.shape[:2], 3, np.uint8)
    out = xcorr.match_template(image, template, method, mask=mask)
    exact = xcorr.match_template(image.astype(np.float64), template.astype(np.float64), method, mask=mask)
    np.testing.assert_allclose(out, exact, rtol=0, atol=2e-4)


@pytest.mark.parametrize("route", ["fft", "direct"])
def test_recomputed_windows_are_few_and_exact(darkened, monkeypatch, route):
    monkeypatch.setattr(xcorr.matching.dense, "_numerator", forced_numerator(route))
    calls = []
    real = xcorr.matching.dense._Problem._recomputed
    monkeypatch.setattr(
        xcorr.matching.dense._Problem,
        "_recomputed",
        lambda self, num, inexact, *a: calls.append(int(inexact.sum())) or real(self, num, inexact, *a),
    )
    image = darkened["camera"].astype(np.float32) / 255
    template = image[100:132, 100:132].copy()
    out = xcorr.match_template(image, template, "ccorr_normed")
    exact = xcorr.match_template(image.astype(np.float64), template.astype(np.float64), "ccorr_normed")
    np.testing.assert_allclose(out, exact, rtol=0, atol=2e-4)
    assert sum(calls) < 0.1 * out.size  # the darkened region: 6.7% of the windows
    if route == "fft":
        assert calls  # the black region with one grey pixel needs float64


# --- non-finite pixels -------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_pixels_spoil_only_their_windows(method, masked):
    rng = np.random.default_rng(5)
    image = rng.random((40, 50)).astype(np.float32)
    template = image[10:17, 20:26].copy()
    image[20, 30], image[0, 0], image[39, 49] = np.nan, np.inf, -np.inf
    mask = np.ones((7, 6), np.uint8) if masked else None
    scores = xcorr.match_template(image, template, method, mask=mask)
    held = np.zeros(scores.shape, bool)
    held[14:21, 25:31] = held[0, 0] = held[33, 44] = True  # the windows that hold one
    assert np.array_equal(~np.isfinite(scores), held)
    clean = np.where(np.isfinite(image), image, 0).astype(np.float32)
    expected = xcorr.match_template(clean, template, method, mask=mask)
    np.testing.assert_allclose(scores[~held], expected[~held], rtol=1e-6, atol=1e-6)


def test_non_finite_pixels_in_a_batch_of_tensors():
    g = torch.Generator().manual_seed(6)
    x, z = torch.rand(3, 2, 20, 21, generator=g), torch.rand(3, 2, 5, 4, generator=g)
    x[1, 0, 7, 8] = float("nan")
    scores = xcorr.match_template(x, z)
    assert torch.isfinite(scores[[0, 2]]).all()
    assert torch.equal(torch.nonzero(~torch.isfinite(scores[1, 0])).amin(0), torch.tensor([3, 5]))
    assert int((~torch.isfinite(scores)).sum()) == 5 * 4


def test_non_finite_template_spoils_all_its_scores():
    x, z = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 3, 3)
    z[1, 0, 1, 1] = float("nan")
    scores = xcorr.match_template(x, z, "ccorr_normed")
    assert torch.isfinite(scores[0]).all() and torch.isnan(scores[1]).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_float32_normed_gradients_follow_float64(channels):
    # The float32 path (window sums, the numerator's corrections) keeps the autograd graph.
    gen = torch.Generator().manual_seed(channels)
    x = torch.rand(2, channels, 30, 31, generator=gen, requires_grad=True)
    z = torch.rand(1, channels, 7, 6, generator=gen, requires_grad=True)
    x64, z64 = (t.detach().double().requires_grad_() for t in (x, z))
    for method in ("ccoeff_normed", "ccorr_normed", "sqdiff_normed"):
        g = torch.randn(2, 1, 24, 26, generator=gen)
        got = torch.autograd.grad(xcorr.match_template(x, z, method), (x, z), g)
        want = torch.autograd.grad(xcorr.match_template(x64, z64, method), (x64, z64), g.double())
        for a, b in zip(got, want):
            assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max()


# --- match plans: one template, many images ------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype, channels", [(np.float32, 1), (np.uint8, 3), (np.float64, 1)])
def test_match_plan_equals_match_template_on_every_image(method, dtype, channels):
    rng = np.random.default_rng(3)
    frames = [
        (rng.random((s, s + 7) + ((channels,) if channels > 1 else ())) * 255).astype(dtype) for s in (41, 41, 57)
    ]
    template = frames[0][9:22, 5:20].copy()
    plan = xcorr.match_plan(template, method)
    for frame in frames:  # two image sizes: a numerator plan each
        out = plan(frame)
        assert out.dtype == np.float32
        # The same scores, up to float32 rounding: the plan and repeated calls may pick different
        # correlation methods.
        ref = xcorr.match_template(frame, template, method)
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("method", ["sqdiff_normed", "ccoeff_normed"])
def test_match_plan_on_tensors_batches_masks_and_half(method):
    x, z = torch.rand(6, 2, 30, 33), torch.rand(3, 2, 7, 6)
    plan = xcorr.match_plan(z, method)
    torch.testing.assert_close(plan(x), xcorr.match_template(x, z, method), rtol=0, atol=2e-6)
    torch.testing.assert_close(plan(x[:3]), xcorr.match_template(x[:3], z, method), rtol=0, atol=2e-6)
    mask = torch.rand(7, 6) > 0.3
    masked = xcorr.match_plan(z, method, mask=mask)
    torch.testing.assert_close(masked(x), xcorr.match_template(x, z, method, mask=mask), rtol=0, atol=2e-6)
    half = xcorr.match_plan(z.half(), method)
    torch.testing.assert_close(half(x.half()), xcorr.match_template(x.half(), z.half(), method), rtol=0, atol=2e-3)


def test_match_plan_is_differentiable_in_the_image_only():
    x = torch.rand(2, 1, 12, 11, dtype=torch.float64, requires_grad=True)
    z = torch.rand(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    plan = xcorr.match_plan(z, "ccoeff_normed")
    assert torch.autograd.gradcheck(plan, (x,))
    plan(x).sum().backward()
    assert z.grad is None


def test_match_plan_reads_the_template_once():
    template = IMG[2:5, 3:7].copy() + np.arange(12, dtype=np.float32).reshape(3, 4)
    image = np.zeros_like(IMG)
    image[4:7, 5:9] = template
    plan = xcorr.match_plan(template)
    before = plan(image)
    template[:] = 0  # changed in place afterwards: the plan does not see it
    np.testing.assert_array_equal(plan(image), before)


PLAN_BAD_INPUTS = [
    (lambda: xcorr.match_plan([[1.0]]), TypeError, r"template must be a numpy array \(h, w\[, C\]\) or a torch tensor"),
    (
        lambda: xcorr.match_plan(np.zeros((2, 2, 2, 2, 2), np.float32)),
        ValueError,
        r"template must be 2-D \(h, w\) or 3-D",
    ),
    (lambda: xcorr.match_plan(torch.zeros(3, 4)), ValueError, r"template must be 4-D"),
    (
        lambda: xcorr.match_plan(torch.zeros(1, 0, 3, 4)),
        ValueError,
        r"^template must have at least one channel, got shape \(1, 0, 3, 4\)$",
    ),
    (
        lambda: xcorr.match_plan(np.zeros((3, 4, 0), np.float32)),
        ValueError,
        r"^template must have at least one channel, got shape \(3, 4, 0\)$",
    ),
    (lambda: xcorr.match_plan(TPL, "zncc"), ValueError, r"unknown method 'zncc'; valid values are"),
    (lambda: xcorr.match_plan(TPL, mask=np.ones((2, 2), np.uint8)), ValueError, r"mask must have the template's size"),
    (lambda: xcorr.match_plan(TPL)(torch.zeros(1, 1, 10, 12)), TypeError, r"image and template must both be numpy"),
    (lambda: xcorr.match_plan(TPL)(IMG.astype(np.float64)), TypeError, r"image and template must have the same dtype"),
    (
        lambda: xcorr.match_plan(TPL)(IMG[:2]),
        ValueError,
        r"template \(3x4\) must not be larger than the image \(2x12\)",
    ),
    (
        lambda: xcorr.match_plan(torch.zeros(2, 1, 3, 3))(torch.zeros(3, 1, 8, 8)),
        ValueError,
        r"image's batch N must be a multiple of the number of templates",
    ),
]


@pytest.mark.parametrize("call, error, message", PLAN_BAD_INPUTS)
def test_match_plan_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("method", ["ccorr", "ccorr_normed", "sqdiff_normed", "ccoeff_normed"])
def test_stages_add_up_to_at_most_the_call(method):
    from xcorr.matching.stages import STAGES, timed

    image = np.random.default_rng(0).random((80, 90), dtype=np.float32)
    template = image[10:30, 20:45].copy()
    out, times = timed(lambda: xcorr.match_template(image, template, method))
    ref = xcorr.match_template(image, template, method)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * max(1.0, float(np.abs(ref).max())))
    assert set(times) == {*STAGES, "total"}
    assert times["numerator"] > 0 and sum(times[s] for s in STAGES) <= times["total"]
    assert (times["window statistics"] > 0) == method.endswith("_normed")
    _, off = timed(lambda: None)
    assert sum(off[s] for s in STAGES) == 0  # nothing is counted outside a match


@pytest.mark.parametrize("columns", [slice(None), slice(0, 20)])
def test_float64_redoes_only_boxes_around_low_contrast_windows(monkeypatch, columns):
    # A bright, low-contrast strip (or a patch of one corner) on top of a high-contrast image:
    # only the windows that reach into it need float64 sums, and only a box around them is
    # summed again.
    rng = np.random.default_rng(5)
    image = rng.random((120, 50)).astype(np.float32)
    patch = image[:12, columns]
    patch[...] = np.float32(0.9) + np.float32(1e-3) * rng.random(patch.shape).astype(np.float32)
    template = image[60:69, 10:20].copy()
    boxes = []
    real = xcorr.matching.dense._redone_boxes
    monkeypatch.setattr(xcorr.matching.dense, "_redone_boxes", lambda *a: boxes.extend(a[2]) or real(*a))
    out = xcorr.match_template(image, template, "ccoeff_normed")
    exact = xcorr.match_template(image.astype(np.float64), template.astype(np.float64), "ccoeff_normed")
    np.testing.assert_allclose(out, exact, rtol=0, atol=2e-4)
    (rows, cols), *others = boxes
    assert not others and rows[0] == 0 and rows[1] <= 12 < out.shape[0]
    width = out.shape[1] if columns.stop is None else columns.stop
    assert cols[0] == 0 and cols[1] <= width and (columns.stop is None or cols[1] < out.shape[1])


def test_boxes_cover_every_window_in_runs_of_rows():
    windows = torch.zeros(40, 30, dtype=torch.bool)
    windows[2, 5] = windows[6, 20] = windows[30:33, 10:12] = True
    boxes = xcorr.matching.dense._boxes(windows, (5, 4))
    assert boxes == [[(2, 7), (5, 21)], [(30, 33), (10, 12)]]  # rows 2 and 6 are less than 5 apart
    volume = torch.zeros(9, 8, 7, dtype=torch.bool)
    volume[1, 2, 3] = volume[2, 5, 1] = True
    assert xcorr.matching.dense._boxes(volume, (3, 3, 3)) == [[(1, 3), (2, 6), (1, 4)]]
