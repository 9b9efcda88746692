"""Template matching: OpenCV's six ``TM_*`` scores on the correlation backends, batched and differentiable.

Each score is one correlation plus window statistics. The correlation goes through
:func:`xcorr.xcorr` (the planner chooses the method; channels summed, memory bounded by the
backends' chunking), and the window sums and sums of squares come from box filters accumulated in
float64, so the variance of a window survives even where it is tiny next to its mean. For float32
``ccoeff`` the box filters run in float32 wherever a rounding bound shows the scores keep their
precision, and in float64 elsewhere. Masked windows are weighted by the mask, so their sums are
correlations with the mask, computed in float64.

Precision tricks, each exact in arithmetic:

* ``ccoeff``: the template is centred, and each image shifted by its own mean, so the
  correlation never subtracts two large numbers (``sum I*T' == sum (I - c)*T'`` when
  ``sum T' == 0``).
* ``sqdiff``: image and template are shifted by the template's mean before the expansion
  ``sum T^2 - 2 sum I*T + sum I^2``, which leaves ``I - T`` unchanged.

**Normed scores are exact on dark and flat windows.** A float32 FFT numerator's rounding error is
about the same at every window (it scales with the energy of the whole transform), and a normed
score divides it by the window's own spread, which is tiny on a dark or flat window. Each
window's error gets a bound (:class:`_Rounding`: calibrated on photographs for FFT, the classic
summation bound for the other methods); where the bound over the denominator may pass
:data:`NUMERATOR_ERROR`, the numerator is correlated again in float64 (the bounding box of those
windows, piece by piece). Every normed score is then within 2e-4 of its float64 value; on
photographs few windows, often none, need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union, cast

import numpy as np
import torch
import torch.nn.functional as F

from .._compute import HALF, computed, finite_footprint, needs_grad
from ..correlation.api import choose_method, xcorr
from ..matching.checks import check_find_peaks, check_mask_weights, check_match

Array = Union[np.ndarray, torch.Tensor]
Peak = tuple[int, int, float]

#: OpenCV's flat-window rule: a window is flat when its energy about its mean is at most
#: ``min(FLAT_ABSOLUTE, FLAT_RELATIVE * its energy)`` (10 float32 epsilons relative; 0.5 absolute,
#: which is below any non-flat window of integer-valued pixels).
FLAT_RELATIVE = 10 * float(np.finfo(np.float32).eps)
FLAT_ABSOLUTE = 0.5
#: OpenCV's flat-template rule for ``ccoeff_normed``: summed channel variance below float64 epsilon.
FLAT_TEMPLATE = float(np.finfo(np.float64).eps)
#: Largest change of a normed score that the float32 numerator's rounding may cause; windows where
#: it could be more are correlated again in float64. With :data:`_FAST_ERROR` (float32 window
#: sums) and the float32 result's rounding, every normed score stays within 2e-4 of float64.
NUMERATOR_ERROR = 5e-5

# Box filters run on pieces of about this many elements: float64 temporaries then stay in cache
# and below the size from which every allocation maps fresh, zero-filled pages.
_PIECE = 1 << 19

# Largest change of a ``ccoeff_normed`` score that float32 window sums may cause (half the
# tolerance against OpenCV); see _centred_energy_fast.
_FAST_ERROR = 1e-4
_FLOAT32_UNIT = 2.0**-24
# A float32 FFT correlation's error at a window is about u * sqrt(log2 N) * (rms of the output +
# sqrt(sum over channels of ||x_c||^2 ||z_c||^2 / N)) (N points; the inverse transform's rounding,
# then the forward transforms'): on six skimage photographs, with dark and zeroed regions, raw,
# centred and sqdiff-shifted, templates 16 to 128, the rms error is 0.3 to 0.8 of that and the
# largest of a map at most 6.2 times it. The bound takes 20 times it.
_FFT_MARGIN = 20.0
# Direct and gather sum each window in float32: the error is at most gamma_n = n*u/(1 - n*u) of
# sum |x*z| <= ||window|| * ||template|| for n products (Higham, Accuracy and Stability, 3.1);
# measured, it stays below 5.3 u sqrt(n) of that, so the bound takes the smaller of gamma_n and
# 20 u sqrt(n).
_SUM_MARGIN = 20.0


def match_template(image: Array, template: Array, method: str = "ccoeff_normed", *, mask: Array | None = None) -> Array:
    r"""Score every placement of ``template`` in ``image`` with one of OpenCV's six methods.

    The scores are those of ``cv2.matchTemplate`` (valid positions only, channels summed):

    ===================  ==========================================================================
    ``"sqdiff"``         :math:`\sum (T - I)^2`
    ``"sqdiff_normed"``  :math:`\sum (T - I)^2 / \sqrt{\sum T^2 \sum I^2}`
    ``"ccorr"``          :math:`\sum T I`
    ``"ccorr_normed"``   :math:`\sum T I / \sqrt{\sum T^2 \sum I^2}`
    ``"ccoeff"``         :math:`\sum T' I'` with template and window minus their means
    ``"ccoeff_normed"``  :math:`\sum T' I' / \sqrt{\sum T'^2 \sum I'^2}` (zero-mean normalised
                         cross-correlation, ZNCC: the right choice under brightness and contrast change)
    ===================  ==========================================================================

    Normed scores are always finite and within [-1, 1] ([0, 1] for ``"sqdiff_normed"``), by
    OpenCV's rules: a flat window (energy about its mean at most ``min(0.5, 10 * FLT_EPSILON *
    energy)``) scores 0 (1 for ``"sqdiff_normed"``); a flat template scores 1 everywhere with
    ``"ccoeff_normed"``; a ratio that rounding pushed past 1 is clipped to ±1.

    Args:
        image: numpy (H, W) or (H, W, C), uint8, float32 or float64, as for ``cv2.matchTemplate``;
            or Tensor[N, C, H, W] of a floating dtype, on any device.
        template: numpy (h, w) or (h, w, C) of the image's dtype; or Tensor[Nt, C, h, w] with
            ``N`` a multiple of ``Nt``: template ``i`` serves images ``i*k ... i*k+k-1``.
        method: one of ``"sqdiff"``, ``"sqdiff_normed"``, ``"ccorr"``, ``"ccorr_normed"``,
            ``"ccoeff"``, ``"ccoeff_normed"``.
        mask: optional template weights with OpenCV's masked definitions (each template and window
            pixel weighted by the mask): numpy (h, w) or (h, w, 1 or C); a tensor (h, w),
            (1 or C, h, w) or (1 or Nt, 1 or C, h, w). bool and uint8 masks are binary (non-zero
            means 1), floating masks are weights; they must be non-negative, and not all zero.
            Unlike OpenCV's, masked normed scores keep the bounds above.

    Returns:
        numpy float32 (H-h+1, W-w+1) for numpy inputs; Tensor[N, 1, H-h+1, W-w+1] of the image's
        dtype and device for tensors, differentiable in image and template.

    Example:
        >>> image = np.zeros((6, 7), np.float32)
        >>> image[2:4, 3:5] = [[1, 2], [3, 4]]
        >>> scores = match_template(image, image[1:5, 2:6].copy())
        >>> (x, y, score), = find_peaks(scores)
        >>> scores.shape, (x, y), round(score, 5)
        ((3, 4), (2, 1), 1.0)
        >>> match_template(torch.rand(8, 3, 32, 32), torch.rand(2, 3, 5, 5)).shape
        torch.Size([8, 1, 28, 28])
    """
    if check_match(image, template, method, mask):
        x, z, m = _from_arrays(cast(np.ndarray, image), cast(np.ndarray, template), cast(Optional[np.ndarray], mask))
        return _scores(x, z, method, m)[0, 0].to(torch.float32).numpy()
    image, template = cast(torch.Tensor, image), cast(torch.Tensor, template)
    weights = None if mask is None else _mask_tensor(cast(torch.Tensor, mask), template.dtype)
    return _scores(image, template, method, weights)


def find_peaks(scores: Array, k: int = 1, *, min_distance: int | None = None, largest: bool = True):
    """The ``k`` best positions of a score map, with non-maximum suppression.

    Args:
        scores: numpy or Tensor (H', W'), or Tensor/array (N, 1, H', W') for a batch.
        k (int): how many positions to return (fewer if the map runs out).
        min_distance (int or None): peaks are at least this far apart (Chebyshev distance, in
            pixels): a chosen peak suppresses the positions closer than that. ``None`` means no
            suppression (plain top-k). Half the template size is a good choice.
        largest (bool): best means largest (``ccorr``, ``ccoeff``); pass ``False`` for ``sqdiff``.

    Returns:
        list of ``(x, y, score)``, best first, with ``(x, y)`` the template's top-left corner as
        ``cv2.minMaxLoc`` reports it (ties go to the first position in row-major order); for a
        batch, one such list per item.

    Example:
        >>> find_peaks(np.array([[0, 5, 0], [9, 0, 4]], np.float32), k=2)
        [(0, 1, 9.0), (1, 0, 5.0)]
    """
    check_find_peaks(scores, k, min_distance, largest)
    s = torch.from_numpy(np.ascontiguousarray(scores)) if isinstance(scores, np.ndarray) else scores.detach()
    if s.dim() == 4:
        return [_peaks(item[0], k, min_distance or 1, largest) for item in s]
    return _peaks(s, k, min_distance or 1, largest)


def _peaks(s: torch.Tensor, k: int, distance: int, largest: bool) -> list[Peak]:
    work = s.double().cpu()
    work = work.clone() if largest else -work
    work[torch.isnan(work)] = -torch.inf
    H, W = work.shape
    peaks = []
    for _ in range(min(k, H * W)):
        index = int(torch.argmax(work))
        y, x = divmod(index, W)
        if work[y, x] == -torch.inf:
            break
        peaks.append((x, y, float(s[y, x])))
        work[max(0, y - distance + 1) : y + distance, max(0, x - distance + 1) : x + distance] = -torch.inf
    return peaks


def _from_arrays(image: np.ndarray, template: np.ndarray, mask: np.ndarray | None):
    dtype = torch.float64 if image.dtype == np.float64 else torch.float32

    def tensor(a: np.ndarray, dt: torch.dtype) -> torch.Tensor:
        a = a.reshape(*a.shape[:2], -1)
        if a.dtype == np.uint8:
            a = a.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(a) if a.flags.writeable else a.copy())
        return t.permute(2, 0, 1).unsqueeze(0).to(dt).contiguous()

    m = None
    if mask is not None:
        m = tensor((mask != 0) if mask.dtype.kind in "bu" else mask, dtype).to(dtype)
    return tensor(image, dtype), tensor(template, dtype), m


def _mask_tensor(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    m = mask if mask.dtype.is_floating_point else (mask != 0)
    m = m.to(dtype if dtype not in HALF else torch.float32)
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m


def _scores(x: torch.Tensor, z: torch.Tensor, method: str, mask: torch.Tensor | None) -> torch.Tensor:
    N, C, H, W = x.shape
    Nt, _, h, w = z.shape
    shape, k = (N, 1, H - h + 1, W - w + 1), N // Nt
    if mask is None:
        return computed(lambda a, b: _footprint(lambda a: _dense(a, b, method, k), a, (h, w)), shape, x, z)
    check_mask_weights(mask, method.startswith("ccoeff"))

    def masked(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return _footprint(lambda a: _masked(a, b, m.expand(Nt, C, h, w), method, k), a, (h, w))

    return computed(masked, shape, x, z, mask)


def _footprint(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``score(x)``, NaN exactly at the windows that hold a non-finite pixel of ``x`` (window sums
    and transforms would spread one over the whole map; see
    :func:`~xcorr._compute.finite_footprint`). A non-finite template spoils all of its scores, as
    by definition."""
    return finite_footprint(score, x, lambda mask: xcorr(mask, mask.new_ones(1, x.shape[1], *size)))


