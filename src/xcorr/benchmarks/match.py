"""Suite "match": template matching against OpenCV, scikit-image and scipy.

ZNCC (``ccoeff_normed``) on single grey images of growing size, a colour image, plain
correlation (``ccorr``), and a batch of 64 image/template pairs through the tensor API (the
peers loop over the batch). Each peer computes the same scores as ours: valid positions, float32
images in [0, 1). scipy has no template matching, so its entry is what a scipy user writes:
``scipy.signal.correlate`` for the numerator and for the window sums.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np
import torch

from ..matching.api import match_template
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
]
BATCH, BATCH_SIDE, BATCH_TEMPLATE = 64, 256, 24
SINGLE_TARGET, BATCH_TARGET = 1.0, 0.7


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

    code = {"ccoeff_normed": cv2.TM_CCOEFF_NORMED, "ccorr": cv2.TM_CCORR}[method]
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


def _single_case(name: str, side: int, tside: int, channels: int, method: str) -> Case:
    def setup() -> dict[str, Callable[[], Any]]:
        images, templates = _images(1, side, channels, tside)
        image, template = images[0], templates[0]
        fns = {OURS: lambda: match_template(image, template, method)}
        if _installed("cv2"):
            opencv = _opencv(method)
            fns[OPENCV] = lambda: opencv(image, template)
        if _installed("skimage") and method == "ccoeff_normed":
            fns[SKIMAGE] = lambda: _skimage(image, template)
        if _installed("scipy"):
            scipy_fn = _scipy(method)
            fns[SCIPY] = lambda: scipy_fn(image, template)
        return fns

    return Case("match", name, setup, SINGLE_TARGET)


def _batch_case() -> Case:
    def setup() -> dict[str, Callable[[], Any]]:
        images, templates = _images(BATCH, BATCH_SIDE, 1, BATCH_TEMPLATE, seed=1)
        x = torch.from_numpy(images).unsqueeze(1)
        z = torch.from_numpy(templates).unsqueeze(1)
        pairs = list(zip(images, templates))

        def ours() -> Any:
            with torch.no_grad():
                return match_template(x, z)

        fns: dict[str, Callable[[], Any]] = {OURS: ours}
        if _installed("cv2"):
            opencv = _opencv("ccoeff_normed")
            fns[OPENCV] = lambda: [opencv(i, t) for i, t in pairs]
        if _installed("skimage"):
            fns[SKIMAGE] = lambda: [_skimage(i, t) for i, t in pairs]
        if _installed("scipy"):
            scipy_fn = _scipy("ccoeff_normed")
            fns[SCIPY] = lambda: [scipy_fn(i, t) for i, t in pairs]
        return fns

    return Case("match", f"zncc batch {BATCH} x {BATCH_SIDE} / {BATCH_TEMPLATE} (tensors)", setup, BATCH_TARGET)


def cases() -> list[Case]:
    """The match suite: six single-image cases and one batch case."""
    return [_single_case(*row) for row in SINGLE] + [_batch_case()]
