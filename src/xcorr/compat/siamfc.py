"""Drop-in for siamfc-pytorch's head (huanglianghua/siamfc-pytorch, ``siamfc/heads.py``).

``from siamfc.heads import SiamFC`` becomes ``from xcorr.compat.siamfc import SiamFC``, with the
same ``SiamFC(out_scale=0.001)`` and ``forward(z, x)`` = (template, search)::

    out[b, 0] = out_scale * sum_{c,u,v} z[b % nz, c, u, v] * x[b, c, i + u, j + v]

for ``nz`` templates and ``nx = k * nz`` search items: siamfc-pytorch folds the search batch into
``nx // nz`` rows of ``nz`` items, one item per template (``x.view(-1, nz * c, h, w)`` and
``groups=nz``), so search item ``b`` meets template ``b % nz``. That is not
:func:`xcorr.xcorr`'s pairing (template ``i`` serves items ``i*k ... i*k+k-1``); the two agree
for one template (a tracker's scales, ``nz == 1``) and for one template per item (training,
``nz == nx``), and this head keeps siamfc-pytorch's in every case.

Unlike siamfc-pytorch, inputs need not be contiguous, an empty search batch gives an empty
response, and the planner chooses the method. The head has no weights, so a siamfc-pytorch
checkpoint's ``backbone.`` entries are all there is to load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_finite, check_tensor
from ..correlation.api import bound
from ..correlation.spec import check_xcorr
from ..nn import _non_default
from ..planning.engine import ENGINE, Bound, signature

__all__ = ["SiamFC"]


def _bind(z: Any, x: Any) -> Bound:
    """The checked response of siamfc-pytorch's head as :func:`xcorr.xcorr`'s bound call; the
    search it is given is in xcorr's order (see :func:`_fast_xcorr`), of ``x``'s shape."""
    check_tensor(z, "z", "Bz C h w")
    check_tensor(x, "x", "B C H W")
    nz, nx = z.shape[0], x.shape[0]
    if nz == 0 or nx % nz:
        raise ValueError(
            f"x's batch must be a multiple of z's (non-zero) batch (siamfc-pytorch pairs search item b with "
            f"template b % nz); got x {tuple(x.shape)} and z {tuple(z.shape)}"
        )
    check_xcorr(x, z, "naive", 0, 1, 1, ("x", "z"), "SiamFC takes forward(z, x) = (template, search)")
    return bound(x, z)


def _fast_xcorr(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """siamfc-pytorch's ``_fast_xcorr``: search item ``r*nz + j`` against template ``j``."""
    run = ENGINE.cached(signature("siamfc", (z, x), ()), lambda: _bind(z, x))
    nz, (nx, C, H, W) = z.shape[0], x.shape
    # Reordered so that template j's items r*nz + j are neighbours, j*k + r, as xcorr pairs them;
    # a view, without a copy, for one template and for one template per item.
    blocked = x.reshape(nx // nz, nz, C, H, W).transpose(0, 1).reshape(nx, C, H, W)
    out = run(blocked, z)
    return out.reshape(nz, nx // nz, *out.shape[1:]).transpose(0, 1).reshape(out.shape)


# A leaf function of torch.fx.symbolic_trace: a traced tracker keeps one call of it.
torch.fx.wrap("_fast_xcorr")


class SiamFC(nn.Module):
    r"""siamfc-pytorch's head: the response of each search item to its template, times ``out_scale``.

    Args:
        out_scale (float): factor applied to the correlation (0.001 for SiamFC's AlexNet features).

    Shape:
        z (Tensor[nz, C, h, w]), x (Tensor[nx, C, H, W]) with ``nx`` a multiple of ``nz`` ->
        Tensor[nx, 1, H-h+1, W-w+1]; search item ``b`` meets template ``b % nz``.

    Example:
        >>> from xcorr.compat.siamfc import SiamFC
        >>> head = SiamFC()
        >>> head
        SiamFC()
        >>> head(torch.ones(1, 256, 6, 6), torch.ones(3, 256, 22, 22)).shape  # forward(z, x): 3 scales
        torch.Size([3, 1, 17, 17])
    """

    def __init__(self, out_scale: float = 0.001) -> None:
        super().__init__()
        self.out_scale = check_finite(out_scale, "out_scale")

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _fast_xcorr(z, x) * self.out_scale

    def extra_repr(self) -> str:
        return _non_default({"out_scale": (self.out_scale, 0.001)})
