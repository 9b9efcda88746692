"""Correlation without convolutions: matrix products, gathers with constant indices, shifted sums.

This is the method that exports. ``torch.onnx.export`` writes it as Pad, MatMul, Gather,
ReduceSum, Slice, Mul and Add nodes, which TensorRT and mobile runtimes accept (they refuse a Conv
whose weight is a run-time tensor), and nothing in the graph depends on the batch size. The
planner picks it while a graph is being exported.

``"naive"`` and ``"upchannel"`` first multiply every template tap with every padded search pixel
(one matrix product over the channels: ``K·h·w`` maps of the padded search's size), then gather,
for each output position, the maps' values at its taps and sum them. The channel sum comes before
the gather, so memory stays at ``K·h·w·Hp·Wp`` per search item and the speed is that of a
convolution. ``"depthwise"`` sums nothing over channels, so it adds up the template taps' shifted
products one tap at a time (``h·w`` multiply-adds over the output, a few times slower than
``"direct"``; the exported graph has a few nodes per tap, fine for tracker templates).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..._compute import itemsize
from ..._tracing import tracing
from ...planning.cost import Terms
from ..spec import Spec
from ._base import Backend


def _window_offsets(spec: Spec, device: torch.device) -> torch.Tensor:
    """(h·w, H'·W') offsets into the flattened padded search: tap (u, v) of output (i, j)."""
    (_, Wp), (sh, sw), (dh, dw) = spec.padded_search, spec.stride, spec.dilation
    h, w = spec.z_shape[-2:]
    Ho, Wo = spec.out_size
    rows = torch.arange(h, device=device).view(h, 1, 1, 1) * dh + torch.arange(Ho, device=device).view(1, 1, Ho, 1) * sh
    cols = torch.arange(w, device=device).view(1, w, 1, 1) * dw + torch.arange(Wo, device=device).view(1, 1, 1, Wo) * sw
    return (rows * Wp + cols).reshape(h * w, Ho * Wo)


def _tap_index(spec: Spec, device: torch.device) -> torch.Tensor:
    """(h·w·H'·W',) positions in the flattened (tap, padded pixel) product maps."""
    taps = spec.z_shape[-2] * spec.z_shape[-1]
    Hp, Wp = spec.padded_search
    tap_start = torch.arange(taps, device=device).view(taps, 1) * (Hp * Wp)
    return (tap_start + _window_offsets(spec, device)).reshape(-1)


def _summed_over_channels(search: torch.Tensor, z: torch.Tensor, spec: Spec, index: torch.Tensor) -> torch.Tensor:
    Bz, _, h, w = spec.z_shape
    C, K = spec.channels, spec.out_channels
    Hp, Wp = spec.padded_search
    Ho, Wo = spec.out_size
    taps = h * w
    # Row (j, u, v) of the product is template tap (u, v) of output channel j at every pixel.
    rows = z.reshape(Bz, 1, K, C, taps).transpose(3, 4).reshape(Bz, 1, K * taps, C)
    # -1 rather than spec.k keeps the batch symbolic when the graph is exported. (The rows stay
    # 4-D even for one template: a 2-D left operand makes matmul fold the batch into one product
    # through a transposed copy of the search, 2x slower forward and backward.)
    maps = torch.matmul(rows, search.reshape(Bz, -1, C, Hp * Wp))
    # On a 2-D view index_select takes its fast contiguous path (over 10x faster than on dim -1 of 4-D).
    picked = maps.reshape(-1, taps * Hp * Wp).index_select(1, index)
    return picked.reshape(-1, K, taps, Ho * Wo).sum(2)


def _channel_by_channel(search: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    Bz, C, h, w = spec.z_shape
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    Ho, Wo = spec.out_size
    search = search.reshape(Bz, -1, C, *spec.padded_search)
    z = z.reshape(Bz, 1, C, h, w)
    out: torch.Tensor | None = None
    for u in range(h):
        for v in range(w):
            window = search[..., u * dh : u * dh + (Ho - 1) * sh + 1 : sh, v * dw : v * dw + (Wo - 1) * sw + 1 : sw]
            tap = z[..., u : u + 1, v : v + 1]
            out = window * tap if out is None else out.addcmul(window, tap)
    assert out is not None  # a template has at least one tap
    return out


#: Product maps beyond this many bytes are made a chunk of items at a time (outside tracing, where
#: the graph must not depend on the batch): glibc maps every temporary of 32 MiB or more fresh from
#: the kernel, and zeroing its pages cost twice the work itself (32 items of 4x49 maps of 48x48).
CHUNK_BYTES = 16 << 20


def _items_per_chunk(spec: Spec) -> int | None:
    """Search items per chunk, or None where everything is one chunk (always while tracing: the
    batch may be symbolic there, and the graph must not depend on it)."""
    if tracing():
        return None
    per_item = maps_bytes(spec)
    if per_item * spec.batch <= CHUNK_BYTES or spec.batch == 1:
        return None
    return max(1, CHUNK_BYTES // per_item)


def maps_bytes(spec: Spec) -> int:
    """Bytes of one search item's tap-by-pixel product maps (half precision runs in float32)."""
    Hp, Wp = spec.padded_search
    return spec.out_channels * spec.z_shape[-2] * spec.z_shape[-1] * Hp * Wp * itemsize(spec.dtype)


