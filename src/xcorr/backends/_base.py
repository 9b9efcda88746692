"""The record each backend module defines: what the planner and the ops need to know of a method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .._spec import Spec, VolumeSpec

#: ``run(x, z, spec)``: the correlation of validated inputs, differentiable in both.
Run = Callable[[torch.Tensor, torch.Tensor, Spec], torch.Tensor]
#: ``prepare(z, spec) -> run(x)``: the template's share of the work done once (template plans);
#: ``run`` accepts searches of any batch that is a multiple of the templates'.
Prepare = Callable[[torch.Tensor, Spec], Callable[[torch.Tensor], torch.Tensor]]
#: ``bind(spec, grad) -> run(x, z)``: the method for eager calls of one signature, with what depends
#: on the shapes alone (and on whether a backward pass follows) worked out once.
Bind = Callable[[Spec, bool], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    """One method of computing :func:`xcorr.xcorr`.

    Attributes:
        name: the ``method=`` name.
        run: the plain form, also used while tracing (shapes may be symbolic there).
        prepare: the template plan form.
        bind: the bound form; by default the plain form with its spec filled in.
    """

    name: str
    run: Run
    prepare: Prepare
    bind: Bind | None = None

    def bound(self, spec: Spec, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``run(x, z)`` for eager calls of ``spec``'s signature."""
        if self.bind is not None:
            return self.bind(spec, grad)
        run = self.run
        return lambda x, z: run(x, z, spec)


#: ``run(f1, f2, spec)``: the cost volume (B, G, Py*Px, Ho, Wo) of validated inputs, differentiable in both.
VolumeRun = Callable[[torch.Tensor, torch.Tensor, VolumeSpec], torch.Tensor]


@dataclass(frozen=True)
class VolumeBackend:
    """One method of computing a cost volume (:func:`xcorr.volumes.correlate`).

    Attributes:
        name: the ``method=`` name.
        run: the computation, also used while tracing (shapes may be symbolic there).
    """

    name: str
    run: VolumeRun


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


def window_sum(p: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    """Each output's sum of the products ``p`` (on :attr:`~xcorr._spec.VolumeSpec.product_grid`)
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
