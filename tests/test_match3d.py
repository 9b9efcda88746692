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


# --- numpy volumes: channel_axis --------------------------------------------------------------


def numpy_volume(shape=(9, 10, 11), tshape=(3, 4, 5), channels=None, dtype=np.float32, seed=12):
    rng = np.random.default_rng(seed)
    extra = () if channels is None else (channels,)
    image = rng.random(shape + extra).astype(dtype)
    template = (image[2 : 2 + tshape[0], 3 : 3 + tshape[1], 1 : 1 + tshape[2]] * 0.8 + 0.1).astype(dtype)
    return image, template


@pytest.mark.parametrize("method", METHODS)
def test_numpy_grey_volume_with_no_channel_axis(method):
    image, template = numpy_volume()
    out = xcorr.match_template(image, template, method, channel_axis=None)
    assert out.dtype == np.float32 and out.shape == (7, 7, 7)
    expected = reference(image[None], template[None], method)
    assert_scores(torch.from_numpy(out), torch.from_numpy(expected), method, torch.float32)


@pytest.mark.parametrize("method", ["sqdiff", "ccorr_normed", "ccoeff_normed"])
def test_numpy_colour_volumes_at_any_channel_axis(method):
    image, template = numpy_volume(channels=2, dtype=np.float64)
    out = xcorr.match_template(image, template, method)  # (D, H, W, C), OpenCV's reading
    assert out.dtype == np.float32 and out.shape == (7, 7, 7)
    expected = reference(np.moveaxis(image, -1, 0), np.moveaxis(template, -1, 0), method)
    assert_scores(torch.from_numpy(out), torch.from_numpy(expected), method, torch.float32)
    for axis in (0, 1, -2):
        moved = xcorr.match_template(
            np.moveaxis(image, -1, axis), np.moveaxis(template, -1, axis), method, channel_axis=axis
        )
        np.testing.assert_array_equal(moved, out)
    torch.testing.assert_close(
        torch.from_numpy(out)[None, None],
        xcorr.match_template(
            torch.from_numpy(np.moveaxis(image, -1, 0))[None],
            torch.from_numpy(np.moveaxis(template, -1, 0))[None],
            method,
        ).float(),
    )


def test_numpy_images_keep_opencv_reading_and_channel_axis_zero():
    rng = np.random.default_rng(13)
    image = rng.random((12, 13, 3)).astype(np.float32)
    template = image[2:6, 3:8].copy()
    out = xcorr.match_template(image, template)
    np.testing.assert_array_equal(
        out, xcorr.match_template(np.moveaxis(image, -1, 0).copy(), np.moveaxis(template, -1, 0).copy(), channel_axis=0)
    )
    # channel_axis=None reads the same arrays as grey volumes.
    assert xcorr.match_template(image, template, channel_axis=None).shape == (9, 9, 1)


@pytest.mark.parametrize("method", METHODS)
def test_numpy_volume_masks(method):
    image, template = numpy_volume(channels=2, seed=14)
    mask = (np.random.default_rng(15).random(template.shape[:3]) > 0.3).astype(np.uint8)
    out = xcorr.match_template(image, template, method, mask=mask)
    expected = reference(np.moveaxis(image, -1, 0), np.moveaxis(template, -1, 0), method, mask.astype(bool)[None])
    assert_scores(torch.from_numpy(out), torch.from_numpy(expected), method, torch.float32)
    np.testing.assert_array_equal(out, xcorr.match_template(image, template, method, mask=mask[..., None]))
    grey, tgrey = numpy_volume(seed=16)
    out = xcorr.match_template(grey, tgrey, method, mask=mask, channel_axis=None)
    expected = reference(grey[None], tgrey[None], method, mask.astype(bool)[None])
    assert_scores(torch.from_numpy(out), torch.from_numpy(expected), method, torch.float32)


def test_match_plan_on_volumes():
    image, template = numpy_volume(seed=17)
    plan = xcorr.match_plan(template, channel_axis=None)
    np.testing.assert_array_equal(plan(image), xcorr.match_template(image, template, channel_axis=None))
    x, z = volume_pair(3, 1, 2, 8, 7, 9, 3, 2, 4, torch.float32, seed=18)
    torch.testing.assert_close(xcorr.match_plan(z, "sqdiff_normed")(x), xcorr.match_template(x, z, "sqdiff_normed"))


