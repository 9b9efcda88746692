"""Correlation by matrix products and gathers with constant indices: no convolution at all.

This is the method that exports. ``torch.onnx.export`` writes it as Pad, MatMul, Gather, Reshape
and ReduceSum nodes, which TensorRT and mobile runtimes accept (they refuse a Conv whose weight is
a run-time tensor), and nothing in the graph depends on the batch size. The planner picks it
while a graph is being exported.

``"naive"`` and ``"upchannel"`` first multiply every template tap with every padded search pixel
(one matrix product over the channels, ``K·h·w`` maps of the padded search's size) and then
gather, for each output position, the maps' values at its taps and sum them: the channel sum
happens before the gather, so memory is ``K·h·w·Hp·Wp`` per search item and the speed is close to
a convolution's. ``"depthwise"`` sums nothing over channels, so it gathers the search's windows
first (im2col, ``C·h·w·H'·W'`` values per item) and multiplies them with the templates; that is
several times slower than ``"direct"`` and suits the small feature maps of tracker heads.
Half-precision inputs are multiplied in their own dtype (matrix products accumulate in float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._spec import Spec


def _window_offsets(spec: Spec, device: torch.device) -> torch.Tensor:
    """(h·w, H'·W') offsets into the flattened padded search: tap (u, v) of output (i, j)."""
    (_, Wp), (sh, sw), (dh, dw) = spec.padded_search, spec.stride, spec.dilation
    h, w = spec.z_shape[-2:]
    Ho, Wo = spec.out_size
    rows = torch.arange(h, device=device).view(h, 1, 1, 1) * dh + torch.arange(Ho, device=device).view(1, 1, Ho, 1) * sh
    cols = torch.arange(w, device=device).view(1, w, 1, 1) * dw + torch.arange(Wo, device=device).view(1, 1, 1, Wo) * sw
    return (rows * Wp + cols).reshape(h * w, Ho * Wo)


def xcorr(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    Bz, _, h, w = spec.z_shape
    C, K = spec.channels, spec.out_channels
    (ph, pw), (Hp, Wp) = spec.padding, spec.padded_search
    Ho, Wo = spec.out_size
    taps = h * w
    offsets = _window_offsets(spec, x.device)
    # -1 rather than spec.k keeps the batch symbolic when the graph is exported.
    search = F.pad(x, (pw, pw, ph, ph)).reshape(Bz, -1, C, Hp * Wp)
    if spec.mode == "depthwise":
        windows = search.index_select(-1, offsets.reshape(-1)).reshape(Bz, -1, C, taps, Ho * Wo)
        out = torch.matmul(z.reshape(Bz, 1, C, 1, taps), windows)
    else:
        # Row (j, u, v) of the product is template tap (u, v) of output channel j at every pixel.
        rows = z.reshape(Bz, 1, K, C, taps).transpose(3, 4).reshape(Bz, 1, K * taps, C)
        maps = torch.matmul(rows, search).reshape(Bz, -1, K, taps * Hp * Wp)
        tap_start = torch.arange(taps, device=x.device).view(taps, 1) * (Hp * Wp)
        out = maps.index_select(-1, (tap_start + offsets).reshape(-1)).reshape(Bz, -1, K, taps, Ho * Wo).sum(3)
    return out.reshape(-1, K, Ho, Wo)
