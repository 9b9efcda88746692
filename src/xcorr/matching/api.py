"""The public functions of template matching: :func:`match_template` and :func:`find_peaks`."""

from __future__ import annotations

from typing import Optional, Union, cast

import numpy as np
import torch

from .._compute import compute_dtype
from .checks import array_layout, check_find_peaks, check_match, mask_layout
from .peaks import _peaks
from .scores import _scores

Array = Union[np.ndarray, torch.Tensor]


def match_template(
    image: Array,
    template: Array,
    method: str = "ccoeff_normed",
    *,
    mask: Array | None = None,
    channel_axis: int | None = -1,
) -> Array:
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
            or Tensor[N, C, H, W] of a floating dtype, on any device. Volumes: Tensor[N, C, D, H, W]
            (and numpy volumes, see ``channel_axis``).
        template: numpy (h, w) or (h, w, C) of the image's dtype; or Tensor[Nt, C, h, w] with
            ``N`` a multiple of ``Nt``: template ``i`` serves images ``i*k ... i*k+k-1``; for
            volumes Tensor[Nt, C, d, h, w].
        method: one of ``"sqdiff"``, ``"sqdiff_normed"``, ``"ccorr"``, ``"ccorr_normed"``,
            ``"ccoeff"``, ``"ccoeff_normed"``.
        mask: optional template weights with OpenCV's masked definitions (each template and window
            pixel weighted by the mask): numpy (h, w) or (h, w, 1 or C); a tensor (h, w),
            (1 or C, h, w) or (1 or Nt, 1 or C, h, w). bool and uint8 masks are binary (non-zero
            means 1), floating masks are weights; they must be non-negative, and not all zero.
            For volumes the same forms with a depth axis: (d, h, w), (1 or C, d, h, w) or
            (1 or Nt, 1 or C, d, h, w).
            Unlike OpenCV's, masked normed scores keep the bounds above.
        channel_axis: where a numpy array keeps its channels. ``-1`` (the default) is OpenCV's
            reading: a 2-D array is grey (H, W), a 3-D one colour (H, W, C), a 4-D one a colour
            volume (D, H, W, C). ``None``: no channel axis, so a 3-D array is a grey volume
            (D, H, W), as scikit-image reads it. Another int: the channels at that axis (of a 3-D
            image or a 4-D volume). Numpy masks follow the template's layout. Tensors keep their
            channels at axis 1: only the default is allowed.

    Returns:
        numpy float32 (H-h+1, W-w+1) for numpy inputs; Tensor[N, 1, H-h+1, W-w+1] of the image's
        dtype and device for tensors, differentiable in image and template; for volumes
        (D-d+1, H-h+1, W-w+1) and Tensor[N, 1, D-d+1, H-h+1, W-w+1].

    Example:
        >>> image = np.zeros((6, 7), np.float32)
        >>> image[2:4, 3:5] = [[1, 2], [3, 4]]
        >>> scores = match_template(image, image[1:5, 2:6].copy())
        >>> (x, y, score), = find_peaks(scores)
        >>> scores.shape, (x, y), round(score, 5)
        ((3, 4), (2, 1), 1.0)
        >>> match_template(torch.rand(8, 3, 32, 32), torch.rand(2, 3, 5, 5)).shape
        torch.Size([8, 1, 28, 28])
        >>> match_template(torch.rand(2, 1, 16, 16, 16), torch.rand(1, 1, 4, 4, 4)).shape
        torch.Size([2, 1, 13, 13, 13])
    """
    if check_match(image, template, method, mask, channel_axis):
        x, z, m = _from_arrays(
            cast(np.ndarray, image), cast(np.ndarray, template), cast(Optional[np.ndarray], mask), channel_axis
        )
        return _scores(x, z, method, m)[0, 0].to(torch.float32).numpy()
    image, template = cast(torch.Tensor, image), cast(torch.Tensor, template)
    weights = None if mask is None else _mask_tensor(cast(torch.Tensor, mask), template.dtype, template.dim())
    return _scores(image, template, method, weights)


def find_peaks(scores: Array, k: int = 1, *, min_distance: int | None = None, largest: bool = True):
    """The ``k`` best positions of a score map, with non-maximum suppression.

    Args:
        scores: numpy or Tensor (H', W'), or Tensor/array (N, 1, H', W') for a batch; for
            volumes (D', H', W') or (N, 1, D', H', W').
        k (int): how many positions to return (fewer if the map runs out).
        min_distance (int or None): peaks are at least this far apart (Chebyshev distance, in
            pixels): a chosen peak suppresses the positions closer than that. ``None`` means no
            suppression (plain top-k). Half the template size is a good choice.
        largest (bool): best means largest (``ccorr``, ``ccoeff``); pass ``False`` for ``sqdiff``.

    Returns:
        list of ``(x, y, score)``, best first, with ``(x, y)`` the template's top-left corner as
        ``cv2.minMaxLoc`` reports it (ties go to the first position in row-major order); for
        volumes ``(x, y, z, score)``, ``x`` along the last axis and ``z`` the depth (``min_distance``
        the Chebyshev distance in 3-D); for a batch, one such list per item.

    Example:
        >>> find_peaks(np.array([[0, 5, 0], [9, 0, 4]], np.float32), k=2)
        [(0, 1, 9.0), (1, 0, 5.0)]
        >>> volume = np.zeros((3, 4, 5), np.float32)
        >>> volume[2, 1, 3] = 1
        >>> find_peaks(volume)
        [(3, 1, 2, 1.0)]
    """
    check_find_peaks(scores, k, min_distance, largest)
    s = torch.from_numpy(np.ascontiguousarray(scores)) if isinstance(scores, np.ndarray) else scores.detach()
    if s.dim() in (4, 5):
        return [_peaks(item[0], k, min_distance or 1, largest) for item in s]
    return _peaks(s, k, min_distance or 1, largest)


def _from_arrays(image: np.ndarray, template: np.ndarray, mask: np.ndarray | None, channel_axis: int | None = -1):
    """numpy arguments as tensors (1, C, H, W) or (1, C, D, H, W): float64 for a float64 image,
    else float32; a bool or uint8 mask as binary weights."""
    dtype = _array_dtype(image)
    m = None
    if mask is not None:
        axis = mask_layout(mask, array_layout(template, "template", channel_axis), channel_axis).axis
        m = _array_tensor(_mask_weights(mask), dtype, axis).to(dtype)
    image_axis = array_layout(image, "image", channel_axis).axis
    template_axis = array_layout(template, "template", channel_axis).axis
    return _array_tensor(image, dtype, image_axis), _array_tensor(template, dtype, template_axis), m


def _array_dtype(image: np.ndarray) -> torch.dtype:
    """The dtype numpy images are scored in: float64 for a float64 image, else float32."""
    return torch.float64 if image.dtype == np.float64 else torch.float32


def _mask_weights(mask: np.ndarray) -> np.ndarray:
    """A numpy mask as weights: bool and uint8 masks are binary (OpenCV's 8-bit masks)."""
    return (mask != 0) if mask.dtype.kind in "bu" else mask


def _array_tensor(a: np.ndarray, dtype: torch.dtype, axis: int | None = -1) -> torch.Tensor:
    """A numpy array with its channels at ``axis`` (None: grey) as a tensor (1, C, *spatial) of
    ``dtype`` (a view where it can be); by default OpenCV's (H, W) or (H, W, C)."""
    if axis == -1:
        axis = 2 if a.ndim == 3 else None
    a = a[None] if axis is None else np.moveaxis(a, axis, 0)
    if a.dtype == np.uint8:
        a = a.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(a) if a.flags.writeable else a.copy())
    return t.unsqueeze(0).to(dtype).contiguous()


def _mask_tensor(mask: torch.Tensor, dtype: torch.dtype, ndim: int = 4) -> torch.Tensor:
    """A tensor mask as ``ndim``-D weights (the template's dims) in the template's ``dtype``
    (float32 for half precision); a bool or uint8 mask as binary ones."""
    m = mask if mask.dtype.is_floating_point else (mask != 0)
    m = m.to(compute_dtype(dtype))
    while m.dim() < ndim:
        m = m.unsqueeze(0)
    return m
