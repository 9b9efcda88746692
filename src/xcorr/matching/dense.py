"""The unmasked scores: one correlation numerator and box-filtered window statistics.

The correlation goes through :func:`xcorr.xcorr` (the planner chooses the method; channels summed,
memory bounded by the backends' chunking), and the window sums and sums of squares come from box
filters accumulated in float64, so the variance of a window survives even where it is tiny next to
its mean. For float32 ``ccoeff`` the box filters run in float32 wherever a rounding bound shows the
scores keep their precision, and in float64 elsewhere.

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
from typing import Callable

import torch
import torch.nn.functional as F

from .._compute import deterministic, needs_grad
from ..correlation import api as correlation
from ..correlation.api import xcorr
from ..correlation.family import CORRELATION, PER_PASS
from .normalise import FLAT_TEMPLATE, _normalise
from .rounding import _FLOAT32_UNIT, _Rounding
from .stages import stage

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
        shift: (N, C, 1, 1[, 1]) the shift from ``x`` to ``xs`` (``xs = x - shift``).
        residual: (N, C) float64 sums of each image's float32 centred template ``zs``
            (``ccoeff_normed`` in float32; else None), see :func:`_without_residual`.
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
    shift: torch.Tensor
    residual: torch.Tensor | None = None

    @property
    def shift2(self) -> torch.Tensor:
        """(N,) float64 squared norm of the shift (per channel)."""
        return (self.shift.double() ** 2).flatten(1).sum(1)

    @property
    def size(self) -> tuple[int, ...]:
        """The template's spatial size ((h, w), or (d, h, w) for volumes)."""
        return tuple(self.zs.shape[2:])

    def scale(self, images: slice) -> torch.Tensor:
        return _column(self.tnorm[images], self.x.dim())

    def energy(self, rows: slice, images: slice) -> torch.Tensor:
        """The piece's window sums of squares of the image itself (unshifted): by doubling in
        float32 for a float32 image (sums of non-negative terms, each within ``gamma`` of
        :func:`_fast_gamma` of its value, so no normed score moves by more than ``gamma``), in
        float64 for a float64 one."""
        return _window_squares(self.x[images, :, rows], *self.size)

    def numerator(
        self,
        rows: slice,
        images: slice,
        den2: torch.Tensor,
        s2: torch.Tensor,
        factor: float = 1,
        lowest: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The piece's numerators, correlated again in float64 at the windows where ``factor``
        times the rounding bound may pass :data:`NUMERATOR_ERROR` of the denominator
        ``tnorm * sqrt(den2)``; ``s2`` is the window's sum of squares of ``xs``. ``lowest``, each
        image's smallest ``den2`` (N,), may come computed once for templates sharing the windows."""
        h = self.size[0]
        num = self.num[images, :, rows.start : rows.stop - h + 1]
        if self.rounding is None:
            return num
        limit = NUMERATOR_ERROR / factor * self.scale(images)
        spread, local = self.rounding.spread[images] / limit, self.rounding.local[images] / limit
        # Flat windows (den2 = 0) score the worst score whatever their numerator. One reduction
        # settles the common case, where no window is near the bound (0.1 ms at 961x961, where
        # a comparison map and its any() take 1.1 ms).
        if bool((local == 0).all()):
            lowest = den2.flatten(1).amin(1) if lowest is None else lowest
            if not bool((_column(lowest, den2.dim()) < spread * spread).any()):
                return num
            inexact = den2 < spread * spread
        else:
            inexact = den2 < (spread + local * s2.sqrt()) ** 2
        inexact &= den2 > 0
        if not bool(inexact.any()):
            return num
        return self._recomputed(num, inexact, rows, images)

    def _recomputed(self, num: torch.Tensor, inexact: torch.Tensor, rows: slice, images: slice) -> torch.Tensor:
        """``num`` with the bounding box of each image's ``inexact`` windows correlated again in
        float64, then rounded once to ``num``'s dtype: float32 keeps the exact numerator to a
        relative 6e-8, and the scores after it stay in float32."""
        size = self.size
        out = num.clone()
        for j in torch.nonzero(inexact.flatten(1).any(1)).flatten().tolist():
            at = torch.nonzero(inexact[j, 0])
            lo, hi = at.amin(0).tolist(), (at.amax(0) + 1).tolist()
            n = images.start + j
            # The first spatial axis is the pieces' (rows, or depth for volumes).
            starts = [rows.start + lo[0], *lo[1:]]
            region = (
                slice(n, n + 1),
                slice(None),
                *(slice(a, a + b - c + t - 1) for a, b, c, t in zip(starts, hi, lo, size)),
            )
            # Shifted again in float64: xs's own float32 rounding (u of the shift, ~2e-6 on an
            # image of mean 40) is not small against a dark window's spread.
            crop = self.x[region].double() - self.shift[n : n + 1].double()
            box = (slice(j, j + 1), slice(None), *(slice(a, b) for a, b in zip(lo, hi)))
            out[box] = xcorr(crop, self.zs[n // self.k : n // self.k + 1].double())
        return out


def _correlated(x: torch.Tensor, z: torch.Tensor, family: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and template as ``family`` correlates them: shifted so that no large mean enters the
    rounding (see the module's precision tricks)."""
    zs, shift = _shifted_template(z, family)
    return _shifted_image(x, family, shift, k)[0], zs


def _shifted_template(z: torch.Tensor, family: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The template as ``family`` correlates it (``ccoeff``: centred; ``sqdiff``: shifted by its
    mean, with the images), and that shift of the images (``sqdiff``; else None)."""
    if family == "ccoeff":
        return z - z.mean(_spatial(z), keepdim=True), None
    if family == "sqdiff":
        shift = z.detach().mean(_spatial(z), keepdim=True)
        return z - shift, shift
    return z, None


def _shifted_image(
    x: torch.Tensor, family: str, shift: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images as ``family`` correlates them (``ccoeff``: each minus its own mean; ``sqdiff``:
    minus its template's ``shift``), and the shift taken (N, C, 1, 1[, 1])."""
    if family == "ccoeff":
        shift = x.detach().mean(_spatial(x), keepdim=True)
    elif shift is not None:
        shift = shift.repeat_interleave(k, 0)
    else:
        return x, x.new_zeros(*x.shape[:2], *(1,) * (x.dim() - 2))
    return x - shift, shift


def _numerator(xs: torch.Tensor, zs: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The correlation of ``xs`` with ``zs`` through :func:`xcorr.xcorr`'s bound call (kept per
    call signature, repeated calls trying the options), and the backend whose forward computed
    it: the numerator's error bound depends on it."""
    bound = correlation.bound(xs, zs, "naive")
    num, option = bound.call(xs, zs)
    return num, CORRELATION.passes(option, bound.spec).forward if option == PER_PASS else option


@dataclass(frozen=True)
class _Template:
    """What the unmasked scores need of the templates alone (Nt of them): computed once per call,
    or once for every image by a match plan (:class:`xcorr.MatchPlan`).

    Attributes:
        z: the templates (Nt, C, h, w); ``zs``: as correlated (centred, or shifted by ``shift``).
        shift: (Nt, C, 1, 1) the shift of ``sqdiff``'s images (the template's mean), else None.
        tz2: (Nt,) float64 ``sum zs^2``; ``tnorm``: (Nt,) the template's norm in the denominator.
        flat: (Nt,) OpenCV's flat templates (``ccoeff_normed``; else None).
        residual: (Nt, C) float64 sums of float32 ``zs`` (``ccoeff_normed``; else None).
    """

    z: torch.Tensor
    zs: torch.Tensor
    shift: torch.Tensor | None
    tz2: torch.Tensor
    tnorm: torch.Tensor
    flat: torch.Tensor | None
    residual: torch.Tensor | None

    @staticmethod
    def of(z: torch.Tensor, method: str) -> _Template:
        family = method.split("_")[0]
        zs, shift = _shifted_template(z, family)
        items = tuple(range(1, z.dim()))
        tz2 = (zs.double() ** 2).sum(items)
        tnorm = tz2.sqrt() if family == "ccoeff" else (z.double() ** 2).sum(items).sqrt()
        flat = _flat_templates(z) if method == "ccoeff_normed" else None
        residual = None
        if method == "ccoeff_normed" and z.dtype == torch.float32:
            residual = zs.detach().double().sum(_spatial(zs))
        return _Template(z, zs, shift, tz2, tnorm, flat, residual)


def _dense(
    x: torch.Tensor,
    z: torch.Tensor,
    method: str,
    k: int,
    template: _Template | None = None,
    numerator: Callable[[torch.Tensor], tuple[torch.Tensor, str]] | None = None,
) -> torch.Tensor:
    """The unmasked scores of images ``x`` against templates ``z``, ``k`` images per template;
    ``template`` (``z``'s part) and ``numerator`` (``xs -> (num, backend)``) come from a match plan."""
    family, normed = method.split("_")[0], method.endswith("_normed")
    N, C, *spatial = x.shape
    t = template or _Template.of(z, method)
    xs, shift = _shifted_image(x, family, t.shift, k)
    zs = t.zs
    with stage("numerator"):
        num, chosen = numerator(xs) if numerator is not None else _numerator(xs, zs)
    if method in ("ccorr", "ccoeff"):
        return num
    tz2, tnorm = t.tz2.repeat_interleave(k), t.tnorm.repeat_interleave(k)
    flat = None if t.flat is None else t.flat.repeat_interleave(k)
    rounding = _Rounding.of(xs, zs, num, chosen, k) if normed and num.dtype == torch.float32 else None
    residual = t.residual.repeat_interleave(k, 0) if t.residual is not None and num.dtype == torch.float32 else None
    problem = _Problem(x, xs, zs, num, method, k, tz2, tnorm, flat, rounding, shift, residual)
    score = {"ccorr": _ccorr_piece, "ccoeff": _ccoeff_piece, "sqdiff": _sqdiff_piece}[family]
    # Float32 window sums (ccoeff) take pieces of as many bytes, so twice the elements.
    piece = 2 * _PIECE if family == "ccoeff" and x.dtype == torch.float32 else _PIECE
    pieces = [(images, score(problem, rows, images)) for rows, images in _pieces(N, C, spatial, z.shape[2], piece)]
    return _assemble(pieces, x.dtype)


def _ccorr_piece(p: _Problem, rows: slice, images: slice) -> torch.Tensor:
    """``ccorr_normed`` on one piece: the window's energy is the denominator's."""
    with stage("window statistics"):
        energy = p.energy(rows, images)
    with stage("exactness check"):
        num = p.numerator(rows, images, energy, energy)
    with stage("normalisation"):
        return _normalise(num, energy, p.scale(images), p.method)


def _centred_sums(
    x: torch.Tensor, xs: torch.Tensor, shift: torch.Tensor, size: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ccoeff``'s window statistics ``(diff2, s2, s1)`` of images ``x`` as correlated, ``xs = x -
    shift``: the centred energy and the sums of squares and values of ``xs``, in float32 where
    :func:`_centred_energy_fast` allows, else in float64 from ``x`` shifted in float64 (see
    :meth:`_Problem._recomputed`: ``xs``'s rounding would move the spread of a dark window on a
    bright image)."""
    sums = _centred_energy_fast(xs, *size) if xs.dtype == torch.float32 else None
    if sums is None:
        band = x.double() - shift.double()
        s1, s2 = _box(band, *size), _box(_squares(band), *size)
        sums = _centred_energy(s1, s2, math.prod(size)), s2, s1
    return sums


def _ccoeff_piece(p: _Problem, rows: slice, images: slice) -> torch.Tensor:
    """``ccoeff_normed`` on one piece, OpenCV's flat-template rule included."""
    size = p.size
    n = math.prod(size)
    with stage("window statistics"):
        diff2, s2, s1 = _centred_sums(p.x[images, :, rows], p.xs[images, :, rows], p.shift[images], size)
    with stage("exactness check"):
        num = p.numerator(rows, images, diff2, s2)
        if p.residual is not None:
            num = _without_residual(num, s1, p.residual[images], n)
    # No window has more energy than this, so none is flat where diff2 passes its share of it.
    most = (float(s2.detach().amax()) ** 0.5 + (n * float(p.shift2[images].amax())) ** 0.5) ** 2
    with stage("normalisation"):
        score = _normalise(num, diff2, p.scale(images), p.method, lambda: p.energy(rows, images), most)
        assert p.flat is not None  # ccoeff_normed's problems have the flat-template rule
        flat = p.flat[images]
        if bool(flat.any()):
            score = torch.where(_column(flat, score.dim()), torch.ones_like(score), score)
    return score


def _without_residual(num: torch.Tensor, s1: torch.Tensor, residual: torch.Tensor, n: int) -> torch.Tensor:
    """``num`` without what the float32 template's residual contributes at each window.

    The centred template ``zs`` holds ``Tc + e``, ``e`` its float32 rounding, whose sum
    ``residual`` is not 0. The numerator ``sum xs * zs`` then carries ``sum xs * e``, whose part
    from each window's channel means, ``sum_c mean_c * residual_c`` (``mean_c = s1_c / n``), is not
    small against a window without contrast in its channels: a window black in two channels
    and all but one pixel in the third, on an image of channel means near 100, scored 1.2e-3 off
    the definition (48x48 template; OpenCV too). It is removed; what is left, ``sum (xs -
    mean) * e``, is at most ``u`` of the denominator."""
    # A rounding residue: no gradient flows through the correction (the score's stays the ratio's).
    coef = (residual / n).to(num.dtype)
    for c in range(s1.shape[1]):  # one fused pass per channel
        num = torch.addcmul(num, s1[:, c : c + 1].detach().to(num.dtype), _column(coef[:, c], num.dim()), value=-1)
    return num


def _flat_templates(z: torch.Tensor) -> torch.Tensor:
    """OpenCV's flat templates, centred in float64 as OpenCV does: a constant float32 template
    centred in float32 keeps rounding residues (a variance near 1e-16) and would pass for a
    non-flat one."""
    z64 = z.detach().double()
    centred = z64 - z64.mean(_spatial(z64), keepdim=True)
    return (centred**2).flatten(1).sum(1) / math.prod(z.shape[2:]) < FLAT_TEMPLATE


def _sqdiff_piece(p: _Problem, rows: slice, images: slice) -> torch.Tensor:
    """``sqdiff`` or ``sqdiff_normed`` on one piece, from ``sum T^2 - 2 sum I*T + sum I^2``.

    ``sum I^2`` (of the shifted image) is summed in float64, or for ``sqdiff_normed`` of a float32
    image in float32 where its rounding (``gamma`` of :func:`_fast_gamma` of it) stays below
    :data:`NUMERATOR_ERROR` of every window's denominator."""
    size = p.size
    band = p.xs[images, :, rows]
    tz2 = _column(p.tz2[images], band.dim())
    if p.method == "sqdiff":
        sq = _box(_squares(band.double()), *size)
        return (tz2 - 2 * p.numerator(rows, images, sq, sq) + sq).clamp_min(0)
    with stage("window statistics"):
        energy = p.energy(rows, images)
        sq = _window_squares(band, *size)
        if sq.dtype == torch.float32:
            # Windows without energy are flat: they score 1 whatever their sums.
            limit = (p.scale(images) * (NUMERATOR_ERROR / _fast_gamma(*size))).to(sq.dtype)
            if bool(((sq > torch.sqrt(energy).mul_(limit)) & (energy > 0)).any()):
                sq = _box(_squares(band.double()), *size)
    with stage("exactness check"):
        num = p.numerator(rows, images, energy, sq, factor=2)
    with stage("normalisation"):
        # In float64, where the expansion cancels; one buffer, updated in place, without a graph.
        if needs_grad(num, sq):
            sqdiff = (tz2 - 2 * num + sq).clamp_min(0)
        else:
            sqdiff = num.double().mul_(-2).add_(sq).add_(tz2).clamp_min_(0)
        return _normalise(sqdiff, energy, p.scale(images), p.method)


def _fast_gamma(*size: int) -> float:
    """The relative rounding of an ``h x w`` (or ``d x h x w``) window sum of non-negative
    float32 terms by doubling (:func:`_slide`, along each axis in turn): each term passes
    through at most ``ceil(log2 h) + ceil(log2 w) + 1`` additions (a term per axis), each
    rounding by a float32 unit (with a factor 2 of margin)."""
    return 2 * (sum((n - 1).bit_length() for n in size) + 1) * _FLOAT32_UNIT


def _window_squares(band: torch.Tensor, *size: int) -> torch.Tensor:
    """Window sums of squares (channels summed) of ``band``: by doubling in float32 for float32,
    else in float64 by :func:`_box`."""
    if band.dtype == torch.float32:
        return _slide_all(_squares(band), size)
    return _box(_squares(band.double()), *size)


def _centred_energy(s1: torch.Tensor, s2: torch.Tensor, n: int) -> torch.Tensor:
    """``sum (I - mean)^2`` over each window from its sums ``s1`` (per channel) and ``s2``."""
    if s1.shape[1] == 1:
        return torch.addcmul(s2, s1, s1, value=-1 / n)
    return s2 - (s1 * s1).sum(1, keepdim=True) / n


def _centred_energy_fast(band: torch.Tensor, *size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`_centred_energy` of a float32 ``band`` with float32 window sums, the window sums
    of squares ``s2`` and the per-channel window sums ``s1``; or None.

    Sums by doubling (:func:`_slide`, down the rows, then along them) round each window sum by
    at most ``gamma = 2 (ceil(log2 h) + ceil(log2 w) + 1)`` float32 units of its sum of
    magnitudes, so ``s2`` and ``s1^2 / n`` are off by at most ``gamma * s2`` and ``2 gamma * s2``.
    Where the variance left after the subtraction is at least ``3 gamma / (2 * _FAST_ERROR)`` of
    ``s2``, that moves a normed score by at most ``_FAST_ERROR``; elsewhere (a low-contrast
    window on a bright image, say) float64 sums redo boxes around those windows
    (:func:`_redone_boxes`), or the whole piece (None) where the boxes are most of it or a
    gradient is needed. Half the bytes of float64 and no prefix sums, whose float32 rounding
    would grow with the image.
    """
    gamma, n = _fast_gamma(*size), math.prod(size)
    s1 = _slide_all(band, size)
    s2 = _slide_all(_squares(band), size)
    diff2 = _centred_energy(s1, s2, n)
    margin = torch.add(diff2, s2, alpha=-3 * gamma / (2 * _FAST_ERROR))
    if not bool(margin.amin() < 0):
        return diff2, s2, s1
    if needs_grad(band):
        return None
    boxes = _boxes((margin < 0).flatten(0, 1).any(0), size)
    if 2 * sum(math.prod(b - a for a, b in box) for box in boxes) > math.prod(diff2.shape[2:]):
        return None
    return _redone_boxes(band, (diff2, s2, s1.clone() if n == 1 else s1), boxes, *size)


def _row_runs(rows: list[int], h: int) -> list[tuple[int, int]]:
    """Sorted output ``rows`` as runs ``[r0, r1)``, runs less than ``h`` rows apart merged (each
    run reads ``h - 1`` rows more than it writes)."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and r - runs[-1][1] < h:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def _boxes(windows: torch.Tensor, size: tuple[int, ...]) -> list[list[tuple[int, int]]]:
    """Boxes of output windows (``[start, stop)`` per spatial axis) that cover every window of the
    map ``windows`` (spatial, bool): the runs of its rows (:func:`_row_runs`; depth for volumes),
    each with the bounding box of its windows along the other axes: a photograph's low-contrast
    windows lie in regions (scikit-image's astronaut, a 64x64 template: boxes that read 37% of
    the image, where their whole rows read 77%)."""
    rows = torch.nonzero(windows.flatten(1).any(1)).flatten().tolist()
    boxes = []
    for r0, r1 in _row_runs(rows, size[0]):
        run = windows[r0:r1]
        box = [(r0, r1)]
        for axis in range(1, run.dim()):
            hit = torch.nonzero(run.movedim(axis, 0).flatten(1).any(1)).flatten()
            box.append((int(hit[0]), int(hit[-1]) + 1))
        boxes.append(box)
    return boxes


def _redone_boxes(
    band: torch.Tensor,
    sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    boxes: list[list[tuple[int, int]]],
    *size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sums`` (``diff2, s2, s1``, float32, overwritten) with the output windows of ``boxes``
    (:func:`_boxes`) summed again in float64, as :func:`_box` sums a whole piece."""
    diff2, s2, s1 = sums
    for box in boxes:
        out = (slice(None), slice(None), *(slice(a, b) for a, b in box))
        part = band[(slice(None), slice(None), *(slice(a, b + t - 1) for (a, b), t in zip(box, size)))].double()
        p1, p2 = _box(part, *size), _box(_squares(part), *size)
        diff2[out] = _centred_energy(p1, p2, math.prod(size))
        s2[out] = p2
        s1[out] = p1
    return diff2, s2, s1


def _slide_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sums of ``n`` consecutive columns, by doubling as :func:`_slide` does for rows."""
    return _slide(x, n, -1)


def _slide_all(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Sums over every window of ``size`` (the last ``len(size)`` axes), by doubling along each."""
    for i, n in enumerate(size):
        x = _slide(x, n, i - len(size))
    return x


def _squares(x: torch.Tensor) -> torch.Tensor:
    """Squares summed over channels: box filters commute with the channel sum."""
    return x * x if x.shape[1] == 1 else (x * x).sum(1, keepdim=True)


def _pieces(N: int, C: int, spatial: list[int], h: int, size: int):
    """Split the window statistics into (input rows, images) pieces of about ``size`` elements:
    rows along the first spatial axis (depth for volumes), whose template extent is ``h``."""
    H, row = spatial[0], C * math.prod(spatial[1:])
    if row * H > size:
        step = max(4 * h, size // row - h + 1)  # overlap of h - 1 rows stays small
        for n in range(N):
            for top in range(0, H - h + 1, step):
                yield slice(top, min(H, top + step + h - 1)), slice(n, n + 1)
    else:
        per = max(1, size // (row * H))
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


def _box(x: torch.Tensor, *size: int) -> torch.Tensor:
    """Sums over every h x w (or d x h x w) window: a doubling pass along each axis but the last,
    then a running sum along it (doubling along it too on CUDA in deterministic mode, where
    torch's floating-point ``cumsum`` has no deterministic kernel and raises)."""
    *first, w = size
    rows = x
    for i, n in enumerate(first):
        rows = _slide(rows, n, i - len(size))
    if x.device.type == "cuda" and deterministic():
        return _slide_columns(rows, w)
    c = torch.cumsum(F.pad(rows, (1, 0)), -1)
    return c[..., w:] - c[..., :-w]


def _slide(x: torch.Tensor, n: int, dim: int = -2) -> torch.Tensor:
    """Sums of ``n`` consecutive rows (slices along ``dim``), by doubling: pairwise rounding,
    contiguous vector adds."""
    length = x.shape[dim] - n + 1
    out: torch.Tensor | None = None
    span, pos = 1, 0
    while n:
        if n & 1:
            part = x.narrow(dim, pos, length)
            out = part if out is None else out + part
            pos += span
        n >>= 1
        if n:
            size = x.shape[dim] - span
            x = x.narrow(dim, 0, size) + x.narrow(dim, span, size)
            span *= 2
    assert out is not None  # n >= 1 sets it
    return out


def _spatial(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial dims of an (N, C, H, W) or (N, C, D, H, W) tensor."""
    return tuple(range(2, t.dim()))


def _column(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-image values (N,) shaped to broadcast against ``ndim``-D maps: (N, 1, ...)."""
    return t.reshape(-1, *(1,) * (ndim - 1))
