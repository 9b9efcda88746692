"""Template matching: OpenCV's six ``TM_*`` scores on the correlation backends, batched and differentiable.

Each score is one correlation plus window statistics. Unmasked, the correlation is this
module's own real FFT (one transform of the image shared by its channels; the planner's choice
through :func:`xcorr.xcorr` for small templates on small images), and the window sums and sums
of squares come from box filters accumulated in float64, so the variance of a window survives
even where it is tiny next to its mean. For float32 ``ccoeff`` the box filters run in float32
wherever a rounding bound shows the scores keep their precision, and in float64 elsewhere.
Masked windows are weighted by the mask, so their sums are correlations with the mask,
computed in float64.

Precision tricks, each exact in arithmetic:

* ``ccoeff``: the template is centred, and each image shifted by its own mean, so the
  correlation never subtracts two large numbers (``sum I*T' == sum (I - c)*T'`` when
  ``sum T' == 0``).
* ``sqdiff``: image and template are shifted by the template's mean before the expansion
  ``sum T^2 - 2 sum I*T + sum I^2``, which leaves ``I - T`` unchanged.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_find_peaks, check_mask_weights, check_match
from .backends.fft import next_fast_len
from .ops import HALF, xcorr

Array = Union[np.ndarray, torch.Tensor]
Peak = tuple[int, int, float]

#: OpenCV's flat-window rule: a window is flat when its energy about its mean is at most
#: ``min(FLAT_ABSOLUTE, FLAT_RELATIVE * its energy)`` (10 float32 epsilons relative; 0.5 absolute,
#: which is below any non-flat window of integer-valued pixels).
FLAT_RELATIVE = 10 * float(np.finfo(np.float32).eps)
FLAT_ABSOLUTE = 0.5
#: OpenCV's flat-template rule for ``ccoeff_normed``: summed channel variance below float64 epsilon.
FLAT_TEMPLATE = float(np.finfo(np.float64).eps)

# Box filters run on pieces of about this many elements: float64 temporaries then stay in cache
# and below the size from which every allocation maps fresh, zero-filled pages.
_PIECE = 1 << 19

# Templates with fewer taps than this, on images of fewer pixels than _FFT_PIXELS, are correlated
# as the planner decides: direct convolution beats an FFT there (measured on CPU, float32).
_DIRECT_TAPS = 64
_FFT_PIXELS = 1 << 16
# Largest change of a ``ccoeff_normed`` score that float32 window sums may cause (half the
# tolerance against OpenCV); see _centred_energy_fast.
_FAST_ERROR = 1e-4
_FLOAT32_UNIT = 2.0**-24


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
        x, z, m = _from_arrays(image, template, mask)
        return _scores(x, z, method, m)[0, 0].to(torch.float32).numpy()
    return _scores(image, template, method, None if mask is None else _mask_tensor(mask, template.dtype))


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
    if mask is not None:
        check_mask_weights(mask, method.startswith("ccoeff"))
    if N == 0:
        # Keep the empty result attached to both inputs, so autograd sees the dependency.
        return x.new_zeros(0, 1, H - h + 1, W - w + 1) + (x.sum() + z.sum()) * 0
    if x.dtype in HALF:
        return _scores(x.float(), z.float(), method, mask).to(x.dtype)
    if mask is not None:
        return _masked(x, z, mask.expand(Nt, C, h, w), method, N // Nt)
    return _dense(x, z, method, N // Nt)


def _dense(x: torch.Tensor, z: torch.Tensor, method: str, k: int) -> torch.Tensor:
    family, normed = method.split("_")[0], method.endswith("_normed")
    N, C, H, W = x.shape
    _, _, h, w = z.shape
    if family == "ccoeff":
        zs = z - z.mean((2, 3), keepdim=True)
        shift = x.detach().mean((2, 3), keepdim=True)
    elif family == "sqdiff":
        shift = z.detach().mean((2, 3), keepdim=True)
        zs = z - shift
        shift = shift.repeat_interleave(k, 0)
    else:
        zs, shift = z, None
    xs = x if shift is None else x - shift
    num = _correlate(xs, zs, k)
    if method in ("ccorr", "ccoeff"):
        return num

    # Per-template constants, one entry per image.
    tz2 = (zs.double() ** 2).sum((1, 2, 3)).repeat_interleave(k)
    tnorm = tz2.sqrt() if family == "ccoeff" else (z.double() ** 2).sum((1, 2, 3)).sqrt().repeat_interleave(k)
    flat_template = None
    if method == "ccoeff_normed":
        # Centred in float64, as OpenCV does: a constant float32 template centred in float32 keeps
        # rounding residues (a variance near 1e-16) and would pass for a non-flat one.
        z64 = z.detach().double()
        variance = ((z64 - z64.mean((2, 3), keepdim=True)) ** 2).sum((1, 2, 3)) / (h * w)
        flat_template = (variance < FLAT_TEMPLATE).repeat_interleave(k)
    pieces = []
    # Float32 window sums (ccoeff) take pieces of as many bytes, so twice the elements.
    piece = 2 * _PIECE if family == "ccoeff" and x.dtype == torch.float32 else _PIECE
    for rows, images in _pieces(N, C, H, W, h, piece):
        out_rows = slice(rows.start, rows.stop - h + 1)
        num_i = num[images, :, out_rows]
        if family == "ccoeff":
            diff2 = _centred_energy_fast(xs[images, :, rows], h, w) if x.dtype == torch.float32 else None
            if diff2 is None:
                band = xs[images, :, rows].double()
                diff2 = _centred_energy(_box(band, h, w), _box(_squares(band), h, w), h * w)
        elif family == "sqdiff":
            sq = _box(_squares(xs[images, :, rows].double()), h, w)
            num_i = (tz2[images].view(-1, 1, 1, 1) - 2 * num_i + sq).clamp_min(0)
            if not normed:
                pieces.append((images, num_i))
                continue
            raw = x[images, :, rows].double()
            diff2 = _box(_squares(raw), h, w)
        else:
            diff2 = _box(_squares(xs[images, :, rows].double()), h, w)
        energy = (lambda: _energy(x, images, rows, h, w)) if family == "ccoeff" else None
        score = _normalise(num_i, diff2, tnorm[images].view(-1, 1, 1, 1), method, energy)
        if flat_template is not None and bool(flat_template[images].any()):
            score = torch.where(flat_template[images].view(-1, 1, 1, 1), torch.ones_like(score), score)
        pieces.append((images, score))
    return _assemble(pieces, x.dtype)


def _correlate(x: torch.Tensor, z: torch.Tensor, k: int) -> torch.Tensor:
    """Valid correlation of each image with its template, channels summed: ``(N, 1, H', W')``.

    Real FFTs of the image's own size rounded up to a 2·3·5·7-smooth length (wrap-around never
    reaches a valid output), channels summed before the one inverse transform. Direct
    convolution loses to this from templates of about 8 x 8 on, and on images of 256 x 256
    and more whatever the template; below both, the planner decides.
    """
    N, C, H, W = x.shape
    Nt, _, h, w = z.shape
    if h * w < _DIRECT_TAPS and H * W < _FFT_PIXELS:
        return xcorr(x, z, "naive")
    size = (next_fast_len(H), next_fast_len(W))
    spectrum = torch.fft.rfft2(x, s=size).view(Nt, k, C, size[0], -1)
    template = torch.fft.rfft2(z, s=size).conj().unsqueeze(1)
    if torch.is_grad_enabled() and (spectrum.requires_grad or template.requires_grad):
        product = spectrum * template
    else:
        product = spectrum.mul_(template)  # the spectrum is ours: no fresh pages for the product
    product = product.sum(2) if C > 1 else product.squeeze(2)
    # Inverse along the columns first, so the last, real inverse runs on the valid rows only.
    rows = torch.fft.ifft(product.reshape(N, 1, size[0], -1), dim=-2)[..., : H - h + 1, :]
    return torch.fft.irfft(rows, n=size[1], dim=-1)[..., : W - w + 1]


def _centred_energy(s1: torch.Tensor, s2: torch.Tensor, n: int) -> torch.Tensor:
    """``sum (I - mean)^2`` over each window from its sums ``s1`` (per channel) and ``s2``."""
    if s1.shape[1] == 1:
        return torch.addcmul(s2, s1, s1, value=-1 / n)
    return s2 - (s1 * s1).sum(1, keepdim=True) / n


def _centred_energy_fast(band: torch.Tensor, h: int, w: int) -> torch.Tensor | None:
    """:func:`_centred_energy` of a float32 ``band`` with float32 window sums, or None.

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
    return diff2


def _slide_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sums of ``n`` consecutive columns, by doubling as :func:`_slide` does for rows."""
    return _slide(x.transpose(-1, -2), n).transpose(-1, -2)


def _energy(x: torch.Tensor, images: slice, rows: slice, h: int, w: int) -> torch.Tensor:
    raw = x[images, :, rows].double()
    return _box(_squares(raw), h, w)


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
    out, span, pos = None, 1, 0
    while n:
        if n & 1:
            part = x[..., pos : pos + length, :]
            out = part if out is None else out + part
            pos += span
        n >>= 1
        if n:
            x = x[..., :-span, :] + x[..., span:, :]
            span *= 2
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
        if torch.is_grad_enabled() and (num.requires_grad or diff2.requires_grad):
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
