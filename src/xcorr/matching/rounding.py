"""A bound on the error of a float32 correlation numerator at every window of a score map."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
    def of(
        xs: torch.Tensor, zs: torch.Tensor, num: torch.Tensor, backend: str, k: int, x2: torch.Tensor | None = None
    ) -> _Rounding:
        """The bound for ``num``, the correlation of ``xs`` with ``zs`` (``k`` images per template)
        by ``backend``, the correlation backend that computed it: ``"fft"``, or one that sums each
        window in place (``"direct"``, ``"gather"``). ``x2``, :func:`energies` of ``xs``, may
        come computed once for templates that share the images."""
        # Norms in one pass each, without float64 copies: a bound needs no more precision.
        N, C = xs.shape[:2]
        spatial, points = tuple(range(2, xs.dim())), math.prod(xs.shape[2:])
        column = (N, *(1,) * (xs.dim() - 1))
        u = _FLOAT32_UNIT
        y = num.detach()
        norm = torch.linalg.vector_norm
        # (amax and amin: 0.17 ms at 961x961, where the infinity norm over dims takes 1.6 ms and
        # aminmax over a dim 2.2 ms.)
        flat = y.flatten(1)
        largest = torch.maximum(flat.amax(1), -flat.amin(1)).double().view(column)
        if backend != "fft":
            n = zs[0].numel()
            gamma = min(n * u / (1 - n * u), _SUM_MARGIN * u * math.sqrt(n))
            tnorm = norm(zs.detach(), dim=(1, *spatial)).double().repeat_interleave(k)
            return _Rounding(spread=torch.zeros_like(largest), local=((gamma + u) * tnorm).view(column))
        x2 = energies(xs) if x2 is None else x2
        z2 = (norm(zs.detach(), dim=spatial).double() ** 2).repeat_interleave(k, 0)
        forward = ((x2 * z2).sum(1) / points).sqrt()
        rms = norm(y, dim=(1, *spatial)).double() / math.sqrt(y[0].numel())
        # log2 of at least the transform's points: fast lengths are below twice the image's
        # along each axis.
        spread = _FFT_MARGIN * u * math.sqrt(math.log2(2 ** len(spatial) * points)) * (rms + forward)
        return _Rounding(spread=spread.view(column) + u * largest, local=torch.zeros_like(largest))


def energies(xs: torch.Tensor) -> torch.Tensor:
    """Each image's and channel's sum of squares (N, C), in float64: the search's part of
    :meth:`_Rounding.of`'s bound on FFT correlations."""
    return torch.linalg.vector_norm(xs.detach(), dim=tuple(range(2, xs.dim()))).double() ** 2
