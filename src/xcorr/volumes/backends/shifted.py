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

from ...planning.cost import Terms
from ..spec import VolumeSpec
from ._base import VolumeBackend, window_sum, window_taps, zero_extended


def _span(first: int, step: int, count: int) -> tuple[int, int]:
    """The least and the greatest of ``first + i*step`` for ``i < count``."""
    last = first + (count - 1) * step
    return min(first, last), max(first, last)


def cost_volume(f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    """The cost volume of ``spec``, one shifted product of the two maps per displacement."""
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


def terms(spec: VolumeSpec) -> Terms:
    """The cost model's counts: a few tensor operations per displacement, each displacement's
    product map (read both maps, multiply, sum the channels), and the window sums."""
    B, C = spec.shape[:2]
    G, P = spec.groups, spec.displacements
    (_, _, nr), (_, _, nc) = spec.product_grid
    Ho, Wo = spec.out_size
    return Terms(
        {
            "shifted_call": float(P),
            "shifted_element": float(B * C * nr * nc * P),
            "shifted_output": float(B * G * P * Ho * Wo * (1 + window_taps(spec))),
        },
        "shifted_backward",
        wide="shifted_float64",
    )


#: Built-in constants (``python -m xcorr fit --volumes`` on a 2-core x86 CPU, AVX2, torch 2.13,
#: one thread: the machine was shared, and one thread times steadily; the float64 ratio measured
#: side by side, not fitted).
CONSTANTS = {
    "AVX2": {
        "shifted_call": 30500.0,
        "shifted_element": 0.749,
        "shifted_output": 0.0,
        "shifted_backward": 3.03,
        "shifted_float64": 2.0,
    }
}


#: Pad, Slice, Mul, ReduceSum and Concat nodes only: what "auto" picks while exporting.
VOLUME_BACKEND = VolumeBackend(
    "shifted",
    run=cost_volume,
    bind=lambda spec, grad: lambda f1, f2: cost_volume(f1, f2, spec),
    exportable=True,
    terms=terms,
    constants=CONSTANTS,
)
