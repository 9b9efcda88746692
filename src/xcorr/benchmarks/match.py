"""Suite "match": template matching against OpenCV, scikit-image and scipy.

ZNCC (``ccoeff_normed``) on single grey images of growing size, a colour image, plain
correlation (``ccorr``), ``sqdiff_normed``, photographs (scikit-image's, with their dark and flat
windows), a selection of these at one thread (torch and OpenCV alike), a batch of 64
image/template pairs through the tensor API (the peers loop over the batch), and one template
against the frames of a video through a match plan (the peers call ``matchTemplate`` per frame).
Each peer computes the same scores as ours: valid positions, float32 images in [0, 1). scipy has
no template matching, so its entry is what a scipy user writes: ``scipy.signal.correlate`` for
the numerator and for the window sums. ``--profile`` adds where our time goes, per stage.
"""

from __future__ import annotations

import importlib.util
import statistics
from typing import Any, Callable

import numpy as np
import torch

from ..matching.api import match_template
from ..matching.detect import find_matches
from ..matching.plans import match_plan
from ..matching.stages import timed
from . import OURS, Case

OPENCV, SKIMAGE, SCIPY = "opencv", "scikit-image", "scipy"

#: (name, image side, template side, channels, method); the batch case is separate.
SINGLE = [
    ("zncc 512 / 32", 512, 32, 1, "ccoeff_normed"),
    ("zncc 1024 / 64", 1024, 64, 1, "ccoeff_normed"),
    ("zncc 2048 / 128", 2048, 128, 1, "ccoeff_normed"),
    ("zncc 1024 / 16", 1024, 16, 1, "ccoeff_normed"),
    ("zncc rgb 1024 / 48", 1024, 48, 3, "ccoeff_normed"),
    ("ccorr 1024 / 64", 1024, 64, 1, "ccorr"),
    ("sqdiff_normed 1024 / 64", 1024, 64, 1, "sqdiff_normed"),
]
#: (name, scikit-image photograph, template side, top-left corner of its crop, method).
PHOTOS = [
    ("zncc photo astronaut rgb 512 / 64 (face)", "astronaut", 64, (90, 190), "ccoeff_normed"),
    ("zncc photo astronaut rgb 512 / 40 (face)", "astronaut", 40, (110, 200), "ccoeff_normed"),
    ("zncc photo camera 512 / 64", "camera", 64, (70, 230), "ccoeff_normed"),
]
#: Cases run again at one thread, torch's and OpenCV's.
ONE_THREAD = (
    "zncc 512 / 32",
    "zncc 1024 / 64",
    "zncc rgb 1024 / 48",
    "ccorr 1024 / 64",
    "zncc photo astronaut rgb 512 / 64 (face)",
    "zncc photo camera 512 / 64",
)
BATCH, BATCH_SIDE, BATCH_TEMPLATE = 64, 256, 24
FRAMES, FRAME_SIDE, FRAME_TEMPLATE = 8, 1024, 64
#: Targets: our median over the fastest peer's, at the default threads and at one.
SINGLE_TARGET, ONE_THREAD_TARGET, BATCH_TARGET, VIDEO_TARGET = 0.8, 1.0, 0.5, 0.6
#: Calls of ours whose stages (``--profile``) are summarised by their medians.
STAGE_CALLS = 5


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _images(n: int, side: int, channels: int, template: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (n, side, side, channels) if channels > 1 else (n, side, side)
    images = rng.random(shape, dtype=np.float32)
    top = rng.integers(0, side - template + 1, size=(n, 2))
    templates = np.stack([im[r : r + template, c : c + template] for im, (r, c) in zip(images, top)])
    return images, templates


def _opencv(method: str) -> Callable[[np.ndarray, np.ndarray], Any]:
    import cv2

    code = {"ccoeff_normed": cv2.TM_CCOEFF_NORMED, "ccorr": cv2.TM_CCORR, "sqdiff_normed": cv2.TM_SQDIFF_NORMED}[method]
    return lambda image, template: cv2.matchTemplate(image, template, code)


def _skimage(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    from skimage.feature import match_template as sk_match

    return sk_match(image, template)


def _scipy(method: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from scipy import signal

    def ccorr(image: np.ndarray, template: np.ndarray) -> np.ndarray:
        return signal.correlate(image, template, mode="valid")

    def zncc(image: np.ndarray, template: np.ndarray) -> np.ndarray:
        n = template[..., :1].size if template.ndim == 3 else template.size
        t = template - template.mean(axis=(0, 1))
        num = signal.correlate(image, t, mode="valid")
        ones = np.ones(template.shape[:2] + (1,) * (template.ndim - 2))
        s1 = signal.correlate(image, ones, mode="valid")
        s2 = signal.correlate(image * image, ones, mode="valid")
        var = (s2 - s1 * s1 / n).sum(axis=-1) if image.ndim == 3 else s2 - s1 * s1 / n
        num = num.reshape(var.shape)
        return num / np.sqrt(np.maximum(var, 1e-12) * (t * t).sum())

    return zncc if method == "ccoeff_normed" else ccorr


def _stages(ours: Callable[[], Any]) -> Callable[[], dict[str, float]]:
    """Our call's seconds per stage, the median of :data:`STAGE_CALLS` calls each."""

    def measure() -> dict[str, float]:
        runs = [timed(ours)[1] for _ in range(STAGE_CALLS)]
        return {name: statistics.median(r[name] for r in runs) for name in runs[0]}

    return measure


def _photo(name: str) -> np.ndarray | None:
    """scikit-image's photograph ``name`` as float32 in [0, 1), or None without scikit-image."""
    if not _installed("skimage"):
        return None
    from skimage import data

    return getattr(data, name)().astype(np.float32) / 255


def _contenders(image: np.ndarray, template: np.ndarray, method: str) -> dict[str, Callable[[], Any]]:
    fns: dict[str, Callable[[], Any]] = {OURS: lambda: match_template(image, template, method)}
    if _installed("cv2"):
        opencv = _opencv(method)
        fns[OPENCV] = lambda: opencv(image, template)
    if _installed("skimage") and method == "ccoeff_normed":
        fns[SKIMAGE] = lambda: _skimage(image, template)
    if _installed("scipy") and method in ("ccoeff_normed", "ccorr"):
        scipy_fn = _scipy(method)
        fns[SCIPY] = lambda: scipy_fn(image, template)
    return fns


def _image_case(
    name: str, inputs: Callable[[], tuple[np.ndarray, np.ndarray]], method: str, threads: int | None
) -> Case:
    """One image against one template (``inputs()`` makes them), at ``threads`` or the default."""

    def stages() -> dict[str, float]:
        image, template = inputs()
        return _stages(lambda: match_template(image, template, method))()

    return Case(
        "match",
        name if threads is None else f"{name} (1 thread)",
        lambda: _contenders(*inputs(), method),
        SINGLE_TARGET if threads is None else ONE_THREAD_TARGET,
        threads=threads,
        stages=stages,
    )


def _single_case(name: str, side: int, tside: int, channels: int, method: str, threads: int | None = None) -> Case:
    def inputs() -> tuple[np.ndarray, np.ndarray]:
        images, templates = _images(1, side, channels, tside)
        return images[0], templates[0]

    return _image_case(name, inputs, method, threads)


def _photo_case(
    name: str, photo: str, tside: int, corner: tuple[int, int], method: str, threads: int | None = None
) -> Case:
    def inputs() -> tuple[np.ndarray, np.ndarray]:
        image = _photo(photo)
        assert image is not None  # the case is listed only with scikit-image installed
        r, c = corner
        return image, image[r : r + tside, c : c + tside].copy()

    return _image_case(name, inputs, method, threads)


def _batch_case() -> Case:
    def inputs() -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        images, templates = _images(BATCH, BATCH_SIDE, 1, BATCH_TEMPLATE, seed=1)
        return images, templates, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(templates).unsqueeze(1)

    def ours(x: torch.Tensor, z: torch.Tensor) -> Callable[[], Any]:
        def call() -> Any:
            with torch.no_grad():
                return match_template(x, z)

        return call

    def setup() -> dict[str, Callable[[], Any]]:
        images, templates, x, z = inputs()
        pairs = list(zip(images, templates))
        fns: dict[str, Callable[[], Any]] = {OURS: ours(x, z)}
        if _installed("cv2"):
            opencv = _opencv("ccoeff_normed")
            fns[OPENCV] = lambda: [opencv(i, t) for i, t in pairs]
        if _installed("skimage"):
            fns[SKIMAGE] = lambda: [_skimage(i, t) for i, t in pairs]
        if _installed("scipy"):
            scipy_fn = _scipy("ccoeff_normed")
            fns[SCIPY] = lambda: [scipy_fn(i, t) for i, t in pairs]
        return fns

    def stages() -> dict[str, float]:
        return _stages(ours(*inputs()[2:]))()

    name = f"zncc batch {BATCH} x {BATCH_SIDE} / {BATCH_TEMPLATE} (tensors)"
    return Case("match", name, setup, BATCH_TARGET, stages=stages)


def _video_case() -> Case:
    """One template against every frame of a video, through a match plan: time per video."""

    def inputs() -> tuple[np.ndarray, np.ndarray]:
        frames, templates = _images(FRAMES, FRAME_SIDE, 1, FRAME_TEMPLATE, seed=2)
        return frames, templates[0]

    def setup() -> dict[str, Callable[[], Any]]:
        frames, template = inputs()
        plan = match_plan(template)
        fns: dict[str, Callable[[], Any]] = {OURS: lambda: [plan(f) for f in frames]}
        if _installed("cv2"):
            opencv = _opencv("ccoeff_normed")
            fns[OPENCV] = lambda: [opencv(f, template) for f in frames]
        return fns

    def stages() -> dict[str, float]:
        frames, template = inputs()
        plan = match_plan(template)
        return _stages(lambda: [plan(f) for f in frames])()

    name = f"zncc video {FRAMES} x {FRAME_SIDE} / {FRAME_TEMPLATE} (match plan)"
    return Case("match", name, setup, VIDEO_TARGET, repeats=5, stages=stages)


# --- detection: many templates at many scales, threshold and non-maximum suppression ----------

#: Templates (crops of the image, so each is found once per scale near 1), their side, the
#: scales and the threshold of the detection case; our median over the OpenCV loop's.
DETECT_TEMPLATES, DETECT_SIDE, DETECT_TEMPLATE, DETECT_SCALES = 8, 1024, 40, (0.8, 1.0, 1.25)
DETECT_THRESHOLD, DETECT_OVERLAP, DETECT_TARGET = 0.8, 0.3, 0.5


def _opencv_detect(image: np.ndarray, templates: list[np.ndarray]) -> Callable[[], Any]:
    """What an OpenCV user writes: ``cv2.matchTemplate`` per template and scale (resized with
    ``INTER_AREA`` shrinking, ``INTER_LINEAR`` growing), the threshold, then ``cv2.dnn.NMSBoxes``."""
    import cv2

    def call() -> Any:
        boxes: list[list[int]] = []
        scores: list[float] = []
        for t in templates:
            for s in DETECT_SCALES:
                size = (round(t.shape[1] * s), round(t.shape[0] * s))
                ts = t if s == 1 else cv2.resize(t, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
                r = cv2.matchTemplate(image, ts, cv2.TM_CCOEFF_NORMED)
                ys, xs = np.nonzero(r >= DETECT_THRESHOLD)
                boxes += [[int(x), int(y), ts.shape[1], ts.shape[0]] for y, x in zip(ys, xs)]
                scores += r[ys, xs].tolist()
        return cv2.dnn.NMSBoxes(boxes, scores, DETECT_THRESHOLD, DETECT_OVERLAP)

    return call


def _detect_case(threads: int | None = None) -> Case:
    """Detection of 8 templates at 3 scales in one grey image: :func:`xcorr.find_matches` against
    the OpenCV loop."""

    def inputs() -> tuple[np.ndarray, list[np.ndarray]]:
        images, _ = _images(1, DETECT_SIDE, 1, DETECT_TEMPLATE, seed=3)
        rng = np.random.default_rng(4)
        corners = rng.integers(0, DETECT_SIDE - 2 * DETECT_TEMPLATE, size=(DETECT_TEMPLATES, 2))
        return images[0], [images[0][r : r + DETECT_TEMPLATE, c : c + DETECT_TEMPLATE].copy() for r, c in corners]

    def ours(image: np.ndarray, templates: list[np.ndarray]) -> Callable[[], Any]:
        return lambda: find_matches(
            image, templates, threshold=DETECT_THRESHOLD, max_overlap=DETECT_OVERLAP, scales=DETECT_SCALES
        )

    def setup() -> dict[str, Callable[[], Any]]:
        image, templates = inputs()
        fns: dict[str, Callable[[], Any]] = {OURS: ours(image, templates)}
        if _installed("cv2"):
            fns[OPENCV] = _opencv_detect(image, templates)
        return fns

    def stages() -> dict[str, float]:
        return _stages(ours(*inputs()))()

    name = f"detect {DETECT_TEMPLATES} templates x {len(DETECT_SCALES)} scales {DETECT_SIDE}"
    return Case(
        "match",
        name if threads is None else f"{name} (1 thread)",
        setup,
        DETECT_TARGET,
        repeats=5,
        threads=threads,
        stages=stages,
    )


def cases() -> list[Case]:
    """The match suite: single images (random and photographs), some at one thread, a batch and
    a video."""
    single = {row[0]: row for row in SINGLE}
    photos = {row[0]: row for row in PHOTOS} if _installed("skimage") else {}
    out = [_single_case(*row) for row in SINGLE] + [_photo_case(*row) for row in photos.values()]
    for name in ONE_THREAD:
        if name in single:
            out.append(_single_case(*single[name], threads=1))
        elif name in photos:
            out.append(_photo_case(*photos[name], threads=1))
    return out + [_batch_case(), _video_case(), _detect_case(), _detect_case(threads=1)]