def _correlate_chunk(x: torch.Tensor, z: torch.Tensor, spec: Spec, index: torch.Tensor | None) -> torch.Tensor:
    """One chunk; ``index`` is the tap index of ``spec``'s geometry (None in depthwise mode)."""
    ph, pw = spec.padding
    search = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    if index is None:
        out = _channel_by_channel(search, z, spec)
    else:
        out = _summed_over_channels(search, z, spec, index)
    return out.reshape(-1, spec.out_channels, *spec.out_size)


def _index(spec: Spec, device: torch.device) -> torch.Tensor | None:
    return None if spec.mode == "depthwise" else _tap_index(spec, device)


def _run(x: torch.Tensor, z: torch.Tensor, spec: Spec, index: torch.Tensor | None, items: int | None) -> torch.Tensor:
    """All chunks of ``items`` search items (None: one chunk); every chunk shares the geometry, so the index."""
    if items is None:
        return _correlate_chunk(x, z, spec, index)
    if spec.templates == 1:
        pairs = [(xc, z) for xc in x.split(items)]
    else:
        t = max(1, items // spec.k)  # whole templates with all of their items
        pairs = list(zip(x.split(t * spec.k), z.split(t)))
    return torch.cat([_correlate_chunk(xc, zc, spec.with_batch(xc.shape[0], zc.shape[0]), index) for xc, zc in pairs])


def correlate(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The correlation of ``spec`` by matrix products and gathers."""
    return _run(x, z, spec, _index(spec, x.device), _items_per_chunk(spec))


def bind(spec: Spec, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eager calls of one signature: the tap index and the chunking worked out once, so a
    tracker's repeated call is its few tensor operations."""
    index, items = _index(spec, spec.device), _items_per_chunk(spec)
    return lambda x, z: _run(x, z, spec, index, items)


def prepare(z: torch.Tensor, spec: Spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """Template plans: the taps are used as they are, so the template and the tap index are kept."""
    index = _index(spec, z.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        s = spec.with_batch(x.shape[0])
        return _run(x, z, s, index, _items_per_chunk(s))

    return run


#: "auto" takes gather only while one search item's tap-by-pixel product maps fit in this many
#: bytes (it works in chunks of items).
MAX_BYTES = 1 << 30


def fits(spec: Spec) -> bool:
    """The memory rule: one item's product maps fit :data:`MAX_BYTES`."""
    return maps_bytes(spec) <= MAX_BYTES


def terms(spec: Spec) -> Terms:
    """The cost model's counts: the tap-by-pixel product maps written then gathered, the padded
    search, and the matrix product's multiply-adds."""
    B, C = spec.x_shape[:2]
    h, w = spec.z_shape[-2:]
    K = spec.out_channels
    (Ho, Wo), (Hp, Wp) = spec.out_size, spec.padded_search
    search = B * C * Hp * Wp
    return Terms(
        {
            "gather_call": 1.0,
            "gather_element": B * K * h * w * (Hp * Wp + Ho * Wo),
            "gather_search": search,
            "gather_mac": search * K * h * w,
        },
        "gather_backward",
        wide="float64_gather",
    )


#: Built-in constants per CPU capability (see :data:`xcorr.correlation.backends.direct.CONSTANTS`).
CONSTANTS = {
    "AVX512": {
        "gather_call": 106000.0,
        "gather_element": 0.389,
        "gather_search": 0.225,
        "gather_mac": 0.00803,
        "gather_backward": 2.61,
        "float64_gather": 2.2,
    },
    "AVX2": {
        "gather_call": 121.0,
        "gather_element": 1.18,
        "gather_search": 0.705,
        "gather_mac": 0.0155,
        "gather_backward": 1.73,
        "float64_gather": 2.2,
    },
}


#: What "auto" picks while exporting (no convolution takes a run-time weight: TensorRT and mobile
#: runtimes refuse those), and only in the modes that sum over channels: its depthwise path is a
#: loop over the taps, never faster than "direct" in eager PyTorch.
BACKEND = Backend(
    "gather",
    run=correlate,
    prepare=prepare,
    bind=bind,
    modes=("naive", "upchannel"),
    exportable=True,
    fits=fits,
    terms=terms,
    constants=CONSTANTS,
)
