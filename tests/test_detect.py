import numpy as np
import pytest
import torch

import xcorr
from xcorr.matching import detect
from xcorr.matching.detect import _resized, _suppressed
from xcorr.matching.many import SHARED, _many

METHODS = ["sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed"]
NORMED = {"sqdiff_normed", "ccorr_normed", "ccoeff_normed"}


def resized(template: np.ndarray, scale: float) -> np.ndarray:
    """The documented resizing of a numpy (h, w) template, as find_matches applies it."""
    t = torch.from_numpy(template)[None, None]
    return _resized(t, scale)[0, 0].numpy()


def scene(seed=0, noise=0.02, side=(120, 150)):
    """A grey scene of uniform noise with three templates pasted at known places: two at scale 1
    (one pair touching side by side), one at 1.5 and one at 0.75; returns the image, the
    templates and the expected matches {(template, scale, x, y)}."""
    rng = np.random.default_rng(seed)
    image = (0.5 + 0.1 * rng.standard_normal(side)).astype(np.float32)
    templates = [rng.random((14, 14), dtype=np.float32), rng.random((12, 17), dtype=np.float32)]
    templates.append(rng.random((16, 16), dtype=np.float32))
    placed = [
        (0, 1.0, 5, 7),
        (1, 1.0, 19, 7),
        (2, 1.0, 60, 70),
        (0, 1.5, 90, 20),
        (1, 0.75, 30, 80),
        (2, 0.75, 110, 95),
    ]
    for i, s, x, y in placed:
        t = resized(templates[i], s)
        image[y : y + t.shape[0], x : x + t.shape[1]] = t
    image += (noise * rng.standard_normal(side)).astype(np.float32)
    return image, templates, set(placed)


def found_set(m):
    return {(int(t), float(s), int(b[0]), int(b[1])) for t, s, b in zip(m.template, m.scale, m.boxes)}


@pytest.mark.parametrize("method, threshold", [("ccoeff_normed", 0.8), ("ccorr_normed", 0.995)])
def test_every_object_found_once(method, threshold):
    image, templates, expected = scene()
    m = xcorr.find_matches(image, templates, method, threshold=threshold, scales=[0.75, 1.0, 1.5])
    assert found_set(m) == expected
    assert len(m) == len(expected)  # no duplicates
    assert np.all(np.diff(m.scores) <= 0)  # best first
    for t, s, b in zip(m.template, m.scale, m.boxes):
        assert tuple(b[2:]) == resized(templates[t], s).shape[::-1]


def test_touching_objects_kept_at_zero_overlap():
    image, templates, expected = scene()
    m = xcorr.find_matches(image, templates, threshold=0.8, scales=[0.75, 1.0, 1.5], max_overlap=0.0)
    assert {(0, 1.0, 5, 7), (1, 1.0, 19, 7)} <= found_set(m)  # x 5 + 14 = 19: they share an edge
    assert found_set(m) == expected