# --- against scikit-image ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, tshape", [((12, 13, 14), (4, 5, 3)), ((9, 16, 11), (9, 1, 6))])
def test_equals_skimage_on_volumes(shape, tshape, dtype):
    feature = pytest.importorskip("skimage.feature")
    image, template = numpy_volume(shape, tshape, dtype=dtype, seed=19)
    ours = xcorr.match_template(image, template, "ccoeff_normed", channel_axis=None)
    theirs = feature.match_template(image, template, pad_input=False)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


# --- find_peaks on volumes --------------------------------------------------------------------


def test_find_peaks_on_volumes():
    s = np.zeros((4, 5, 6), np.float32)
    s[1, 2, 3], s[1, 3, 4], s[3, 0, 5], s[2, 4, 0] = 9, 8, 7, 6
    assert xcorr.find_peaks(s, 3) == [(3, 2, 1, 9.0), (4, 3, 1, 8.0), (5, 0, 3, 7.0)]
    # The neighbour (Chebyshev distance 1 in 3-D) is suppressed.
    assert xcorr.find_peaks(s, 3, min_distance=2) == [(3, 2, 1, 9.0), (5, 0, 3, 7.0), (0, 4, 2, 6.0)]
    assert xcorr.find_peaks(-torch.from_numpy(s), 1, largest=False) == [(3, 2, 1, -9.0)]
    batch = torch.stack([torch.from_numpy(s), torch.from_numpy(s).flip(0)]).unsqueeze(1)
    assert xcorr.find_peaks(batch) == [[(3, 2, 1, 9.0)], [(3, 2, 2, 9.0)]]


def test_find_peaks_of_a_volume_match():
    image, template = numpy_volume((10, 11, 12), (4, 3, 5), seed=20)
    template = image[5:9, 2:5, 6:11].copy()
    assert xcorr.find_peaks(xcorr.match_template(image, template, channel_axis=None))[0][:3] == (6, 2, 5)


# --- bad inputs -------------------------------------------------------------------------------

VOL = np.zeros((6, 7, 8), np.float32)
TVOL = np.zeros((2, 3, 4), np.float32)
X5, Z5 = torch.zeros(2, 1, 6, 7, 8), torch.zeros(1, 1, 2, 3, 4)

