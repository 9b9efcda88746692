"""Drop-in for scikit-image's ``skimage.feature.match_template``.

``from skimage.feature import match_template`` becomes ``from xcorr.compat.skimage import
match_template``, with the same arguments and the same result: numpy in, numpy out, float32 for
float16 and float32 images and float64 for every other dtype (scikit-image's
``_supported_float_type``), of shape ``image.shape - template.shape + 1`` (the template's
first corner), or ``image.shape`` with ``pad_input=True`` (the template's centre)::

    out[i] = sum (I' * T') / sqrt(sum I'^2 * sum T'^2)

over the window at ``i`` (``I'``, ``T'``: window and template minus their means, the window's
mean over the whole window), or 0 where that denominator is at most the result dtype's epsilon.

Images are 2-D or 3-D, the template of the same dimensionality. A colour image (H, W, C) is a
3-D image: with a template (h, w, C) the output is (H-h+1, W-w+1, 1) and each window's mean is
over all its channels (OpenCV's colour ``ccoeff_normed`` takes each channel's own mean); with
``pad_input=True`` the channel axis is padded too and the output is (H, W, C).

On a grey image this is :func:`xcorr.match_template`'s ``"ccoeff_normed"`` score, from the same
correlation numerator (:func:`xcorr.xcorr`'s bound call on the centred image and template) and
the same float64 window sums; 3-D images take the volume correlations (a tensor (N, C, D, H, W)
= (1, 1, M, N, P)) and the same sums over three axes. Only the rule for windows without a ratio
is scikit-image's, not OpenCV's:

* scikit-image's rule is absolute: a window scores 0 where ``sqrt(sum I'^2 * sum T'^2)`` is at
  most epsilon, and has its ratio however small its spread is next to its brightness (OpenCV
  calls a window flat below ``10 * FLT_EPSILON`` of its energy, and scores it 0).
* A window that holds one value throughout scores 0, as its spread is exactly zero: scikit-image's
  integral images leave their rounding in the spread of such a window (unless every sum is an
  exact integer, as for integer pixels), so its own score there can be any number.
* A constant template scores 0 everywhere (OpenCV: 1).
* Ratios are clipped to [-1, 1], within which the definition keeps them (scikit-image does not
  clip its rounding).

With ``pad_input=True`` the image is padded as scikit-image pads it (``numpy.pad`` with ``mode``,
and ``constant_values`` for ``mode="constant"``, by the template's size on each side), and the
output keeps the image's size.

Unlike scikit-image, non-finite pixels make only the scores of the windows that hold them NaN (a
non-finite template all of them), the scores of a float32 image are computed in float64 before
they are rounded to float32 (scikit-image sums its integral images in float32), and a template
whose dimensionality is not the image's is refused with a ``ValueError`` naming both shapes
(scikit-image fails inside ``numpy.pad``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch

from .._checks import _listing, _type_name
from ..matching.dense import _box, _centred_energy, _correlated, _numerator
from ..matching.normalise import FLAT_RELATIVE
from ..matching.scores import _footprint
from ..matching.stages import stage

__all__ = ["match_template"]

#: ``numpy.pad``'s named modes (it also takes a function).
PAD_MODES = (
    "constant",
    "edge",
    "linear_ramp",
    "maximum",
    "mean",
    "median",
    "minimum",
    "reflect",
    "symmetric",
    "wrap",
    "empty",
)

PadMode = Union[str, Callable[..., Any]]


def match_template(
    image: np.ndarray,
    template: np.ndarray,
    pad_input: bool = False,
    mode: PadMode = "constant",
    constant_values: Any = 0,
) -> np.ndarray:
    """scikit-image's ``match_template``: the zero-mean normalised cross-correlation of
    ``template`` with every window of ``image``.

    Args:
        image: numpy (M, N), or (M, N, P) (a volume, or a colour image (H, W, C)), of any real
            dtype (bool, integer, float16, float32, float64).
        template: numpy (m, n) or (m, n, p), as many dimensions as the image, none larger
            (``m <= M``, ...), of any real dtype.
        pad_input (bool): pad the image (see ``mode``) so that the output has the image's shape
            and its values belong to the template's centre (along each axis, output index ``i``
            is the window that starts at ``i - m // 2``); otherwise the output has
            ``(M - m + 1, N - n + 1[, P - p + 1])`` values, for the template's first corner.
        mode: ``numpy.pad``'s ``mode`` for ``pad_input=True``: one of ``"constant"``, ``"edge"``,
            ``"linear_ramp"``, ``"maximum"``, ``"mean"``, ``"median"``, ``"minimum"``,
            ``"reflect"``, ``"symmetric"``, ``"wrap"``, ``"empty"``, or a function. ``"empty"``
            leaves the padding undefined in numpy; here it is zeros (as ``"constant"``), so that
            the windows inside the image keep their exact scores whatever memory held, and
            repeated calls agree.
        constant_values: ``numpy.pad``'s ``constant_values`` for ``mode="constant"``.

    Returns:
        The scores in [-1, 1], 0 where the window or the template has no spread; a numpy array of
        float32 for float16 and float32 images and of float64 for the others.

    Example:
        >>> from xcorr.compat.skimage import match_template
        >>> image = np.zeros((6, 6))
        >>> image[1, 1], image[4, 4] = 1, -1
        >>> template = np.zeros((3, 3))
        >>> template[1, 1] = 1
        >>> np.round(match_template(image, template), 3)
        array([[ 1.   , -0.125,  0.   ,  0.   ],
               [-0.125, -0.125,  0.   ,  0.   ],
               [ 0.   ,  0.   ,  0.125,  0.125],
               [ 0.   ,  0.   ,  0.125, -1.   ]])
        >>> match_template(image, template, pad_input=True).shape
        (6, 6)
        >>> colour = np.random.default_rng(0).random((32, 32, 3))
        >>> match_template(colour, colour[5:13, 7:17]).shape  # the mean over all three channels
        (25, 23, 1)
    """
    dtype = _check(image, template, pad_input, mode, constant_values)
    x = _padded(image.astype(dtype, copy=False), template.shape, pad_input, mode, constant_values)
    # A tensor (1, 1, M, N), or for volumes (N, C, D, H, W) = (1, 1, M, N, P).
    x64 = torch.from_numpy(np.ascontiguousarray(x, np.float64))[None, None]
    z64 = torch.from_numpy(np.ascontiguousarray(template, np.float64))[None, None]
    return _scores(x64, z64, float(np.finfo(dtype).eps))[0, 0].numpy().astype(dtype, copy=False)


def _padded(x: np.ndarray, size: Sequence[int], pad_input: bool, mode: PadMode, constant_values: Any) -> np.ndarray:
    """The image whose valid windows are the output's: ``x`` itself, or with ``pad_input``
    scikit-image's padded image (``size`` on each side, so that every mode, ``linear_ramp``'s and a
    function's included, gives its values) cut to the windows of the output's positions."""
    if not pad_input:
        return x
    if mode == "empty":  # undefined: zeros, never what the memory held (see match_template)
        mode, constant_values = "constant", 0
    kwargs = {"constant_values": constant_values} if mode == "constant" else {}
    padded = np.pad(x, [(m, m) for m in size], mode=mode, **kwargs)  # type: ignore[call-overload]
    # Output i's window starts at image index i - m // 2, padded index i + m - m // 2.
    return padded[tuple(slice(m - m // 2, m + M + (m - 1) // 2) for m, M in zip(size, x.shape))]


def _scores(x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """The scores (1, 1, *(x's size - z's size + 1)) of the float64 image ``x`` (1, 1, H, W) or
    volume (1, 1, D, H, W) against the template ``z`` of as many dimensions by scikit-image's
    rule (0 where the denominator is at most ``eps``), NaN at the windows that hold a non-finite
    pixel."""
    size = list(z.shape[2:])
    if not bool(torch.isfinite(z).all()):  # every ratio is NaN, whatever the denominator
        return x.new_full((1, 1, *(n - m + 1 for n, m in zip(x.shape[2:], size))), torch.nan)

    def score(x: torch.Tensor) -> torch.Tensor:
        xs, zs = _correlated(x, z, "ccoeff", 1)
        with stage("numerator"):
            num, _ = _numerator(xs, zs)
        with stage("window statistics"):
            s1, s2 = _box(xs, *size), _box(xs * xs, *size)
            diff2 = _centred_energy(s1, s2, math.prod(size)).clamp_min_(0)
        with stage("normalisation"):
            # A constant template centred in floating point keeps residues; its spread is zero.
            tz2 = 0.0 if bool(z.amax() == z.amin()) else float((zs * zs).sum())
            constant = _constant_windows(x, diff2, s2, size)
            den = diff2.mul_(tz2).sqrt_()
            # In place, one buffer: a zero denominator's inf or NaN is overwritten.
            return num.div_(den).masked_fill_((den <= eps) | constant, 0.0).clamp_(-1, 1)

    return _footprint(score, x, size)


def _constant_windows(x: torch.Tensor, diff2: torch.Tensor, s2: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The windows of ``x`` that hold one value throughout, looked for among those whose spread
    ``diff2`` is within :data:`~xcorr.matching.normalise.FLAT_RELATIVE` of their energy, of ``x``
    plus of the centred image (``s2``): a constant window's spread is the window sums' float64
    rounding, which scales with both (a black window beside bright ones has no energy of its own,
    but the centred image's); windows further from flat hold two values whatever the rounding."""
    n = math.prod(size)
    most = (float(s2.amax()) ** 0.5 + (n * float(x.mean()) ** 2) ** 0.5) ** 2  # no window's energy is larger
    if not bool(diff2.amin() <= FLAT_RELATIVE * (most + float(s2.amax()))):
        return torch.zeros_like(diff2, dtype=torch.bool)
    near = diff2 <= FLAT_RELATIVE * (_box(x * x, *size) + s2)
    if not bool(near.any()):
        return near
    at = torch.nonzero(near[0, 0])
    lo, hi = at.amin(0).tolist(), (at.amax(0) + 1).tolist()
    crop = x[0, 0][tuple(slice(a, b + m - 1) for a, b, m in zip(lo, hi, size))]
    constant = torch.zeros_like(near)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    constant[0, 0][box] = _window_extreme(crop, size, torch.maximum) == _window_extreme(crop, size, torch.minimum)
    return near & constant


