"""Template matching as detection: :func:`find_matches` and its record, :class:`Matches`.

Every template at every scale is scored over the image (:mod:`.many`: the image's share of the
work done once for all), the placements that pass the threshold and are the best of their 3x3
neighbourhood become candidates, and greedy non-maximum suppression by box overlap across
templates and scales keeps the best of each group of overlapping boxes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union, cast

import numpy as np
import torch
import torch.nn.functional as F

from .._compute import HALF
from .api import _array_dtype, _array_tensor, _mask_tensor, _mask_weights
from .checks import check_find_matches
from .many import SHARED, _each
from .scores import _scores

Array = Union[np.ndarray, torch.Tensor]

#: Candidates (placements past the threshold, each the best of its 3x3 neighbourhood) that one
#: image's suppression considers: the best ones, with a warning when there were more.
MAX_CANDIDATES = 1 << 16

# Candidates are suppressed in blocks of this many: one block's overlaps are a (block, block)
# matrix, and the kept boxes suppress the next block in one comparison.
_BLOCK = 1024


@dataclass(frozen=True)
class Matches:
    """The matches of :func:`find_matches` in one image, best first.

    numpy arrays for numpy inputs, tensors (on the image's device) for tensor inputs.

    Attributes:
        boxes: (n, 4) int64 ``x, y, w, h``: the top-left corner of the placement (as
            :func:`xcorr.find_peaks` reports it) and the size of the template at its scale.
        scores: (n,) the scores (float32 for numpy inputs, the image's dtype for tensors).
        template: (n,) int64 the index of the template in ``templates``.
        scale: (n,) float64 the scale of the template, one of ``scales``.
    """

    boxes: Array
    scores: Array
    template: Array
    scale: Array

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def find_matches(
    image: Array,
    templates: Array | Sequence[Array],
    method: str = "ccoeff_normed",
    *,
    threshold: float,
    max_overlap: float = 0.3,
    scales: Sequence[float] | None = None,
    mask: Array | Sequence[Array | None] | None = None,
    k: int | None = None,
) -> Matches | list[Matches]:
    """Every placement of every template, at every scale, that scores past ``threshold``, without
    overlapping duplicates: template matching as object detection.

    The scores are :func:`xcorr.match_template`'s. A placement is a candidate when its score
    passes ``threshold`` (``>=`` where higher is better, ``<=`` for ``"sqdiff"`` and
    ``"sqdiff_normed"``) and no score of the 8 placements around it (same template and scale)
    is better: a peak, not the slope beside it. Candidates of all templates and scales are then
    suppressed greedily, best first: a box whose overlap (intersection over union) with a kept
    box is more than ``max_overlap`` is dropped (torchvision's ``nms``). Ties go to the lower
    template index, then the earlier scale, then the first position in row-major order. At most
    :data:`~xcorr.matching.detect.MAX_CANDIDATES` candidates per image, the best, are considered (with a warning: a
    threshold that lets more pass finds noise).

    Scales resize each template with ``torch.nn.functional.interpolate`` to
    ``round(h * s) x round(w * s)``: ``"area"`` when shrinking (each pixel the mean of the
    pixels it covers, as OpenCV's ``INTER_AREA``: no aliasing) and ``"bilinear"`` when growing
    (``"area"`` would repeat pixels in blocks); a mask is resized in the same way, into weights.
    A template larger than the image at a scale has no placement there and is skipped; it is an
    error when no template fits at any scale, or when a scale makes a template smaller than one
    pixel.

    All templates are scored together (``xcorr.matching.many``): the image is transformed
    once, and its window statistics are summed once per distinct template size; with masks each
    template is scored on its own. Scores are not differentiable here (call
    :func:`xcorr.match_template` for that).

    Args:
        image: numpy (H, W) or (H, W, C), uint8, float32 or float64; or Tensor[C, H, W] or
            Tensor[N, C, H, W] of a floating dtype.
        templates: one template or a sequence of templates (sizes may differ): numpy (h, w) or
            (h, w, C) of the image's dtype, or Tensor[C, h, w] or Tensor[1, C, h, w] of the
            image's dtype and device; all with the image's channels.
        method: one of :func:`xcorr.match_template`'s six methods.
        threshold (float): the score a match must reach (required: no threshold suits every
            method and scene; 0.8 is a common start for ``"ccoeff_normed"``).
        max_overlap (float): in [0, 1]; boxes overlapping a better match by more than this
            (intersection over union) are dropped. Touching boxes do not overlap.
        scales (list of float or None): positive scale factors of the templates; ``None``
            means ``(1.0,)``.
        mask: for one template, its mask; for a sequence of templates, a sequence of masks, one
            per template (``None`` for none), as :func:`xcorr.match_template` takes them.
        k (int or None): at most this many matches per image (the best); ``None``: all.

    Returns:
        :class:`Matches` for a numpy image or a Tensor[C, H, W]; for a Tensor[N, C, H, W], a list
        of N of them, one per image.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> image = rng.random((64, 80), dtype=np.float32)
        >>> star, ring = image[10:22, 5:17].copy(), image[40:56, 50:66].copy()
        >>> found = find_matches(image, [star, ring], threshold=0.9)
        >>> sorted(zip(found.template.tolist(), found.boxes.tolist()))
        [(0, [5, 10, 12, 12]), (1, [50, 40, 16, 16])]
    """
    arrays = check_find_matches(image, templates, method, threshold, max_overlap, scales, mask, k)
    single = not isinstance(templates, (list, tuple))
    zs = [templates] if single else list(cast(Sequence[Array], templates))
    masks = (
        [mask] if single else (list(cast(Sequence[Optional[Array]], mask)) if mask is not None else [None] * len(zs))
    )
    factors = [1.0] if scales is None else [float(s) for s in scales]
    if arrays:
        x = _array_tensor(cast(np.ndarray, image), _array_dtype(cast(np.ndarray, image)))
        z = [_array_tensor(cast(np.ndarray, t), x.dtype) for t in zs]
        m = [None if a is None else _array_tensor(_mask_weights(cast(np.ndarray, a)), x.dtype) for a in masks]
    else:
        x = cast(torch.Tensor, image).detach()
        x = x.unsqueeze(0) if x.dim() == 3 else x
        z = [(t.unsqueeze(0) if t.dim() == 3 else t).detach() for t in cast(list[torch.Tensor], zs)]
        m = [None if a is None else _mask_tensor(cast(torch.Tensor, a), x.dtype) for a in masks]
    with torch.no_grad():
        found = _find(x, z, m, factors, method, float(threshold), float(max_overlap), k)
    if arrays:
        return _record([f.cpu().numpy() for f in found[0]], np)
    out = [_record(list(f), torch) for f in found]
    return out[0] if cast(torch.Tensor, image).dim() == 3 else out


def _record(parts: list, lib: Any) -> Matches:
    boxes, scores, template, scale = parts
    if lib is np:
        scores = scores.astype(np.float32)
    return Matches(boxes, scores, template, scale)


def _resized(z: torch.Tensor, scale: float) -> torch.Tensor:
    """Template (or mask) ``z`` (1, C, h, w) at ``scale``: ``round(h * scale) x round(w * scale)``,
    by area averaging when shrinking and bilinear interpolation when growing."""
    h, w = z.shape[-2:]
    size = (round(h * scale), round(w * scale))
    if size == (h, w):
        return z
    return F.interpolate(z, size=size, mode="area" if scale < 1 else "bilinear", align_corners=None)


def _find(
    x: torch.Tensor,
    zs: list[torch.Tensor],
    masks: list[torch.Tensor | None],
    scales: list[float],
    method: str,
    threshold: float,
    max_overlap: float,
    k: int | None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image of ``x`` (N, C, H, W): boxes, scores, template indices and scales of the matches."""
    H, W = x.shape[-2:]
    if x.shape[0] == 0:
        return []
    dtype = torch.float32 if x.dtype in HALF else x.dtype
    xc = x.to(dtype)
    pairs = []  # (template index, scale, resized template, resized mask) that fit
    for i, (z, m) in enumerate(zip(zs, masks)):
        for s in scales:
            zr = _resized(z.to(dtype), s)
            if zr.shape[-2] <= H and zr.shape[-1] <= W:
                pairs.append((i, s, zr, None if m is None else _resized(m, s)))
    lower = method.startswith("sqdiff")
    # Each map is reduced to its candidates as soon as it is scored, and dropped.
    candidates: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in pairs]
    for j, scores_j in _score_maps(xc, pairs, method):
        candidates[j] = [_candidates(scores_j[n, 0], threshold, lower) for n in range(x.shape[0])]
    found = []
    for n in range(x.shape[0]):
        boxes, scores, template, scale = [], [], [], []
        for (i, s, zr, _), per_image in zip(pairs, candidates):
            pos, value = per_image[n]
            h, w = zr.shape[-2:]
            boxes.append(
                torch.stack([pos[:, 1], pos[:, 0], torch.full_like(pos[:, 0], w), torch.full_like(pos[:, 0], h)], 1)
            )
            scores.append(value)
            template.append(torch.full_like(pos[:, 0], i))
            scale.append(torch.full((len(value),), s, dtype=torch.float64, device=x.device))
        b, v, t, c = torch.cat(boxes), torch.cat(scores), torch.cat(template), torch.cat(scale)
        keep = _suppressed(b, -v if lower else v, max_overlap, k)
        found.append((b[keep], v[keep].to(x.dtype), t[keep], c[keep]))
    return found


def _score_maps(x: torch.Tensor, pairs: list, method: str) -> Iterator[tuple[int, torch.Tensor]]:
    """The score maps (N, 1, H', W') of the (template, scale) pairs, one at a time as ``(index in
    pairs, map)``: all unmasked ones together (:func:`.many._each`) where the method shares the
    image's work and the inputs are finite, then the others one by one (:func:`.scores._scores`,
    whose maps are NaN exactly at the windows that hold a non-finite pixel)."""
    unmasked = [j for j, p in enumerate(pairs) if p[3] is None] if method in SHARED else []
    shared = bool(unmasked) and bool(torch.isfinite(x.sum()))
    shared = shared and all(bool(torch.isfinite(pairs[j][2].sum())) for j in unmasked)
    if shared:
        for j, s in _each(x, [pairs[j][2] for j in unmasked], method):
            yield unmasked[j], s
    done = set(unmasked) if shared else set()
    for j, (_, _, z, m) in enumerate(pairs):
        if j not in done:
            yield j, _scores(x, z, method, m)


def _candidates(s: torch.Tensor, threshold: float, lower: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions (n, 2) ``(row, column)`` and scores (n,) of the map ``s`` (H', W') that pass
    ``threshold`` and are the best of their 3x3 neighbourhood (a NaN neighbour is no better);
    NaN never passes. The neighbours are read at the passing positions only: a max-pool of the
    whole map took longer than its scores (36 ms at 985x985, one thread). A map whose best score
    does not pass (most templates at most scales) is settled by one reduction: 0.04 ms against
    0.6 at 985x985."""
    best = s.amin() if lower else s.amax()  # NaN where the map holds one: then look
    if not bool((best <= threshold if lower else best >= threshold) | torch.isnan(best)):
        return torch.zeros(0, 2, dtype=torch.long, device=s.device), s.new_zeros(0)
    pos = torch.nonzero(s <= threshold if lower else s >= threshold)
    r, c = pos[:, 0], pos[:, 1]
    value = s[r, c]
    peak = torch.ones_like(value, dtype=torch.bool)
    H, W = s.shape
    for dr, dc in _NEIGHBOURS:
        other = s[(r + dr).clamp(0, H - 1), (c + dc).clamp(0, W - 1)]
        peak &= ((value <= other) if lower else (value >= other)) | torch.isnan(other)
    return pos[peak], value[peak]


_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def _suppressed(boxes: torch.Tensor, goodness: torch.Tensor, max_overlap: float, k: int | None) -> torch.Tensor:
    """Indices of the boxes (n, 4) ``x, y, w, h`` that greedy non-maximum suppression keeps, best
    (largest ``goodness``) first, ties in the given order: a box overlapping a kept one by more
    than ``max_overlap`` (intersection over union) is dropped; at most ``k``."""
    order = torch.sort(goodness, descending=True, stable=True).indices
    if len(order) > MAX_CANDIDATES:
        warnings.warn(
            f"{len(order)} candidates passed the threshold; only the best {MAX_CANDIDATES} are "
            "considered: raise the threshold",
            stacklevel=4,
        )
        order = order[:MAX_CANDIDATES]
    corners = boxes[order].double()
    corners = torch.cat([corners[:, :2], corners[:, :2] + corners[:, 2:]], 1)
    kept: list[torch.Tensor] = []
    kept_corners = corners[:0]
    limit = len(order) if k is None else k
    for start in range(0, len(order), _BLOCK):
        block = corners[start : start + _BLOCK]
        alive = ~(_overlap(block, kept_corners) > max_overlap).any(1)
        over = (_overlap(block, block) > max_overlap).triu(1).cpu().numpy()
        live = alive.cpu().numpy()
        chosen: list[int] = []
        for i in range(len(block)):
            if live[i]:
                chosen.append(i)
                if len(kept_corners) + len(chosen) == limit:
                    break
                live &= ~over[i]
        index = torch.tensor(chosen, dtype=torch.long, device=boxes.device)
        kept.append(order[start + index])
        kept_corners = torch.cat([kept_corners, block[index]])
        if len(kept_corners) == limit:
            break
    return torch.cat(kept) if kept else order[:0]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), as
    corners ``x0, y0, x1, y1``."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)