@dataclass(frozen=True)
class _Rounding:
    """A bound on the float32 numerator's error at every window of each image:
    ``spread + local * sqrt(s2)``, ``s2`` being the window's sum of squares of the correlated image.

    Attributes:
        spread: (N, 1, 1, 1) the part shared by every window (FFT: the whole transform's rounding).
        local: (N, 1, 1, 1) the part that grows with the window (summation in place).
    """

    spread: torch.Tensor
    local: torch.Tensor

    @staticmethod
    def of(xs: torch.Tensor, zs: torch.Tensor, num: torch.Tensor, method: str, k: int) -> _Rounding:
        """The bound for ``num``, the correlation of ``xs`` with ``zs`` by ``method``."""
        # Norms in one pass each, without float64 copies: a bound needs no more precision.
        N, C, H, W = xs.shape
        u = _FLOAT32_UNIT
        y = num.detach()
        norm = torch.linalg.vector_norm
        # (amax and amin: 0.17 ms at 961x961, where the infinity norm over dims takes 1.6 ms.)
        flat = y.flatten(1)
        largest = torch.maximum(flat.amax(1), -flat.amin(1)).double().view(N, 1, 1, 1)
        if method != "fft":
            n = zs[0].numel()
            gamma = min(n * u / (1 - n * u), _SUM_MARGIN * u * math.sqrt(n))
            tnorm = norm(zs.detach(), dim=(1, 2, 3)).double().repeat_interleave(k)
            return _Rounding(spread=torch.zeros_like(largest), local=((gamma + u) * tnorm).view(N, 1, 1, 1))
        x2 = norm(xs.detach(), dim=(2, 3)).double() ** 2
        z2 = (norm(zs.detach(), dim=(2, 3)).double() ** 2).repeat_interleave(k, 0)
        forward = ((x2 * z2).sum(1) / (H * W)).sqrt()
        rms = norm(y, dim=(1, 2, 3)).double() / math.sqrt(y[0].numel())
        # log2 of at least the transform's points: fast lengths are below twice the image's.
        spread = _FFT_MARGIN * u * math.sqrt(math.log2(4 * H * W)) * (rms + forward)
        return _Rounding(spread=spread.view(N, 1, 1, 1) + u * largest, local=torch.zeros_like(largest))