def _window_extreme(x: torch.Tensor, size: list[int], op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``op`` (maximum or minimum) over every ``size`` window of ``x``, one dimension at a time."""
    for dim, n in enumerate(size):
        x = _run_extreme(x, n, dim, op)
    return x


def _run_extreme(x: torch.Tensor, n: int, dim: int, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``op`` over every run of ``n`` along ``dim``: runs of the largest power of two ``p <= n``
    by doubling, then two of them overlapping to cover ``n`` (exact, as max and min are)."""
    p = 1
    while 2 * p <= n:
        length = x.shape[dim] - p
        x = op(x.narrow(dim, 0, length), x.narrow(dim, p, length))
        p *= 2
    length = x.shape[dim] - (n - p)
    return op(x.narrow(dim, 0, length), x.narrow(dim, n - p, length))


def _check(image: Any, template: Any, pad_input: Any, mode: Any, constant_values: Any) -> np.dtype:
    """Validate the arguments; return the result's dtype (scikit-image's ``_supported_float_type``)."""
    for name, a in (("image", image), ("template", template)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {_type_name(a)}")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must have a real dtype (bool, integer or floating-point), got {a.dtype.name}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (M, N) or 3-D (M, N, P), got shape {image.shape}")
    if template.ndim != image.ndim:
        raise ValueError(
            f"template must have the image's dimensionality; got image {image.shape} and template {template.shape}"
        )
    if template.size == 0:
        raise ValueError(f"template must not be empty; got image {image.shape} and template {template.shape}")
    if any(m > M for m, M in zip(template.shape, image.shape)):
        raise ValueError(
            f"template must not be larger than the image along any axis; got image {image.shape} and "
            f"template {template.shape}"
        )
    if not isinstance(pad_input, (bool, np.bool_)):
        raise TypeError(f"pad_input must be a bool, got {_type_name(pad_input)}")
    if not (callable(mode) or mode in PAD_MODES):
        raise ValueError(f"mode must be a function or one of numpy.pad's modes {_listing(PAD_MODES)}; got {mode!r}")
    if mode == "constant":
        _check_constant_values(constant_values, image.ndim)
    return np.dtype(np.float32) if image.dtype.kind == "f" and image.dtype.itemsize <= 4 else np.dtype(np.float64)


def _check_constant_values(constant_values: Any, ndim: int) -> None:
    """A real number, or numbers that broadcast to one (before, after) pair per axis, as
    ``numpy.pad`` takes them."""
    try:
        numbers = np.asarray(constant_values)
    except ValueError:  # a ragged sequence
        numbers = np.asarray(None)
    if numbers.dtype.kind not in "biuf":
        raise TypeError(
            f"constant_values must be a real number or (before, after) pairs of them, got {constant_values!r}"
        )
    try:
        np.broadcast_to(numbers, (ndim, 2))
    except ValueError:
        raise ValueError(
            f"constant_values must broadcast to one (before, after) pair per axis, shape ({ndim}, 2); "
            f"got shape {numbers.shape}"
        ) from None
