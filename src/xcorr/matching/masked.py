"""The masked scores: OpenCV's masked definitions, each template and window pixel weighted by the
mask, so that every window statistic is a correlation with the mask, computed in float64."""

from __future__ import annotations

import torch

from ..correlation.api import xcorr
from .dense import _column, _correlated, _spatial
from .normalise import FLAT_TEMPLATE, _normalise


def _masked(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor, method: str, k: int) -> torch.Tensor:
    """OpenCV's masked definitions, every window statistic a float64 correlation with the mask."""
    x64, z64, m64 = x.double(), z.double(), m.double()
    if method.startswith("ccoeff"):
        score = _ccoeff(x64, z64, m64, method, k)
    else:
        score = _ccorr_or_sqdiff(x64, z64, m64, method, k)
    return score.to(x.dtype)


def _per_image(t: torch.Tensor, k: int) -> torch.Tensor:
    """A per-template value per image: template ``i`` serves images ``i*k ... i*k+k-1``."""
    return t.repeat_interleave(k, 0)


def _ccorr_or_sqdiff(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor, method: str, k: int) -> torch.Tensor:
    """``ccorr``, ``sqdiff`` and their normed scores, normed by the weighted energies of the window
    and the template."""
    m2 = m * m
    num = xcorr(x, z * m2) if method.startswith("ccorr") else _sqdiff(x, z, m, k)
    if not method.endswith("_normed"):
        return num
    energy = xcorr(x * x, m2)
    tnorm = ((z * m) ** 2).flatten(1).sum(1).sqrt()
    return _normalise(num, energy, _column(_per_image(tnorm, k), x.dim()), method, energy)


def _sqdiff(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor, k: int) -> torch.Tensor:
    """``sum M^2 (I - T)^2`` from its expansion, image and template shifted by the template's mean as
    the unmasked ``sqdiff`` is (:func:`~.dense._correlated`)."""
    m2 = m * m
    xs, zs = _correlated(x, z, "sqdiff", k)
    tz2 = _column(((zs * m) ** 2).flatten(1).sum(1), x.dim())
    return (_per_image(tz2, k) - 2 * xcorr(xs, zs * m2) + xcorr(xs * xs, m2)).clamp_min(0)


def _ccoeff(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor, method: str, k: int) -> torch.Tensor:
    """``ccoeff`` or ``ccoeff_normed``: the template centred by its weighted mean, each image shifted
    by its own mean; OpenCV's flat-template rule included."""
    spatial = _spatial(x)
    m2 = m * m
    msum = m.sum(spatial, keepdim=True)
    zc = z - (m * z).sum(spatial, keepdim=True) / msum
    kernel = m2 * zc
    shift = x.detach().mean(spatial, keepdim=True)
    xs = x - shift
    num = xcorr(xs, kernel)
    binary = bool(((m == 0) | (m == 1)).all())
    if not binary:
        # sum M^2 (T - mT) is zero only for binary masks; otherwise the window mean enters.
        num = num - xcorr(xs, m * kernel.sum(spatial, keepdim=True) / msum)
    if method == "ccoeff":
        return num
    diff2, energy = _window_energies(xs, shift, m, binary, k)
    tz2 = (m2 * zc * zc).sum(spatial)
    flat_template = (tz2 / m2.sum(spatial)).sum(1) < FLAT_TEMPLATE
    score = _normalise(num, diff2, _column(_per_image(tz2.sum(1).sqrt(), k), x.dim()), method, energy)
    return torch.where(_column(_per_image(flat_template, k), x.dim()), torch.ones_like(score), score)


def _window_energies(
    xs: torch.Tensor, shift: torch.Tensor, m: torch.Tensor, binary: bool, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted energy of each window of the image ``xs + shift`` about its mean (``diff2``),
    and about zero (``energy``), from correlations of the shifted image ``xs`` with the mask."""
    spatial = _spatial(xs)
    m2 = m * m
    g = xcorr(xs, m, "depthwise")
    a = g if binary else xcorr(xs, m2, "depthwise")
    mean = g / _per_image(m.sum(spatial, keepdim=True), k)
    m2sum = _per_image(m2.sum(spatial, keepdim=True), k)
    p = xcorr(xs * xs, m2)
    diff2 = p - (2 * mean * a - mean * mean * m2sum).sum(1, keepdim=True)
    energy = p + (2 * shift * a + shift * shift * m2sum).sum(1, keepdim=True)
    return diff2, energy