@dataclass(frozen=True)
class _Problem:
    """What the pieces of one unmasked call share.

    Attributes:
        x: the images (N, C, H, W); ``xs``, ``zs``: image and template as correlated (shifted).
        num: the correlation of ``xs`` with ``zs`` (N, 1, H', W').
        method: the score; ``k``: images per template.
        tz2: (N,) float64 ``sum zs^2`` of each image's template.
        tnorm: (N,) float64 the template's norm in the denominator (``zs``'s for ``ccoeff``).
        flat: (N,) whether each image's template is flat (``ccoeff_normed``; else None).
        rounding: the numerator's error bound, or None where it needs none (float64, unnormed).
    """

    x: torch.Tensor
    xs: torch.Tensor
    zs: torch.Tensor
    num: torch.Tensor
    method: str
    k: int
    tz2: torch.Tensor
    tnorm: torch.Tensor
    flat: torch.Tensor | None
    rounding: _Rounding | None

    @property
    def size(self) -> tuple[int, int]:
        return self.zs.shape[-2], self.zs.shape[-1]

    def scale(self, images: slice) -> torch.Tensor:
        return self.tnorm[images].view(-1, 1, 1, 1)

    def energy(self, rows: slice, images: slice) -> torch.Tensor:
        """The piece's window sums of squares of the image itself (unshifted), in float64."""
        return _box(_squares(self.x[images, :, rows].double()), *self.size)

    def numerator(
        self, rows: slice, images: slice, den2: torch.Tensor, s2: torch.Tensor, factor: float = 1
    ) -> torch.Tensor:
        """The piece's numerators, correlated again in float64 at the windows where ``factor``
        times the rounding bound may pass :data:`NUMERATOR_ERROR` of the denominator
        ``tnorm * sqrt(den2)``; ``s2`` is the window's sum of squares of ``xs``."""
        h, _ = self.size
        num = self.num[images, :, rows.start : rows.stop - h + 1]
        if self.rounding is None:
            return num
        limit = NUMERATOR_ERROR / factor * self.scale(images)
        spread, local = self.rounding.spread[images] / limit, self.rounding.local[images] / limit
        # Flat windows (den2 = 0) score the worst score whatever their numerator. One reduction
        # settles the common case, where no window is near the bound (0.1 ms at 961x961, where
        # a comparison map and its any() take 1.1 ms).
        if bool((local == 0).all()):
            if not bool((den2.flatten(1).amin(1).view(-1, 1, 1, 1) < spread * spread).any()):
                return num
            inexact = den2 < spread * spread
        else:
            inexact = den2 < (spread + local * s2.sqrt()) ** 2
        inexact &= den2 > 0
        if not bool(inexact.any()):
            return num
        return self._recomputed(num, inexact, rows, images)

    def _recomputed(self, num: torch.Tensor, inexact: torch.Tensor, rows: slice, images: slice) -> torch.Tensor:
        """``num`` in float64, exact over the bounding box of each image's ``inexact`` windows."""
        h, w = self.size
        out = num.double()
        for j in torch.nonzero(inexact.flatten(1).any(1)).flatten().tolist():
            r, c = torch.nonzero(inexact[j, 0], as_tuple=True)
            r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
            n = images.start + j
            top = rows.start + r0
            crop = self.xs[n : n + 1, :, top : top + r1 - r0 + h - 1, c0 : c1 + w - 1].double()
            out[j : j + 1, :, r0:r1, c0:c1] = xcorr(crop, self.zs[n // self.k : n // self.k + 1].double())
        return out


def _correlated(x: torch.Tensor, z: torch.Tensor, family: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and template as ``family`` correlates them: shifted so that no large mean enters the
    rounding (see the module's precision tricks)."""
    if family == "ccoeff":
        return x - x.detach().mean((2, 3), keepdim=True), z - z.mean((2, 3), keepdim=True)
    if family == "sqdiff":
        shift = z.detach().mean((2, 3), keepdim=True)
        return x - shift.repeat_interleave(k, 0), z - shift
    return x, z


def _dense(x: torch.Tensor, z: torch.Tensor, method: str, k: int) -> torch.Tensor:
    family, normed = method.split("_")[0], method.endswith("_normed")
    N, C, H, W = x.shape
    h = z.shape[2]
    xs, zs = _correlated(x, z, family, k)
    # The planner's choice, asked first because the numerator's error bound depends on it.
    chosen = choose_method(xs, zs, "naive")
    num = xcorr(xs, zs, "naive", method=chosen)
    if method in ("ccorr", "ccoeff"):
        return num
    tz2 = (zs.double() ** 2).sum((1, 2, 3)).repeat_interleave(k)
    tnorm = tz2.sqrt() if family == "ccoeff" else (z.double() ** 2).sum((1, 2, 3)).sqrt().repeat_interleave(k)
    flat = _flat_templates(z).repeat_interleave(k) if method == "ccoeff_normed" else None
    rounding = _Rounding.of(xs, zs, num, chosen, k) if normed and num.dtype == torch.float32 else None
    problem = _Problem(x, xs, zs, num, method, k, tz2, tnorm, flat, rounding)
    score = {"ccorr": _ccorr_piece, "ccoeff": _ccoeff_piece, "sqdiff": _sqdiff_piece}[family]
    # Float32 window sums (ccoeff) take pieces of as many bytes, so twice the elements.
    piece = 2 * _PIECE if family == "ccoeff" and x.dtype == torch.float32 else _PIECE
    pieces = [(images, score(problem, rows, images)) for rows, images in _pieces(N, C, H, W, h, piece)]
    return _assemble(pieces, x.dtype)


def _ccorr_piece(p: _Problem, rows: slice, images: slice) -> torch.Tensor:
    """``ccorr_normed`` on one piece: the window's energy is the denominator's."""
    energy = p.energy(rows, images)
    num = p.numerator(rows, images, energy, energy)
    return _normalise(num, energy, p.scale(images), p.method)


def _ccoeff_piece(p: _Problem, rows: slice, images: slice) -> torch.Tensor:
    """``ccoeff_normed`` on one piece, OpenCV's flat-template rule included."""
    h, w = p.size
    band = p.xs[images, :, rows]
    sums: tuple[torch.Tensor, torch.Tensor] | None = None
    if band.dtype == torch.float32:
        sums = _centred_energy_fast(band, h, w)
    if sums is None:
        band = band.double()
        s2 = _box(_squares(band), h, w)
        sums = _centred_energy(_box(band, h, w), s2, h * w), s2
    diff2, s2 = sums
    num = p.numerator(rows, images, diff2, s2)
    score = _normalise(num, diff2, p.scale(images), p.method, lambda: p.energy(rows, images))
    assert p.flat is not None  # ccoeff_normed's problems have the flat-template rule
    flat = p.flat[images]
    if bool(flat.any()):
        score = torch.where(flat.view(-1, 1, 1, 1), torch.ones_like(score), score)
    return score


def _flat_templates(z: torch.Tensor) -> torch.Tensor:
    """OpenCV's flat templates, centred in float64 as OpenCV does: a constant float32 template
    centred in float32 keeps rounding residues (a variance near 1e-16) and would pass for a
    non-flat one."""
    z64 = z.detach().double()
    h, w = z.shape[-2:]
    return ((z64 - z64.mean((2, 3), keepdim=True)) ** 2).sum((1, 2, 3)) / (h * w) < FLAT_TEMPLATE


def _sqdiff_piece(p: _Problem, rows: slice, images: slice) -> torch.Tensor:
    """``sqdiff`` or ``sqdiff_normed`` on one piece, from ``sum T^2 - 2 sum I*T + sum I^2``."""
    h, w = p.size
    sq = _box(_squares(p.xs[images, :, rows].double()), h, w)
    tz2 = p.tz2[images].view(-1, 1, 1, 1)
    if p.method == "sqdiff":
        return (tz2 - 2 * p.numerator(rows, images, sq, sq) + sq).clamp_min(0)
    energy = p.energy(rows, images)
    num = p.numerator(rows, images, energy, sq, factor=2)
    return _normalise((tz2 - 2 * num + sq).clamp_min(0), energy, p.scale(images), p.method)


def _centred_energy(s1: torch.Tensor, s2: torch.Tensor, n: int) -> torch.Tensor:
    """``sum (I - mean)^2`` over each window from its sums ``s1`` (per channel) and ``s2``."""
    if s1.shape[1] == 1:
        return torch.addcmul(s2, s1, s1, value=-1 / n)
    return s2 - (s1 * s1).sum(1, keepdim=True) / n


def _centred_energy_fast(band: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`_centred_energy` of a float32 ``band`` with float32 window sums, and the window
    sums of squares ``s2``; or None.

    Sums by doubling (:func:`_slide`, down the rows, then along them) round each window sum by
    at most ``gamma = 2 (ceil(log2 h) + ceil(log2 w) + 1)`` float32 units of its sum of
    magnitudes, so ``s2`` and ``s1^2 / n`` are off by at most ``gamma * s2`` and ``2 gamma * s2``.
    Where the variance left after the subtraction is at least ``3 gamma / (2 * _FAST_ERROR)`` of
    ``s2``, that moves a normed score by at most ``_FAST_ERROR``; elsewhere (a low-contrast
    window on a bright image, say) the float64 path redoes the piece (None). Half the bytes
    of float64 and no prefix sums, whose float32 rounding would grow with the image.
    """
    gamma = 2 * ((h - 1).bit_length() + (w - 1).bit_length() + 1) * _FLOAT32_UNIT
    s1 = _slide_columns(_slide(band, h), w)
    s2 = _slide_columns(_slide(_squares(band), h), w)
    diff2 = _centred_energy(s1, s2, h * w)
    if bool(torch.add(diff2, s2, alpha=-3 * gamma / (2 * _FAST_ERROR)).amin() < 0):
        return None
    return diff2, s2


def _slide_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sums of ``n`` consecutive columns, by doubling as :func:`_slide` does for rows."""
    return _slide(x.transpose(-1, -2), n).transpose(-1, -2)


def _squares(x: torch.Tensor) -> torch.Tensor:
    """Squares summed over channels: box filters commute with the channel sum."""
    return x * x if x.shape[1] == 1 else (x * x).sum(1, keepdim=True)


def _pieces(N: int, C: int, H: int, W: int, h: int, size: int):
    """Split the window statistics into (input rows, images) pieces of about ``size`` elements."""
    if C * H * W > size:
        step = max(4 * h, size // (C * W) - h + 1)  # overlap of h - 1 rows stays small
        for n in range(N):
            for top in range(0, H - h + 1, step):
                yield slice(top, min(H, top + step + h - 1)), slice(n, n + 1)
    else:
        per = max(1, size // (C * H * W))
        for n in range(0, N, per):
            yield slice(0, H), slice(n, min(N, n + per))


def _assemble(pieces, dtype: torch.dtype) -> torch.Tensor:
    """Put the pieces back together: rows of one image first, then the images."""
    if len(pieces) == 1:
        return pieces[0][1].to(dtype)
    images: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    for i, (span, piece) in enumerate(pieces):
        rows.append(piece.to(dtype))
        if i + 1 == len(pieces) or pieces[i + 1][0] != span:
            images.append(rows[0] if len(rows) == 1 else torch.cat(rows, 2))
            rows = []
    return torch.cat(images, 0)


def _box(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums over every h x w window: a doubling pass down the rows, then a running sum along them."""
    c = torch.cumsum(F.pad(_slide(x, h), (1, 0)), -1)
    return c[..., w:] - c[..., :-w]


def _slide(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sums of ``n`` consecutive rows, by doubling: pairwise rounding, contiguous vector adds."""
    length = x.shape[-2] - n + 1
    out: torch.Tensor | None = None
    span, pos = 1, 0
    while n:
        if n & 1:
            part = x[..., pos : pos + length, :]
            out = part if out is None else out + part
            pos += span
        n >>= 1
        if n:
            x = x[..., :-span, :] + x[..., span:, :]
            span *= 2
    assert out is not None  # n >= 1 sets it
    return out


def _normalise(num, diff2, tnorm, method, energy=None) -> torch.Tensor:
    """OpenCV's normalisation of ``num`` by ``sqrt(diff2) * tnorm``.

    The ratio where it is below 1 in magnitude, ±1 where rounding took it just past (up to
    1.125), else the worst score (0, or 1 for ``sqdiff_normed``). A flat window (``diff2`` at most
    ``min(0.5, 10 * FLT_EPSILON * energy)``) or a zero template has no ratio: the worst score.
    ``energy`` (the window's sum of squares, or a function giving it) is needed only where
    ``diff2 <= 0.5``; the common case costs a handful of vector operations.
    """
    worst = 1.0 if method == "sqdiff_normed" else 0.0
    inv_t = torch.where(tnorm > 0, 1 / torch.where(tnorm > 0, tnorm, torch.ones_like(tnorm)), torch.zeros_like(tnorm))
    if bool((diff2.amin() <= FLAT_ABSOLUTE) if diff2.numel() else False):
        energy = energy() if callable(energy) else (diff2 if energy is None else energy)
        flat = diff2 <= (FLAT_RELATIVE * energy).clamp_max(FLAT_ABSOLUTE)
        ratio = num * torch.rsqrt(torch.where(flat, torch.ones_like(diff2), diff2)) * inv_t
        ratio = torch.where(flat, torch.full_like(ratio, torch.inf), ratio)
    else:
        # No window is near flat, so the ratio needs no more than the numerator's precision:
        # float32 passes from here on where the numerator is float32.
        diff2 = diff2.to(num.dtype)
        if needs_grad(num, diff2):
            ratio = num * torch.rsqrt(diff2) * inv_t
        else:
            ratio = torch.rsqrt(diff2).mul_(num).mul_(inv_t)  # in place: fresh pages are costly
    ratio = torch.where(tnorm > 0, ratio, torch.full_like(ratio, torch.inf)) if bool((tnorm == 0).any()) else ratio
    if method == "sqdiff_normed":
        return ratio.clamp_max(1)
    low, high = torch.aminmax(ratio)
    if low <= -1.125 or high >= 1.125:
        ratio = torch.where(ratio.abs() < 1.125, ratio, torch.full_like(ratio, worst))
    if low < -1 or high > 1:
        return ratio.clamp(-1, 1)
    return ratio


def _masked(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor, method: str, k: int) -> torch.Tensor:
    """OpenCV's masked definitions, every window statistic a float64 correlation with the mask."""
    family, normed = method.split("_")[0], method.endswith("_normed")
    N, C = x.shape[:2]
    x64, z64, m = x.double(), z.double(), m.double()
    m2 = m * m
    images = lambda t: t.repeat_interleave(k, 0)  # noqa: E731  (per template -> per image)
    if family == "ccorr":
        num = xcorr(x64, z64 * m2)
    elif family == "sqdiff":
        shift = z64.detach().mean((2, 3), keepdim=True)
        xs, zs = x64 - images(shift), z64 - shift
        tz2 = ((zs * m) ** 2).sum((1, 2, 3)).view(-1, 1, 1, 1)
        num = (images(tz2) - 2 * xcorr(xs, zs * m2) + xcorr(xs * xs, m2)).clamp_min(0)
    else:
        msum = m.sum((2, 3), keepdim=True)
        zc = z64 - (m * z64).sum((2, 3), keepdim=True) / msum
        kernel = m2 * zc
        shift = x64.detach().mean((2, 3), keepdim=True)
        xs = x64 - shift
        num = xcorr(xs, kernel)
        binary = bool(((m == 0) | (m == 1)).all())
        if not binary:
            # sum M^2 (T - mT) is zero only for binary masks; otherwise the window mean enters.
            num = num - xcorr(xs, m * kernel.sum((2, 3), keepdim=True) / msum)
    if not normed:
        return num.to(x.dtype)

    if family == "ccoeff":
        g = xcorr(xs, m, "depthwise")
        a = g if binary else xcorr(xs, m2, "depthwise")
        mean = g / images(msum).view(N, C, 1, 1)
        m2sum = images(m2.sum((2, 3), keepdim=True))
        p = xcorr(xs * xs, m2)
        diff2 = p - (2 * mean * a - mean * mean * m2sum).sum(1, keepdim=True)
        energy = p + (2 * shift * a + shift * shift * m2sum).sum(1, keepdim=True)
        tz2 = (m2 * zc * zc).sum((2, 3))
        tnorm = tz2.sum(1).sqrt()
        flat_template = (tz2 / m2.sum((2, 3))).sum(1) < FLAT_TEMPLATE
    else:
        energy = xcorr(x64 * x64, m2)
        diff2 = energy
        tnorm = ((z64 * m) ** 2).sum((1, 2, 3)).sqrt()
        flat_template = None
    score = _normalise(num, diff2, images(tnorm).view(N, 1, 1, 1), method, energy)
    if flat_template is not None:
        score = torch.where(images(flat_template).view(N, 1, 1, 1), torch.ones_like(score), score)
    return score.to(x.dtype)
