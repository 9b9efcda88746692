"""xcorr.compat.skimage.match_template against scikit-image's and against a slow float64 loop.

scikit-image is exact where its integral images are (integer pixels: every window sum is an
exact integer in float64), and within about 1e-6 on float64 photographs; its float32 images sum
their integral images in float32, so float32 results are held against scikit-image on the
float64 copy of the same values, and against the loop.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import xcorr
from xcorr.compat.skimage import PAD_MODES, match_template

skimage = pytest.importorskip("skimage")
from skimage import data  # noqa: E402
from skimage.feature import match_template as skimage_match_template  # noqa: E402

#: Against scikit-image on photographs and random data (float64, or integer pixels).
TOL = 1e-5
#: Float32 results: the float64 scores rounded to float32.
TOL32 = 1e-6


def reference(image, template, pad_input=False, mode="constant", constant_values=0):
    """The definition, window by window in float64: ``sum I'T' / sqrt(sum I'^2 sum T'^2)``, 0 where
    that denominator is at most the result dtype's epsilon or the window holds one value."""
    dtype = np.float32 if image.dtype.kind == "f" and image.dtype.itemsize <= 4 else np.float64
    x = image.astype(dtype)
    if pad_input:  # as scikit-image pads (linear_ramp's values depend on the width), then cut
        kwargs = {"constant_values": constant_values} if mode == "constant" else {}
        x = np.pad(x, [(m, m) for m in template.shape], mode=mode, **kwargs)
        x = x[tuple(slice(m - m // 2, m + M + (m - 1) // 2) for m, M in zip(template.shape, image.shape))]
    windows = sliding_window_view(x.astype(np.float64), template.shape)
    axes = tuple(range(-template.ndim, 0))
    centred = windows - windows.mean(axes, keepdims=True)
    t = template.astype(np.float64)
    tc = t - t.mean() if t.max() > t.min() else np.zeros_like(t)
    num = (centred * tc).sum(axes)
    den = np.sqrt((centred**2).sum(axes) * (tc**2).sum())
    keep = (den > np.finfo(dtype).eps) & (windows.max(axes) > windows.min(axes))
    return np.where(keep, num / np.where(keep, den, 1), 0).astype(dtype)


def assert_close(actual, expected, tol):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        actual.shape,
        expected.shape,
        actual.dtype,
        expected.dtype,
    )
    assert np.isfinite(expected).all()
    err = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert err <= tol, f"max difference {err:.3g} > {tol:g}"


def rng(seed=0):
    return np.random.default_rng(seed)


def grey(name):
    image = getattr(data, name)()
    if image.ndim == 3:
        image = (image.astype(np.float64) @ [0.2125, 0.7154, 0.0721]).round().astype(np.uint8)
    return image


PHOTOS = ["camera", "coins", "moon", "page", "astronaut"]


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [(7, 7), (16, 23), (48, 48)])
@pytest.mark.parametrize("pad_input", [False, True])
def test_photos_match_skimage(name, size, pad_input):
    image = grey(name)
    top, left = image.shape[0] // 3, image.shape[1] // 4
    template = image[top : top + size[0], left : left + size[1]]
    for a, t in ((image, template), (image / 255.0, template / 255.0)):
        ours = match_template(a, t, pad_input=pad_input)
        assert_close(ours, skimage_match_template(a, t, pad_input=pad_input), TOL)
        assert ours.max() == pytest.approx(1.0, abs=1e-9) if not pad_input else True
    # float32: scikit-image's float32 integral images round; its float64 scores are the truth.
    a32, t32 = (image / 255.0).astype(np.float32), (template / 255.0).astype(np.float32)
    ours = match_template(a32, t32, pad_input=pad_input)
    expected = skimage_match_template(a32.astype(np.float64), t32.astype(np.float64), pad_input=pad_input)
    assert_close(ours, expected.astype(np.float32), TOL32)
    assert skimage_match_template(a32, t32, pad_input=pad_input).dtype == ours.dtype


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int64", "bool", "float16", "float32", "float64"])
def test_dtypes_as_skimage(dtype):
    # Floats in [0, 1]: scikit-image sums a float16 template's squares in float16, which overflow.
    scale = {"bool": 1.99, "float16": 1, "float32": 1, "float64": 1}.get(dtype, 200)
    image = (rng(1).random((19, 26)) * scale).astype(dtype)
    template = image[4:9, 7:13].copy()
    ours = match_template(image, template)
    expected = skimage_match_template(image, template)
    assert ours.dtype == expected.dtype == (np.float32 if dtype in ("float16", "float32") else np.float64)
    tol = TOL32 if dtype in ("float16", "float32") else 1e-12
    assert_close(ours, reference(image, template), tol)
    # scikit-image takes a float16 template's mean and squares in float16.
    assert_close(ours, expected, {"float16": 1e-3, "float32": 1e-4}.get(dtype, TOL))


def test_mixed_dtypes():
    image = rng(2).random((17, 20))
    template = (image[3:8, 2:9] * 100).astype(np.uint8)
    for a, t in ((image, template), (image.astype(np.float32), template.astype(np.float64))):
        ours = match_template(a, t)
        expected = skimage_match_template(a, t)
        assert ours.dtype == expected.dtype
        assert_close(ours, reference(a, t), TOL32)


@pytest.mark.parametrize("shape,size", [((1, 1), (1, 1)), ((5, 9), (5, 9)), ((13, 7), (1, 7)), ((9, 31), (4, 1))])
@pytest.mark.parametrize("pad_input", [False, True])
def test_odd_sizes(shape, size, pad_input):
    image = rng(3).random(shape)
    template = rng(4).random(size)
    ours = match_template(image, template, pad_input=pad_input)
    assert ours.shape == (shape if pad_input else tuple(M - m + 1 for M, m in zip(shape, size)))
    assert_close(ours, reference(image, template, pad_input), 1e-12)
    assert_close(ours, skimage_match_template(image, template, pad_input=pad_input), TOL)


NAMED_MODES = [m for m in PAD_MODES if m != "empty"]


@pytest.mark.parametrize("mode", NAMED_MODES)
@pytest.mark.parametrize("size", [(5, 5), (6, 9)])
def test_padding_modes(mode, size):
    image = (rng(5).random((21, 18)) * 255).astype(np.uint8)
    template = image[6 : 6 + size[0], 2 : 2 + size[1]]
    ours = match_template(image, template, pad_input=True, mode=mode)
    assert ours.shape == image.shape
    assert_close(ours, skimage_match_template(image, template, pad_input=True, mode=mode), TOL)
    assert_close(ours, reference(image, template, True, mode), 1e-12)


def test_padding_with_a_function_and_empty():
    def pad_with(vector, width, axis, kwargs):
        vector[: width[0]] = 7
        vector[vector.size - width[1] :] = -3

    image = rng(6).random((15, 16))
    template = image[2:7, 3:9]
    ours = match_template(image, template, pad_input=True, mode=pad_with)
    assert_close(ours, skimage_match_template(image, template, pad_input=True, mode=pad_with), TOL)
    # "empty" leaves the padding undefined: zeros here, so the windows inside the image keep
    # their exact scores whatever memory held, and calls repeat.
    empty = match_template(image, template, pad_input=True, mode="empty")
    assert empty.shape == image.shape
    assert_close(empty[2:-2, 3:-2], reference(image, template)[:, :], 1e-12)
    np.testing.assert_array_equal(empty, match_template(image, template, pad_input=True, mode="constant"))


@pytest.mark.parametrize("constant_values", [0, -1.5, 300, ((1, 2), (3, 4)), (5, 6)])
def test_constant_values(constant_values):
    image = (rng(7).random((14, 17)) * 255).astype(np.uint8)
    template = image[3:8, 4:8]
    ours = match_template(image, template, pad_input=True, constant_values=constant_values)
    expected = skimage_match_template(image, template, pad_input=True, constant_values=constant_values)
    assert_close(ours, expected, TOL)
    assert_close(ours, reference(image, template, True, "constant", constant_values), 1e-12)


def test_mode_unused_without_padding():
    image = rng(8).random((16, 16))
    template = image[2:7, 5:9]
    expected = match_template(image, template)
    for mode in ("reflect", "wrap", "edge"):
        assert_close(match_template(image, template, mode=mode), expected, 1e-12)
    assert_close(match_template(image, template, constant_values=9), expected, 1e-12)


def test_skimage_docstring_example():
    template = np.zeros((3, 3))
    template[1, 1] = 1
    image = np.zeros((6, 6))
    image[1, 1] = 1
    image[4, 4] = -1
    for pad_input in (False, True):
        ours = match_template(image, template, pad_input=pad_input)
        assert_close(ours, skimage_match_template(image, template, pad_input=pad_input), 1e-12)


def test_flat_and_dark_windows():
    """Black, constant and low-contrast regions: constant windows score 0, the others their
    ratio, however small their spread (OpenCV's rule calls some of these flat)."""
    image = (rng(9).random((64, 72)) * 255).astype(np.uint8)
    image[:20, :30] = 0  # black
    image[30:, 40:] = 200  # constant
    image[55:60, 60:65] = 201  # one grey level of contrast
    template = image[10:21, 25:37].copy()
    for a, t in ((image, template), (image / 255.0, template / 255.0)):
        for pad_input in (False, True):
            ours = match_template(a, t, pad_input=pad_input)
            assert_close(ours, reference(a, t, pad_input), 1e-9)
            assert_close(ours, skimage_match_template(a, t, pad_input=pad_input), TOL)
        ours = match_template(a, t)
        assert (ours[:10, :19] == 0).all() and (ours[30:45, 40:61] == 0).all()
        assert (ours[45:54, 49:61] != 0).all()  # the windows that hold the one-level square
    # On the float image OpenCV's rule (spread below 10 * FLT_EPSILON of the energy) gives some 0.
    opencv = xcorr.match_template(image / 255.0, template / 255.0)
    assert (opencv[45:54, 49:61] == 0).any()


def test_low_contrast_on_bright_image():
    """Spread below ``10 * FLT_EPSILON`` of the energy: scikit-image's ratio, not OpenCV's 0."""
    image = 100 + 1e-2 * rng(10).random((30, 33))
    template = image[5:14, 8:18].copy()
    ours = match_template(image, template)
    assert_close(ours, skimage_match_template(image, template), TOL)
    assert_close(ours, reference(image, template), 1e-6)
    assert (xcorr.match_template(image, template) == 0).all()
    assert np.abs(ours).max() > 0.5


def test_constant_template_and_tiny_values():
    image = rng(11).random((20, 22))
    for template in (np.full((4, 5), 0.3), np.full((4, 5), 0.1, np.float32)):
        ours = match_template(image, template)
        assert (ours == 0).all() and ours.shape == (17, 18)
    # The rule is absolute: spreads whose product is below epsilon squared score 0, as in scikit-image.
    tiny = image * 1e-9
    ours = match_template(tiny, tiny[3:7, 2:8])
    assert_close(ours, skimage_match_template(tiny, tiny[3:7, 2:8]), 1e-12)
    assert (ours == 0).all()
    small = image * 1e-6
    assert_close(match_template(small, small[3:7, 2:8]), reference(small, small[3:7, 2:8]), 1e-9)


def test_two_pixel_template():
    """A window of two integer pixels one apart has spread 0.5: OpenCV's rule calls it flat."""
    image = rng(12).integers(0, 3, (9, 12)).astype(np.uint8)
    template = np.array([[1, 2]], np.uint8)
    ours = match_template(image, template)
    assert_close(ours, skimage_match_template(image, template), 1e-12)
    assert (np.abs(ours) == 1).sum() > 0


def test_non_finite_pixels():
    image = rng(13).random((18, 19))
    template = image[4:9, 5:11].copy()
    bad = image.copy()
    bad[10, 3] = np.nan
    bad[2, 15] = np.inf
    ours = match_template(bad, template)
    held = np.zeros(bad.shape, bool)
    held[10, 3] = held[2, 15] = True
    held = sliding_window_view(held, template.shape).any((-2, -1))
    assert np.isnan(ours[held]).all() and not np.isnan(ours[~held]).any()
    assert_close(np.where(held, 0, ours), np.where(held, 0, reference(image, template)), 1e-9)
    template[0, 0] = np.nan
    assert np.isnan(match_template(image, template)).all()


def test_inputs_kept_and_non_contiguous():
    base = rng(14).random((40, 46))
    image = base.T[::2, 1::2]  # transposed and strided
    template = base[5:16:2, 7:20].T.copy().T
    before = image.copy(), template.copy()
    ours = match_template(image, template, pad_input=True, mode="reflect")
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(template, before[1])
    assert_close(ours, skimage_match_template(image, template, pad_input=True, mode="reflect"), TOL)
    read_only = np.ascontiguousarray(image)
    read_only.flags.writeable = False
    assert_close(match_template(read_only, template, pad_input=True, mode="reflect"), ours, 1e-12)


@settings(max_examples=25, deadline=None)
@given(
    H=st.integers(1, 24),
    W=st.integers(1, 24),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    pad_input=st.booleans(),
    mode=st.sampled_from(["constant", "reflect", "symmetric", "edge", "wrap", "mean"]),
    integer=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_skimage(H, W, h, w, pad_input, mode, integer, seed):
    h, w = min(h, H), min(w, W)
    image = rng(seed).random((H, W))
    if integer:
        image = (image * 255).astype(np.uint8)
    template = rng(seed + 1).random((h, w))
    ours = match_template(image, template, pad_input=pad_input, mode=mode)
    assert_close(ours, skimage_match_template(image, template, pad_input=pad_input, mode=mode), TOL)
    assert_close(ours, reference(image, template, pad_input, mode), 1e-9)


COLOUR = ["astronaut", "coffee", "chelsea"]


@pytest.mark.parametrize("name", COLOUR)
@pytest.mark.parametrize("size", [(7, 7), (16, 23)])
@pytest.mark.parametrize("pad_input", [False, True])
def test_colour_photos_match_skimage(name, size, pad_input):
    """(H, W, 3) with (h, w, 3): a 3-D match whose last axis the template covers, so the window
    mean is over all three channels; with ``pad_input`` the channel axis is padded too."""
    image = getattr(data, name)()[:160, :200]
    template = image[60 : 60 + size[0], 70 : 70 + size[1]]
    for a, t in ((image, template), (image / 255.0, template / 255.0)):
        ours = match_template(a, t, pad_input=pad_input)
        assert ours.shape == (image.shape if pad_input else (161 - size[0], 201 - size[1], 1))
        assert_close(ours, skimage_match_template(a, t, pad_input=pad_input), TOL)
    assert ours[60, 70, 0] == pytest.approx(1.0, abs=1e-9) if not pad_input else True


def test_colour_window_mean_over_all_channels():
    """Unlike OpenCV's colour ``ccoeff_normed`` (each channel minus its own mean), the window's
    mean is over its three channels: a window that differs from the template by a per-channel
    offset is a perfect match for OpenCV, not for scikit-image."""
    template = rng(15).random((6, 7, 3))
    image = rng(16).random((20, 21, 3))
    image[5:11, 4:11] = template + [0.5, -0.2, 0.1]
    ours = match_template(image, template)
    assert_close(ours, reference(image, template), 1e-12)
    assert_close(ours, skimage_match_template(image, template), TOL)
    assert xcorr.match_template(image, template)[5, 4] == pytest.approx(1.0, abs=1e-6)
    assert ours[5, 4, 0] < 0.9


@pytest.mark.parametrize("channels", [1, 2])
def test_colour_template_with_fewer_channels(channels):
    image = (rng(17).random((23, 25, 3)) * 255).astype(np.uint8)
    template = image[4:10, 6:13, :channels].copy()
    for pad_input in (False, True):
        ours = match_template(image, template, pad_input=pad_input, mode="symmetric")
        assert ours.shape == ((23, 25, 3) if pad_input else (18, 19, 4 - channels))
        assert_close(ours, skimage_match_template(image, template, pad_input=pad_input, mode="symmetric"), TOL)
        assert_close(ours, reference(image, template, pad_input, "symmetric"), 1e-12)


@pytest.mark.parametrize("shape,size", [((12, 13, 14), (3, 4, 5)), ((9, 8, 11), (9, 1, 2)), ((7, 10, 6), (2, 10, 6))])
@pytest.mark.parametrize("pad_input", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8"])
def test_volumes(shape, size, pad_input, dtype):
    scale = 255 if dtype == "uint8" else 1
    image = (rng(18).random(shape) * scale).astype(dtype)
    template = image[tuple(slice(0, m) for m in size)].copy()
    ours = match_template(image, template, pad_input=pad_input, mode="wrap")
    assert ours.shape == (shape if pad_input else tuple(M - m + 1 for M, m in zip(shape, size)))
    expected = skimage_match_template(image, template, pad_input=pad_input, mode="wrap")
    assert_close(ours, expected, 1e-4 if dtype == "float32" else TOL)  # its float32 integral images
    assert_close(ours, reference(image, template, pad_input, "wrap"), TOL32 if dtype == "float32" else 1e-12)


def test_volume_flat_blocks_and_non_finite():
    image = (rng(19).random((16, 14, 15)) * 255).astype(np.uint8).astype(np.float64)
    image[:8, :7, :] = 0
    image[9:, 6:, 5:] = 77
    template = image[5:10, 3:8, 4:8].copy()
    ours = match_template(image, template)
    assert_close(ours, reference(image, template), 1e-9)
    assert_close(ours, skimage_match_template(image, template), 1e-9)
    assert (ours[:4, :3] == 0).all() and (ours[9:, 6:, 5:] == 0).all()
    image[3, 12, 2] = np.nan
    ours = match_template(image, template)
    held = np.zeros(image.shape, bool)
    held[3, 12, 2] = True
    held = sliding_window_view(held, template.shape).any((-3, -2, -1))
    assert np.isnan(ours[held]).all() and not np.isnan(ours[~held]).any()


GOOD = np.zeros((8, 9))

BAD_INPUTS = [
    (lambda: match_template([[0.0] * 4] * 4, GOOD[:2, :2]), TypeError, r"image must be a numpy array, got list"),
    (lambda: match_template(torch.zeros(8, 9), GOOD[:2, :2]), TypeError, r"image must be a numpy array, got torch"),
    (lambda: match_template(GOOD, (1, 2)), TypeError, r"template must be a numpy array, got tuple"),
    (lambda: match_template(GOOD.astype(complex), GOOD[:2, :2]), TypeError, r"image must have a real dtype .* complex128"),
    (lambda: match_template(GOOD, GOOD[:2, :2].astype("U1")), TypeError, r"template must have a real dtype .* str"),
    (lambda: match_template(GOOD[0], GOOD[0, :2]), ValueError, r"image must be 2-D \(M, N\) or 3-D \(M, N, P\), got shape \(9,\)"),
    (lambda: match_template(np.zeros((2, 3, 4, 5)), np.zeros((1, 1, 1, 1))), ValueError, r"image must be 2-D \(M, N\) or 3-D \(M, N, P\), got shape \(2, 3, 4, 5\)"),
    (lambda: match_template(np.zeros((8, 9, 3)), GOOD[:2, :2]), ValueError, r"template must have the image's dimensionality; got image \(8, 9, 3\) and template \(2, 2\)"),
    (lambda: match_template(np.zeros((8, 9, 3)), np.zeros((2, 2, 4))), ValueError, r"template must not be larger than the image along any axis; got image \(8, 9, 3\) and template \(2, 2, 4\)"),
    (lambda: match_template(GOOD, GOOD[0, :2]), ValueError, r"template must have the image's dimensionality; got image \(8, 9\) and template \(2,\)"),
    (lambda: match_template(GOOD, GOOD[:0, :2]), ValueError, r"template must not be empty; got image \(8, 9\) and template \(0, 2\)"),
    (lambda: match_template(GOOD, np.zeros((9, 2))), ValueError, r"template must not be larger than the image .* template \(9, 2\)"),
    (lambda: match_template(GOOD, GOOD[:2, :2], pad_input=1), TypeError, r"pad_input must be a bool, got int"),
    (lambda: match_template(GOOD, GOOD[:2, :2], True, mode="reflective"), ValueError, r"mode must be a function or one of numpy.pad's modes .*'wrap'.*; got 'reflective'"),
    (lambda: match_template(GOOD, GOOD[:2, :2], True, mode=3), ValueError, r"mode must be .*; got 3"),
    (lambda: match_template(GOOD, GOOD[:2, :2], True, constant_values="a"), TypeError, r"constant_values must be a real number .*'a'"),
    (lambda: match_template(GOOD, GOOD[:2, :2], True, constant_values=[1, [2, 3]]), TypeError, r"constant_values must be a real number"),
    (lambda: match_template(GOOD, GOOD[:2, :2], True, constant_values=(1, 2, 3)), ValueError, r"constant_values must broadcast to one \(before, after\) pair per axis, shape \(2, 2\); got shape \(3,\)"),
]  # fmt: skip


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_exported():
    assert "skimage" in xcorr.compat.__all__
    assert xcorr.compat.skimage.match_template is match_template