def test_no_false_match_above_threshold():
    image, templates, expected = scene()
    m = xcorr.find_matches(image, templates, threshold=0.8, scales=[0.75, 1.0, 1.5])
    # The best non-object score of every template and scale stays below the threshold.
    for i, t in enumerate(templates):
        for s in (0.75, 1.0, 1.5):
            scores = xcorr.match_template(image, resized(t, s))
            for j, sc, x, y in expected:
                if (j, sc) == (i, s):
                    scores[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = -1
            assert scores.max() < 0.8
    assert len(m) == len(expected)


@pytest.mark.parametrize("method, threshold", [("sqdiff", 0.5), ("sqdiff_normed", 0.01)])
def test_sqdiff_lower_is_better(method, threshold):
    image, templates, expected = scene(noise=0.0)
    m = xcorr.find_matches(image, templates, method, threshold=threshold, scales=[0.75, 1.0, 1.5])
    assert found_set(m) == expected
    assert np.all(np.diff(m.scores) >= 0)  # best (smallest) first
    assert np.all(m.scores <= threshold)


def test_k_keeps_the_best():
    image, templates, expected = scene()
    every = xcorr.find_matches(image, templates, threshold=0.8, scales=[0.75, 1.0, 1.5])
    best = xcorr.find_matches(image, templates, threshold=0.8, scales=[0.75, 1.0, 1.5], k=2)
    assert len(best) == 2
    np.testing.assert_array_equal(best.boxes, every.boxes[:2])


def test_result_types_numpy():
    image, templates, _ = scene()
    m = xcorr.find_matches(image, templates[0], threshold=0.8)
    assert isinstance(m, xcorr.Matches)
    assert all(isinstance(a, np.ndarray) for a in (m.boxes, m.scores, m.template, m.scale))
    assert (m.boxes.dtype, m.scores.dtype, m.template.dtype, m.scale.dtype) == (
        np.int64,
        np.float32,
        np.int64,
        np.float64,
    )
    assert m.boxes.shape == (len(m), 4) and found_set(m) == {(0, 1.0, 5, 7)}
    empty = xcorr.find_matches(image, templates[0], threshold=1.0 + 1e-6)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_batch(dtype):
    a, templates, expected_a = scene(seed=0)
    b, _, _ = scene(seed=1)
    b[:] = np.roll(a, (3, 4), (0, 1))  # the same objects, moved
    x = torch.from_numpy(np.stack([a, b]))[:, None].to(dtype)
    zs = [torch.from_numpy(t)[None].to(dtype) for t in templates]
    out = xcorr.find_matches(x, zs, threshold=0.8, scales=[0.75, 1.0, 1.5])
    assert isinstance(out, list) and len(out) == 2
    for m in out:
        assert all(isinstance(t, torch.Tensor) for t in (m.boxes, m.scores, m.template, m.scale))
        assert m.scores.dtype == dtype and m.boxes.dtype == torch.int64
    assert found_set(out[0]) == expected_a
    moved = {(i, s, x + 4, y + 3) for i, s, x, y in expected_a}
    assert moved <= found_set(out[1])
    # One image (C, H, W) gives one record; non-contiguous inputs are fine.
    one = xcorr.find_matches(
        x[0].transpose(1, 2).contiguous().transpose(1, 2), zs, threshold=0.8, scales=[0.75, 1.0, 1.5]
    )
    assert isinstance(one, xcorr.Matches)
    assert torch.equal(one.boxes, out[0].boxes)
    assert xcorr.find_matches(x[:0], zs, threshold=0.8) == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_equal_match_template(method, dtype):
    """Every reported score is match_template's at that placement (within the normed scores'
    2e-4 of float64, and of each other), every template and scale."""
    rng = np.random.default_rng(3)
    image = rng.random((61, 75)).astype(dtype)
    image[:20, :30] *= 1e-3  # dark windows
    image[40:, 50:] = 0.5  # flat windows
    templates = [image[5:16, 8:21].copy(), rng.random((9, 9)).astype(dtype), image[30:44, 40:52].copy()]
    lower = method.startswith("sqdiff")
    threshold = {"sqdiff": 50.0, "sqdiff_normed": 0.5, "ccorr": 5.0, "ccorr_normed": 0.5, "ccoeff": -100.0}
    m = xcorr.find_matches(image, templates, method, threshold=threshold.get(method, -0.5), scales=[0.8, 1.0, 1.3])
    assert len(m) > 5
    for t, s, (x, y, w, h), score in zip(m.template, m.scale, m.boxes, m.scores):
        z = resized(templates[t].astype(np.float64), s).astype(dtype)
        assert z.shape == (h, w)
        ours = xcorr.match_template(image, z, method)[y, x]
        exact = xcorr.match_template(image.astype(np.float64), z.astype(np.float64), method)[y, x]
        if method in NORMED:
            tol = 2e-4 if dtype == np.float32 else 1e-9
            assert abs(score - exact) <= tol and abs(score - ours) <= tol
        else:
            scale = np.abs(xcorr.match_template(image.astype(np.float64), z.astype(np.float64), method)).max()
            assert abs(score - exact) <= 2e-5 * scale + 1e-6
        assert (score <= m.scores[0]) if not lower else (score >= m.scores[0])


@pytest.mark.parametrize("method", SHARED)
def test_shared_scores_every_window(method):
    """The shared path's maps equal match_template's at every window, and float64's within the
    normed scores' 2e-4 (templates of three sizes, two images: one with dark windows, one on a
    bright offset)."""
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.random((2, 1, 47, 53), dtype=np.float32))
    x[0, :, :15, :20] *= 0.01
    x[1] += 50
    zs = [x[:1, :, 3:13, 5:17].clone(), torch.rand(1, 1, 7, 7), x[1:, :, 20:34, 30:45].clone()]
    for z, s in zip(zs, _many(x, zs, method)):
        expected = xcorr.match_template(x.double(), z.double(), method).float()
        alone = xcorr.match_template(x, z, method)
        assert s.shape == expected.shape
        tol = 2e-4 if method in NORMED else 1e-4 * float(expected.abs().max())
        assert float((s - expected).abs().max()) <= tol
        assert float((s - alone).abs().max()) <= tol


