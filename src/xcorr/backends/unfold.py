"""Correlation as im2col (``F.unfold``) followed by one batched matrix product.

Every output position's window of the padded search is gathered into a column, and the templates
multiply those columns. No convolution takes the template as its weight, so this is the method
that exports: ``torch.onnx.export`` writes it as Pad, Gather, Reshape and MatMul nodes, which
TensorRT and mobile runtimes accept (they refuse a Conv whose weight is a run-time tensor), and
nothing in the graph depends on the batch size. The columns take ``C·h·w·H'·W'`` values per search
item, so the method suits the small feature maps of tracker heads (templates up to about 8x8);
the planner picks it while a graph is being exported. Half-precision inputs are multiplied in
their own dtype (matrix products accumulate in float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._spec import Spec


def xcorr(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    Bz, Cz, h, w = spec.z_shape
    C = spec.channels
    Ho, Wo = spec.out_size
    # Columns are ordered (c, u, v); the modes differ only in how they split them into groups
    # that a template row multiplies: one group of all taps (naive, upchannel) or one per channel.
    groups = C if spec.mode == "depthwise" else 1
    rows = spec.out_channels // groups
    # int(): the TorchScript-based exporter traces sizes as tensors, and unfold needs constants.
    cols = F.unfold(x, (int(h), int(w)), dilation=spec.dilation, padding=spec.padding, stride=spec.stride)
    # -1 rather than spec.k keeps the batch symbolic when the graph is exported.
    cols = cols.reshape(Bz, -1, groups, C * h * w // groups, Ho * Wo)
    weights = z.reshape(Bz, 1, groups, rows, C * h * w // groups)
    out = torch.matmul(weights, cols)
    return out.reshape(-1, spec.out_channels, Ho, Wo)
