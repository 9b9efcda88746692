"""Cost volumes as a loop over the displacements: one shifted product of the two maps each.

For every displacement ``(dy_i, dx_j)``, ``f1`` times ``f2`` shifted by it, summed over each
group's channels and then over the kernel's window. This is the formulation users write, with
the zero extension done once: its memory beyond the output is one product map, so it is the
memory-light method, and it is built of Pad, Slice, Mul, ReduceSum and Concat alone, so it is
the method that exports (the planner picks it while a graph is exported). Its speed is that of
memory traffic: each displacement reads both maps once.
"""

from __future__ import annotations

import torch

from ..spec import VolumeSpec
from ._base import VolumeBackend, window_sum, zero_extended


def _span(first: int, step: int, count: int) -> tuple[int, int]:
    """The least and the greatest of ``first + i*step`` for ``i < count``."""
    last = first + (count - 1) * step
    return min(first, last), max(first, last)


def volume(f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    (r0, rs, nr), (c0, cs, nc) = rows, cols = spec.product_grid
    (dy0, dys, Py), (dx0, dxs, Px) = spec.dy, spec.dx
    G, Cg = spec.groups, spec.group_channels
    (ylo, yhi), (xlo, xhi) = _span(dy0, dys, Py), _span(dx0, dxs, Px)
    e1 = zero_extended(f1, rows, cols)
    if spec.scale != 1.0:
        e1 = e1 * spec.scale
    # f2 at every position some displacement reaches, zero-extended once.
    height, width = (nr - 1) * rs + 1, (nc - 1) * cs + 1
    e2 = zero_extended(f2, (r0 + ylo, 1, height + yhi - ylo), (c0 + xlo, 1, width + xhi - xlo))
    planes = []
    for i in range(Py):
        top = dy0 + i * dys - ylo
        for j in range(Px):
            left = dx0 + j * dxs - xlo
            p = e1 * e2[..., top : top + height : rs, left : left + width : cs]
            # -1 rather than the batch keeps it symbolic when the graph is exported.
            p = p.sum(1, keepdim=True) if G == 1 else p.reshape(-1, G, Cg, nr, nc).sum(2)
            planes.append(window_sum(p, spec))
    return torch.stack(planes, 2)


VOLUME_BACKEND = VolumeBackend("shifted", run=volume)