@pytest.mark.parametrize("method", [m for m in SHARED if m in NORMED])
def test_shared_scores_exact_on_a_dark_region_of_a_bright_image(method):
    # The case of test_match's test_scores_exact_on_a_dark_region_of_a_bright_image on the shared
    # path: its float64 window sums shift the image itself, as match_template's do.
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((1, 1, 61, 67), dtype=np.float32) + 50)
    x[..., 10:40, 20:55] *= 0.001
    zs = [x[:, :, 12:25, 24:35].clone(), x[:, :, 44:57, 5:16] + torch.rand(1, 1, 13, 11)]
    for z, s in zip(zs, _many(x, zs, method)):
        exact = xcorr.match_template(x.double(), z.double(), method).float()
        assert float((s - exact).abs().max()) <= 2e-4


def test_masks_and_rgb():
    rng = np.random.default_rng(7)
    image = rng.random((50, 60, 3), dtype=np.float32)
    template = image[10:22, 30:45].copy()
    mask = np.zeros((12, 15), np.uint8)
    mask[2:10, 3:12] = 1
    m = xcorr.find_matches(image, [template, template[:8, :8].copy()], threshold=0.95, mask=[mask, None])
    assert {(0, 1.0, 30, 10), (1, 1.0, 30, 10)} & found_set(m)
    for t, (x, y, _, _), score in zip(m.template, m.boxes, m.scores):
        expected = xcorr.match_template(image, [template, template[:8, :8].copy()][t], mask=[mask, None][t])[y, x]
        assert abs(score - expected) <= 2e-4


def test_nan_windows_never_match():
    image, templates, expected = scene()
    image[50:54, 120:124] = np.nan
    m = xcorr.find_matches(image, templates, threshold=0.8, scales=[0.75, 1.0, 1.5])
    assert found_set(m) == expected and np.all(np.isfinite(m.scores))


def test_templates_larger_than_the_image_are_skipped():
    image, templates, _ = scene()
    big = np.random.default_rng(0).random((100, 100), dtype=np.float32)
    m = xcorr.find_matches(image, [templates[0], big], threshold=0.8, scales=[1.0, 1.5])
    assert set(m.template.tolist()) == {0}
    with pytest.raises(ValueError, match=r"no template fits the image \(120x150\) at any scale of \[1\.5\]"):
        xcorr.find_matches(image, big, threshold=0.8, scales=[1.5])


