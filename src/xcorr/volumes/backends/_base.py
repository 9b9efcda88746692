"""The record each cost-volume backend module defines, and the reading of inputs every one of them shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ...planning.cost import Terms
from ..spec import VolumeSpec

#: ``run(f1, f2, spec)``: the cost volume (B, G, Py*Px, Ho, Wo) of validated inputs, differentiable in both.
VolumeRun = Callable[[torch.Tensor, torch.Tensor, VolumeSpec], torch.Tensor]


@dataclass(frozen=True)
class VolumeBackend:
    """One method of computing a cost volume (:func:`xcorr.volumes.correlate`), with the rules
    the planner applies to it.

    Attributes:
        name: the ``method=`` name.
        run: the computation, also used while tracing (shapes may be symbolic there).
        bind: the bound form for eager calls of one signature, with what depends on the
            shapes alone worked out once.
        exportable: whether ``"auto"`` may choose it while a graph is exported.
        fits: whether ``"auto"`` may choose it for a problem.
        terms: what its cost-model estimate counts (None: it wins only by measurement).
        constants: its built-in cost constants (nanoseconds) per CPU capability; the ``"AVX2"``
            set serves every other kind.
    """

    name: str
    run: VolumeRun
    bind: Callable[[VolumeSpec, bool], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    exportable: bool = False
    fits: Callable[[VolumeSpec], bool] = lambda spec: True
    terms: Callable[[VolumeSpec], Terms] | None = None
    constants: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def zero_extended(t: torch.Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int]) -> torch.Tensor:
    """``t[..., r0 + i*rs, c0 + j*cs]`` for ``i < nr``, ``j < nc``, zero outside ``t``: the grid
    ``rows = (r0, rs, nr)``, ``cols = (c0, cs, nc)`` of an input extended by zeros, as every
    cost-volume backend reads its inputs (a view where the grid lies inside ``t``)."""
    H, W = t.shape[-2:]
    (r0, rs, nr), (c0, cs, nc) = rows, cols
    r1, c1 = r0 + (nr - 1) * rs + 1, c0 + (nc - 1) * cs + 1
    top, left, bottom, right = max(0, -r0), max(0, -c0), max(0, r1 - H), max(0, c1 - W)
    if top or left or bottom or right:
        t = F.pad(t, (left, right, top, bottom))
    return t[..., r0 + top : r1 + top : rs, c0 + left : c1 + left : cs]


def window_taps(spec: VolumeSpec) -> int:
    """The rows plus columns of the kernel's window that :func:`window_sum` adds (0 for one tap)."""
    return 0 if spec.pointwise else spec.kernel[0] + spec.kernel[1]


def window_sum(p: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    """Each output's sum of the products ``p`` (on :attr:`~xcorr.volumes.spec.VolumeSpec.product_grid`)
    over its kernel window, rows then columns; ``p`` itself for a one-tap kernel."""
    if spec.pointwise:
        return p
    (kh, kw), (dh, dw), (sh, sw), (Ho, Wo) = spec.kernel, spec.kernel_dilation, spec.stride, spec.out_size
    rows = p[..., 0 : (Ho - 1) * sh + 1 : sh, :]
    for u in range(1, kh):
        rows = rows + p[..., u * dh : u * dh + (Ho - 1) * sh + 1 : sh, :]
    out = rows[..., 0 : (Wo - 1) * sw + 1 : sw]
    for v in range(1, kw):
        out = out + rows[..., v * dw : v * dw + (Wo - 1) * sw + 1 : sw]
    return out
