"""Drop-in for flownet2-pytorch's ``correlation_package`` (FlowNetC, PWC-Net ports, LiteFlowNet ports).

``from correlation_package.correlation import Correlation`` becomes
``from xcorr.compat.flownet2 import Correlation``; the arguments and the output are the same::

    out[b, i*P + j, y, x] = 1 / (k*k*C) * sum_c sum_{|u|, |v| <= kr}
        in1p[b, c, Y + u, X + v] * in2p[b, c, Y + u + (i - R)*stride2, X + v + (j - R)*stride2]

in the inputs zero-padded by ``pad_size``, with ``Y = y*stride1 + max_displacement``, ``kr =
(kernel_size - 1) // 2``, ``R = max_displacement // stride2``, ``P = 2R + 1`` (channels
dy-major), and ``ceil((H + 2*pad_size - 2*(kr + max_displacement)) / stride1)`` output rows.

Two details are flownet2-pytorch's own and kept: an even ``kernel_size`` spans ``2*kr + 1 =
kernel_size - 1`` taps yet divides by ``kernel_size**2``; and ``corr_multiply`` is accepted
and has no effect (its CUDA kernels never read it). Outside the padded inputs we take zeros:
with ``kernel_size >= 3`` the first row and column of windows reach ``kr`` pixels beyond the
padding, where the CUDA kernel reads outside its buffer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import (
    check_feature_pair,
    check_finite,
    check_non_negative_int,
    check_positive_int,
)
from ..volumes.api import bound
from ..volumes.spec import VolumeSpec

#: pad_size, kernel_size, max_displacement, stride1, stride2 of flownet2-pytorch's Correlation.
Flownet2Settings = tuple[int, int, int, int, int]


def check_flownet2_settings(
    pad_size: Any, kernel_size: Any, max_displacement: Any, stride1: Any, stride2: Any, corr_multiply: Any
) -> Flownet2Settings:
    """The settings of flownet2-pytorch's ``Correlation`` (ints, as its CUDA extension takes them)."""
    check_finite(corr_multiply, "corr_multiply")
    return (
        check_non_negative_int(pad_size, "pad_size"),
        check_positive_int(kernel_size, "kernel_size"),
        check_non_negative_int(max_displacement, "max_displacement"),
        check_positive_int(stride1, "stride1"),
        check_positive_int(stride2, "stride2"),
    )


def check_flownet2_correlation(input1: Any, input2: Any, settings: Flownet2Settings) -> VolumeSpec:
    """Validate the inputs of flownet2-pytorch's ``Correlation``; return its problem.

    Its geometry, in the zero-padded input: output ``(y, x)`` compares the window of radius
    ``kr = (kernel_size - 1) // 2`` centred at ``(y*stride1 + max_displacement, x*stride1 +
    max_displacement)`` with the windows displaced by ``(i - R, j - R) * stride2``, ``R =
    max_displacement // stride2``; the output is ``ceil((H + 2*pad_size - 2*(kr +
    max_displacement)) / stride1)`` high, and every sum is divided by ``kernel_size**2 * C``.
    """
    B, C, H, W = check_feature_pair(input1, input2, ("input1", "input2"))
    pad, k, md, s1, s2 = settings
    kr = (k - 1) // 2
    border = 2 * (kr + md)
    if H + 2 * pad <= border or W + 2 * pad <= border:
        raise ValueError(
            f"the padded input must be larger than 2 * (kernel radius + max_displacement) = {border} in both "
            f"dimensions (kernel_size {k}, max_displacement {md}); got input1 {(B, C, H, W)} with pad_size {pad}, "
            f"{H + 2 * pad}x{W + 2 * pad}"
        )
    R = md // s2
    start = md - pad - kr
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(2 * kr + 1, 2 * kr + 1),
        kernel_dilation=(1, 1),
        origin=(start, start),
        stride=(s1, s1),
        out_size=(-(-(H + 2 * pad - border) // s1), -(-(W + 2 * pad - border) // s1)),
        dy=(-R * s2, s2, 2 * R + 1),
        dx=(-R * s2, s2, 2 * R + 1),
        scale=1.0 / (k * k * C),
        dtype=input1.dtype,
        device=input1.device,
    )


__all__ = ["Correlation"]


class Correlation(nn.Module):
    r"""flownet2-pytorch's correlation layer: local correlation averaged over window and channels.

    FlowNetC uses ``Correlation(20, 1, 20, 1, 2)`` (441 displacements of stride 2), PWC-Net
    ``Correlation(4, 1, 4, 1, 1)`` (81).

    Args:
        pad_size (int): zeros added around both inputs.
        kernel_size (int): side of the compared window (centred; see the module notes for even sizes).
        max_displacement (int): largest displacement, in pixels.
        stride1 (int): step between output positions.
        stride2 (int): step between displacements.
        corr_multiply (float): accepted for compatibility; unused, as in flownet2-pytorch.

    Shape:
        input1, input2 (Tensor[B, C, H, W]) -> Tensor[B, (2R+1)**2, H', W'] with
        ``R = max_displacement // stride2``.

    Example:
        >>> from xcorr.compat.flownet2 import Correlation
        >>> corr = Correlation(pad_size=4, kernel_size=1, max_displacement=4, stride1=1, stride2=1)
        >>> corr
        Correlation(pad_size=4, kernel_size=1, max_displacement=4, stride1=1, stride2=1)
        >>> f1 = torch.ones(2, 32, 14, 32)
        >>> out = corr(f1, f1)
        >>> out.shape
        torch.Size([2, 81, 14, 32])
        >>> out[0, 40, 0, 0], out[0, 0, 0, 0]  # no displacement; 4 up and 4 left falls outside
        (tensor(1.), tensor(0.))
    """

    def __init__(
        self,
        pad_size: int,
        kernel_size: int,
        max_displacement: int,
        stride1: int,
        stride2: int,
        corr_multiply: float = 1,
    ) -> None:
        super().__init__()
        self._settings = check_flownet2_settings(
            pad_size, kernel_size, max_displacement, stride1, stride2, corr_multiply
        )
        self.pad_size = pad_size
        self.kernel_size = kernel_size
        self.max_displacement = max_displacement
        self.stride1 = stride1
        self.stride2 = stride2
        self.corr_multiply = corr_multiply

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        settings = self._settings
        run = bound("flownet2", input1, input2, settings, lambda: check_flownet2_correlation(input1, input2, settings))
        spec = run.spec
        return run(input1, input2).reshape(spec.batch, spec.displacements, *spec.out_size)

    def extra_repr(self) -> str:
        names = ("pad_size", "kernel_size", "max_displacement", "stride1", "stride2")
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return shown if self.corr_multiply == 1 else f"{shown}, corr_multiply={self.corr_multiply!r}"