def reference_nms(boxes, scores, overlap):
    """Greedy non-maximum suppression, one box at a time (torchvision's nms, stable ties)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        x0, y0, w0, h0 = boxes[i]
        ok = True
        for j in keep:
            x1, y1, w1, h1 = boxes[j]
            iw = max(0, min(x0 + w0, x1 + w1) - max(x0, x1))
            ih = max(0, min(y0 + h0, y1 + h1) - max(y0, y1))
            inter = iw * ih
            if inter / (w0 * h0 + w1 * h1 - inter) > overlap:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.7, 1.0])
def test_suppression_is_greedy_nms(overlap, monkeypatch):
    monkeypatch.setattr(detect, "_BLOCK", 64)  # several blocks
    rng = np.random.default_rng(11)
    n = 300
    boxes = np.concatenate([rng.integers(0, 80, (n, 2)), rng.integers(3, 25, (n, 2))], 1)
    scores = rng.integers(0, 40, n).astype(np.float64)  # many ties
    keep = _suppressed(torch.from_numpy(boxes), torch.from_numpy(scores), overlap, None)
    assert keep.tolist() == reference_nms(boxes.tolist(), scores.tolist(), overlap)
    top = _suppressed(torch.from_numpy(boxes), torch.from_numpy(scores), overlap, 5)
    assert top.tolist() == keep.tolist()[:5]


def test_too_many_candidates_warn(monkeypatch):
    monkeypatch.setattr(detect, "MAX_CANDIDATES", 10)
    image, templates, _ = scene()
    with pytest.warns(UserWarning, match=r"candidates passed the threshold; only the best 10 are considered"):
        m = xcorr.find_matches(image, templates, threshold=-1.0)
    assert 0 < len(m) <= 10


IMG = np.zeros((20, 20), np.float32)
TPL = np.ones((5, 5), np.float32)
X = torch.zeros(1, 1, 20, 20)
Z = torch.ones(1, 5, 5)

BAD_INPUTS = [
    (lambda: xcorr.find_matches(IMG, TPL), TypeError, r"missing 1 required keyword-only argument: 'threshold'"),
    (lambda: xcorr.find_matches(IMG, TPL, threshold=float("nan")), ValueError, r"threshold must be finite, got nan"),
    (lambda: xcorr.find_matches(IMG, TPL, threshold="high"), TypeError, r"threshold must be a real number, got str"),
    (lambda: xcorr.find_matches(IMG, TPL, "zncc", threshold=0.5), ValueError, r"unknown method 'zncc'"),
    (
        lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, max_overlap=1.5),
        ValueError,
        r"max_overlap must be in \[0, 1\] \(an intersection over union\), got 1\.5",
    ),
    (lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, k=0), ValueError, r"k must be a positive int, got 0"),
    (lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, scales=1.0), TypeError, r"scales must be a sequence"),
    (lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, scales=[]), ValueError, r"scales must hold at least one"),
    (
        lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, scales=[1, -2]),
        ValueError,
        r"scales\[1\] must be positive, got -2\.0",
    ),
    (
        lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, scales=[0.05]),
        ValueError,
        r"scale 0\.05 makes templates \(5x5\) smaller than one pixel: 0x0",
    ),
    (lambda: xcorr.find_matches(IMG, [], threshold=0.5), ValueError, r"templates must hold at least one template"),
    (lambda: xcorr.find_matches(IMG, [TPL, Z], threshold=0.5), TypeError, r"templates\[1\] must be a numpy array"),
    (
        lambda: xcorr.find_matches(IMG, [TPL, TPL.astype(np.float64)], threshold=0.5),
        TypeError,
        r"templates\[1\]: image and template must have the same dtype",
    ),
    (
        lambda: xcorr.find_matches(IMG, np.ones((5, 5, 3), np.float32), threshold=0.5),
        ValueError,
        r"templates: image and template must have the same number of channels",
    ),
    (lambda: xcorr.find_matches([IMG], TPL, threshold=0.5), TypeError, r"image must be a numpy array"),
    (lambda: xcorr.find_matches(X[0, 0], Z, threshold=0.5), ValueError, r"image must be 3-D \(C, H, W\) or 4-D"),
    (
        lambda: xcorr.find_matches(X, torch.ones(2, 1, 5, 5), threshold=0.5),
        ValueError,
        r"templates must be 3-D \(C, h, w\) or 4-D \(1, C, h, w\), got shape \(2, 1, 5, 5\)",
    ),
    (
        lambda: xcorr.find_matches(X, Z.double(), threshold=0.5),
        TypeError,
        r"templates: image and template must have the same dtype",
    ),
    (
        lambda: xcorr.find_matches(IMG, [TPL, TPL], threshold=0.5, mask=np.ones((5, 5))),
        TypeError,
        r"mask must be a sequence of 2 masks \(or None\), one per template",
    ),
    (
        lambda: xcorr.find_matches(IMG, TPL, threshold=0.5, mask=np.ones((4, 5), np.float32)),
        ValueError,
        r"templates: mask must have the template's size",
    ),
    (
        lambda: xcorr.find_matches(IMG, np.ones((30, 30), np.float32), threshold=0.5),
        ValueError,
        r"no template fits the image \(20x20\) at any scale of \[1\.0\]",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
