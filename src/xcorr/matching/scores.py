"""A validated tensor problem's scores: unmasked (:mod:`.dense`) or masked (:mod:`.masked`), each
NaN exactly at the windows that hold a non-finite pixel."""

from __future__ import annotations

from typing import Callable

import torch

from .._compute import computed, finite_footprint
from ..correlation.api import xcorr
from .checks import check_mask_weights
from .dense import _dense, _Template
from .masked import _masked


def _scores(
    x: torch.Tensor,
    z: torch.Tensor,
    method: str,
    mask: torch.Tensor | None,
    template: _Template | None = None,
    numerator: Callable[[torch.Tensor], tuple[torch.Tensor, str]] | None = None,
) -> torch.Tensor:
    """The ``method`` scores (N, 1, H-h+1, W-w+1) of images ``x`` (N, C, H, W) against templates ``z``
    (Nt, C, h, w), each serving ``N // Nt`` images, weighted by ``mask`` (1 or Nt, 1 or C, h, w);
    ``template`` and ``numerator`` are a match plan's (unmasked, ``z``'s dtype). Volumes likewise,
    with a depth axis before the rows (``D``, ``d``)."""
    N, C, *spatial = x.shape
    Nt, _, *size = z.shape
    shape, k = (N, 1, *(n - t + 1 for n, t in zip(spatial, size))), N // Nt
    if mask is None:

        def dense(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return _footprint(lambda a: _dense(a, b, method, k, template, numerator), a, size)

        return computed(dense, shape, x, z)
    check_mask_weights(mask, method.startswith("ccoeff"))

    def masked(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return _footprint(lambda a: _masked(a, b, m.expand(Nt, C, *size), method, k), a, size)

    return computed(masked, shape, x, z, mask)


def _footprint(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``score(x)``, NaN exactly at the windows that hold a non-finite pixel of ``x`` (window sums
    and transforms would spread one over the whole map; see
    :func:`~xcorr._compute.finite_footprint`). A non-finite template spoils all of its scores, as
    by definition."""
    return finite_footprint(score, x, lambda mask: xcorr(mask, mask.new_ones(1, x.shape[1], *size)))