BAD_INPUTS = [
    (lambda: xcorr.match_template(X5, Z5, channel_axis=None), ValueError, r"channel_axis applies to numpy arrays only"),
    (lambda: xcorr.match_template(X5, Z5, channel_axis=1), ValueError, r"leave channel_axis at -1, got channel_axis=1"),
    (
        lambda: xcorr.match_template(VOL, TVOL, channel_axis="last"),
        TypeError,
        r"channel_axis must be an int or None, got str",
    ),
    (
        lambda: xcorr.match_template(VOL, TVOL, channel_axis=True),
        TypeError,
        r"channel_axis must be an int or None, got bool",
    ),
    (
        lambda: xcorr.match_template(VOL, TVOL, channel_axis=3),
        ValueError,
        r"channel_axis 3 is out of range for image of shape \(6, 7, 8\)",
    ),
    (
        lambda: xcorr.match_template(VOL[0], TVOL[0], channel_axis=0),
        ValueError,
        r"with channel_axis=0, image must be 3-D \(an image\) or 4-D \(a volume\)",
    ),
    (
        lambda: xcorr.match_template(VOL[None, None], TVOL[None, None], channel_axis=None),
        ValueError,
        r"with channel_axis=None, image must be 2-D \(H, W\) or 3-D \(D, H, W\), got shape \(1, 1, 6, 7, 8\)",
    ),
    (
        lambda: xcorr.match_template(VOL, TVOL[0], channel_axis=None),
        ValueError,
        r"image and template must both be images or both volumes; under channel_axis=None image \(6, 7, 8\) is a volume",
    ),
    (
        lambda: xcorr.match_template(VOL[..., None], TVOL),
        ValueError,
        r"both be images or both volumes.*image \(6, 7, 8, 1\) is a volume and template \(2, 3, 4\) an image",
    ),
    (
        lambda: xcorr.match_template(VOL, np.zeros((7, 3, 4), np.float32), channel_axis=None),
        ValueError,
        r"template \(7x3x4\) must not be larger than the image \(6x7x8\)",
    ),
    (
        lambda: xcorr.match_template(X5, torch.zeros(1, 1, 2, 8, 4)),
        ValueError,
        r"template \(2x8x4\) must not be larger than the image \(6x7x8\)",
    ),
    (
        lambda: xcorr.match_template(X5, Z5[0]),
        ValueError,
        r"template must be 5-D \(Nt, C, d, h, w\), got shape \(1, 2, 3, 4\)",
    ),
    (
        lambda: xcorr.match_template(X5[0], Z5),
        ValueError,
        r"template must be 4-D \(Nt, C, h, w\), got shape \(1, 1, 2, 3, 4\)",
    ),
    (lambda: xcorr.match_template(X5, torch.zeros(1, 2, 2, 3, 4)), ValueError, r"same number of channels"),
    (
        lambda: xcorr.match_template(X5, Z5, mask=torch.ones(2, 3, 5)),
        ValueError,
        r"mask must be \(d, h, w\), \(1, d, h, w\) or \(1, 1, d, h, w\) with the template's \(d, h, w\) = \(2, 3, 4\); got mask \(2, 3, 5\)",
    ),
    (
        lambda: xcorr.match_template(VOL, TVOL, mask=np.ones((2, 3, 5)), channel_axis=None),
        ValueError,
        r"mask must have the template's size with 1 channel, \(d, h, w\); got mask \(2, 3, 5\) for template \(2, 3, 4\)",
    ),
    (
        lambda: xcorr.match_template(VOL[..., None], TVOL[..., None], mask=np.ones((2, 3, 4, 2))),
        ValueError,
        r"mask must have the template's size with 1 channel, \(d, h, w\) or \(d, h, w, 1\)",
    ),
    (lambda: xcorr.match_template(X5, Z5, mask=torch.zeros(2, 3, 4)), ValueError, r"mask must have a non-zero weight"),
    (lambda: xcorr.find_peaks(np.zeros((2, 2, 3, 3, 3))), ValueError, r"got shape \(2, 2, 3, 3, 3\)"),
    (lambda: xcorr.find_peaks(np.zeros((2, 1, 3, 3, 3, 1))), ValueError, r"5-D \(N, 1, D', H', W'\)"),
    (lambda: xcorr.xcorr(X5, Z5, padding=1), ValueError, r"padding must be 0 for volumes"),
    (
        lambda: xcorr.xcorr(X5, Z5, method="gather"),
        ValueError,
        r"unknown method 'gather'; valid values are 'auto', 'direct', 'fft'",
    ),
    (
        lambda: xcorr.xcorr(X5, Z5, "upchannel"),
        ValueError,
        r"unknown mode 'upchannel'; valid values are 'naive', 'depthwise'",
    ),
    (lambda: xcorr.xcorr(X5, Z5[0]), ValueError, r"z must be 5-D \(Bz, C, d, h, w\)"),
    (lambda: xcorr.xcorr(Z5, X5[:1]), ValueError, r"the template must fit in the search"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- the correlation engine on volumes ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["naive", "depthwise"])
@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
def test_volume_xcorr_matches_conv3d_and_is_differentiable(mode, method):
    x, z = volume_pair(4, 2, 3, 6, 5, 7, 2, 3, 2, seed=21)
    out = xcorr.xcorr(x, z, mode, method=method)
    groups = [torch.nn.functional.conv3d(x[n : n + 1], z[n // 2].unsqueeze(1), groups=3) for n in range(4)]
    expected = torch.cat(groups)
    torch.testing.assert_close(out, expected.sum(1, keepdim=True) if mode == "naive" else expected)
    a, b = x[:2].clone().requires_grad_(True), z[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: xcorr.xcorr(a, b, mode, method=method), (a, b), fast_mode=True)


def test_volume_problems_are_planned():
    from xcorr.correlation.family import CORRELATION_3D
    from xcorr.correlation.spec import check_xcorr3d
    from xcorr.planning import ENGINE

    small = check_xcorr3d(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 3, 3, 3), "naive", 0, 1, 1)
    large = check_xcorr3d(torch.zeros(1, 1, 64, 64, 64), torch.zeros(1, 1, 16, 16, 16), "naive", 0, 1, 1)
    assert ENGINE.family_of(small) is CORRELATION_3D
    costs = ENGINE.estimate(large)
    assert set(costs) == {"direct", "fft"} and costs["fft"] < costs["direct"]
    assert ENGINE.decide(small) == "direct"
    # 16³ taps pass float32 direct summation's precision: FFT is the only candidate.
    assert CORRELATION_3D.options(large, False) == ["fft"]
