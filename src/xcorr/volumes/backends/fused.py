"""Cost volumes as compiled loops over rows (numba, where it is installed): each product computed
once, the inputs read where they lie, the volume written once.

For each row of ``f1``'s product grid and each row displacement, the products of that row of
``f1`` with the displaced row of ``f2`` are summed over a group's channels (four at a time) for
every column displacement, into ``Px`` output rows that stay in the first-level cache. Unlike
``banded``, no tile computes pairs outside the band and no channels-last copy is made; unlike
``shifted``, no product map is written and read again. The backward pass is two loops of the
same kind: ``f1``'s gradient row by row of ``f1``, ``f2``'s row by row of ``f2``, each row
written by one thread alone (no atomics; the result does not depend on the thread count).

numba is optional (``pip install 'xcorr[fast]'``): without it, and while a graph is traced, this
method is not among ``"auto"``'s options. The loops are compiled at their first call (seconds,
once per dtype; numba caches them on disk for the next process) and run on
``torch.get_num_threads()`` threads of numba's workqueue pool, which a forked process can use
too (GNU OpenMP's cannot), unless ``NUMBA_THREADING_LAYER`` names another.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from functools import cache
from types import ModuleType
from typing import Callable

import torch

from ..._compute import needs_grad
from ..._spares import OUTPUTS
from ..._tracing import tracing
from ...planning.cost import Terms
from ..spec import VolumeSpec
from ._base import VolumeBackend, window_sum, window_taps

#: Only one thread of the process runs the loops at a time (numba's workqueue thread pool, which
#: the loops choose, does not take launches from two threads at once).
_LOCK = threading.Lock()


@cache
def available() -> bool:
    """Whether numba can be imported (found without importing it)."""
    return importlib.util.find_spec("numba") is not None


@cache
def _kernels() -> ModuleType:
    if not available():
        raise ModuleNotFoundError("method='fused' needs numba: pip install 'xcorr[fast]'")
    return importlib.import_module("._fused_kernels", __package__)


def _geometry(spec: VolumeSpec) -> tuple[int, ...]:
    """The loops' integer arguments: the product grid, then the displacements."""
    (r0, rs, nr), (c0, cs, nc) = spec.product_grid
    return (r0, rs, nr, c0, cs, nc, *spec.dy, *spec.dx)


def _launch(kernel: Callable[..., None], *tensors: torch.Tensor, spec: VolumeSpec) -> None:
    """Run one loop on ``tensors`` (contiguous CPU tensors, read and written in place) on
    torch's thread count."""
    numba = importlib.import_module("numba")
    arrays = [t.numpy() for t in tensors]
    threads = torch.get_num_threads()
    with _LOCK:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            kernel(*arrays, *_geometry(spec), spec.scale)
        finally:
            # numba's OpenMP pool (where NUMBA_THREADING_LAYER asks for it), started by a first
            # launch, sets the OpenMP thread count that torch reads as its own: it is put back.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


def _products(f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    """The products on the product grid (B, G, Py*Px, rows, cols)."""
    (_, _, nr), (_, _, nc) = spec.product_grid
    out = OUTPUTS.empty((f1.shape[0], spec.groups, spec.displacements, nr, nc), f1.dtype, f1.device)
    if out.numel():
        _launch(_kernels().forward, f1.detach().contiguous(), f2.detach().contiguous(), out, spec=spec)
    return out


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f1, f2, spec):
        f1, f2 = f1.contiguous(), f2.contiguous()
        ctx.save_for_backward(f1, f2)
        ctx.spec = spec
        return _products(f1, f2, spec)

    @staticmethod
    def backward(ctx, g):
        f1, f2 = ctx.saved_tensors
        spec, (need1, need2, _) = ctx.spec, ctx.needs_input_grad
        g = g.contiguous()
        g1 = g2 = None
        if need1:
            g1 = torch.zeros_like(f1)
            if g.numel():
                _launch(_kernels().grad_f1, g, f2.detach(), g1, spec=spec)
        if need2:
            g2 = torch.empty_like(f2) if g.numel() else torch.zeros_like(f2)
            if g.numel():
                _launch(_kernels().grad_f2, g, f1.detach(), g2, spec=spec)
        return g1, g2, None


def cost_volume(f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    """The cost volume of ``spec``, the products by the compiled loops, then the window sums."""
    if tracing():
        raise ValueError("method='fused' runs eagerly only: it cannot be traced (compile or export with 'auto')")
    if f1.device.type != "cpu":
        raise ValueError(f"method='fused' runs on the CPU only; got f1 on {f1.device}")
    out = _Fused.apply(f1, f2, spec) if needs_grad(f1, f2) else _products(f1, f2, spec)
    out = window_sum(out, spec)
    if out.is_contiguous():
        return out
    return OUTPUTS.empty(tuple(out.shape), out.dtype, out.device).copy_(out)


def fits(spec: VolumeSpec) -> bool:
    """On the CPU, with numba installed, outside tracing."""
    return spec.device.type == "cpu" and not tracing() and available()


def terms(spec: VolumeSpec) -> Terms:
    """The cost model's counts: the call, the inner loops (one per row, displacement and four
    channels), the products, and the volume's elements written."""
    B, C = spec.shape[:2]
    G, P = spec.groups, spec.displacements
    (_, _, nr), (_, _, nc) = spec.product_grid
    Ho, Wo = spec.out_size
    return Terms(
        {
            "fused_call": 1.0,
            "fused_loop": float(B * -(-C // 4) * P * nr),
            "fused_mac": float(B * C * P * nr * nc),
            "fused_output": float(B * G * P * (nr * nc + Ho * Wo * window_taps(spec))),
        },
        "fused_backward",
        wide="fused_float64",
    )


#: Built-in constants: fitted at one thread on a 2-core AVX-512 machine (torch 2.13, numba 0.68;
#: PWC-Net's levels, FlowNetC, DispNetC, GwcNet, within 0.83-1.22 of the times), then multiplied
#: by 2.3, what the banded products' AVX2 set over-estimates their own times there by (2.0-2.8
#: on four of those five volumes), so that the two sets compare as on one machine; the float64
#: ratio measured side by side (1.3-1.8 at PWC-Net's levels 4 and 2).
CONSTANTS = {
    "AVX2": {
        "fused_call": 54000.0,
        "fused_loop": 35.0,
        "fused_mac": 0.181,
        "fused_output": 0.82,
        "fused_backward": 2.9,
        "fused_float64": 1.6,
    }
}


VOLUME_BACKEND = VolumeBackend(
    "fused",
    run=cost_volume,
    bind=lambda spec, grad: lambda f1, f2: cost_volume(f1, f2, spec),
    fits=fits,
    terms=terms,
    constants=CONSTANTS,
)
