"""Direct correlation with PyTorch's convolution kernels (``F.conv2d`` applies no kernel flip).

The batch of templates is folded into convolution groups: the ``k`` search items that share a
template become the convolution's batch, and the ``Bz`` templates its groups. For ``"naive"``
with several templates the depthwise formulation followed by a channel sum is used, because
dense grouped convolutions with ``groups=Bz`` are far slower than depthwise kernels on CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._spec import Spec


def xcorr(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    B, C, H, W = spec.x_shape
    Bz, Cz, h, w = spec.z_shape
    k, K = spec.k, spec.out_channels
    # (B, C, H, W) -> (k, Bz*C, H, W): item i*k + j becomes batch j, channel group i.
    xk = x.reshape(Bz, k, C, H, W).transpose(0, 1).reshape(k, Bz * C, H, W)
    conv = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation)
    if spec.mode == "naive" and Bz == 1:
        out = F.conv2d(xk, z, **conv)
    elif spec.mode == "naive":
        out = F.conv2d(xk, z.reshape(Bz * C, 1, h, w), groups=Bz * C, **conv)
        out = out.unflatten(1, (Bz, C)).sum(2)
    elif spec.mode == "depthwise":
        out = F.conv2d(xk, z.reshape(Bz * C, 1, h, w), groups=Bz * C, **conv)
    else:
        out = F.conv2d(xk, z.reshape(Bz * K, C, h, w), groups=Bz, **conv)
    Ho, Wo = spec.out_size
    return out.reshape(k, Bz, K, Ho, Wo).transpose(0, 1).reshape(B, K, Ho, Wo)

