"""OpenCV's rules for normed scores, shared by the unmasked and the masked scores: flat windows,
flat templates, and ratios that rounding took past ±1."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._compute import needs_grad

#: OpenCV's flat-window rule: a window is flat when its energy about its mean is at most
#: ``min(FLAT_ABSOLUTE, FLAT_RELATIVE * its energy)`` (10 float32 epsilons relative; 0.5 absolute,
#: which is below any non-flat window of integer-valued pixels).
FLAT_RELATIVE = 10 * float(np.finfo(np.float32).eps)
FLAT_ABSOLUTE = 0.5
#: OpenCV's flat-template rule for ``ccoeff_normed``: summed channel variance below float64 epsilon.
FLAT_TEMPLATE = float(np.finfo(np.float64).eps)
#: OpenCV's limit on a ratio's magnitude (``common_matchTemplate`` in its ``templmatch.cpp``). By
#: Cauchy-Schwarz no exact ratio passes ±1, so one below the limit was pushed past by rounding (by
#: at most the 2e-4 that normed scores keep, here) and is clipped to ±1; one at or above it scores
#: the worst score, as flat windows and zero templates do through their infinite ratio.
RATIO_LIMIT = 1.125


def _normalise(
    num,
    diff2,
    tnorm,
    method,
    energy=None,
    most: float | None = None,
    *,
    low: float | None = None,
    root: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """OpenCV's normalisation of ``num`` by ``sqrt(diff2) * tnorm``.

    The ratio where it is below 1 in magnitude, ±1 where rounding took it just past (below
    :data:`RATIO_LIMIT`), else the worst score (0, or 1 for ``sqdiff_normed``). A flat window
    (``diff2`` at most ``min(0.5, 10 * FLT_EPSILON * energy)``) or a zero template has no ratio: the
    worst score. ``energy`` (the window's sum of squares, or a function giving it) is needed only
    where ``diff2 <= 0.5``, and not even then where ``most``, a bound on every window's energy, shows
    that no window is flat; the common case costs a handful of vector operations. Templates
    that share their windows may pass what depends on ``diff2`` alone, computed once: ``low``, its
    smallest value, and ``root``, a function giving ``rsqrt(diff2)`` in ``num``'s dtype (called
    only where no window is near flat and no gradient is needed).
    """
    worst = 1.0 if method == "sqdiff_normed" else 0.0
    inv_t = torch.where(tnorm > 0, 1 / torch.where(tnorm > 0, tnorm, torch.ones_like(tnorm)), torch.zeros_like(tnorm))
    limit = FLAT_ABSOLUTE if most is None else min(FLAT_ABSOLUTE, FLAT_RELATIVE * most * (1 + 1e-3))
    if low is None:
        low = float(diff2.detach().amin()) if diff2.numel() else limit + 1
    if low <= limit:
        energy = energy() if callable(energy) else (diff2 if energy is None else energy)
        flat = diff2 <= (FLAT_RELATIVE * energy).clamp_max(FLAT_ABSOLUTE)
        ratio = num * torch.rsqrt(torch.where(flat, torch.ones_like(diff2), diff2)) * inv_t
        ratio = torch.where(flat, torch.full_like(ratio, torch.inf), ratio)
    else:
        # No window is near flat, so the ratio needs no more than the numerator's precision:
        # float32 passes from here on where the numerator is float32.
        if needs_grad(num, diff2):
            ratio = num * torch.rsqrt(diff2.to(num.dtype)) * inv_t
        else:
            # In place (fresh pages are costly), and in one dtype: a float64 factor would send
            # the float32 product through a casting loop 4x slower.
            ratio = torch.rsqrt(diff2.to(num.dtype)).mul_(num) if root is None else torch.mul(root(), num)
            ratio = ratio.mul_(inv_t.to(num.dtype))
    ratio = torch.where(tnorm > 0, ratio, torch.full_like(ratio, torch.inf)) if bool((tnorm == 0).any()) else ratio
    if method == "sqdiff_normed":
        return ratio.clamp_max(1)
    least, largest = torch.aminmax(ratio)
    if least <= -RATIO_LIMIT or largest >= RATIO_LIMIT:
        ratio = torch.where(ratio.abs() < RATIO_LIMIT, ratio, torch.full_like(ratio, worst))
    if least < -1 or largest > 1:
        return ratio.clamp(-1, 1)
    return ratio
