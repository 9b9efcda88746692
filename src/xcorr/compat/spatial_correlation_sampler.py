"""Drop-in for the ``spatial-correlation-sampler`` package (``Pytorch-Correlation-extension``).

``from spatial_correlation_sampler import SpatialCorrelationSampler, spatial_correlation_sample``
becomes ``from xcorr.compat.spatial_correlation_sampler import ...`` with the same arguments and
the same output::

    out[b, p, q, y, x] = sum_c sum_{u<kh, v<kw} in1[b, c, Y + u*dh, X + v*dw]
                                               * in2[b, c, Y + u*dh + sy_p, X + v*dw + sx_q]

with ``Y = y*stride - padding`` (the kernel is anchored at its top-left tap, not its centre),
``sy_p = (p - (patch_size - 1) // 2) * dilation_patch``, zeros outside the inputs, no
normalisation, and an output of ``(H + 2*padding - dilation*(kernel_size-1) - 1) / stride + 1``
rows, the division rounded toward zero as the package's C++ divides: a kernel that overhangs the
padded input by less than a stride still gives one row (its taps outside read zeros), one that
overhangs it by less than two strides none, and a larger one is rejected (the package fails to
allocate its output).

Where the package's own two paths disagree we follow its CPU code: for an even patch size with
``dilation_patch > 1`` its CUDA kernel centres the offsets at ``dilation_patch*(patch_size-1)//2``
(patch 4, dilation_patch 2: offsets -3, -1, 1, 3) while its CPU code gives -2, 0, 2, 4, the
offsets of every other case (odd patch sizes, or ``dilation_patch == 1``, where both agree).

Unlike the package: float16 and bfloat16 are accumulated in float32 (its CUDA kernel sums in
the inputs' dtype), the CPU takes every floating-point dtype (its CPU code float32 and float64
only: another dtype aborts the process), inputs of two shapes or without channels, rows or
columns raise a ``ValueError`` (the package reads past the smaller input, or returns zeros),
there is nothing to compile, and ``torch.onnx.export`` and ``torch.compile`` work.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn

from .._checks import (
    Pair,
    check_feature_pair,
    check_pair,
)
from .._compute import empty_result
from ..volumes.api import bound
from ..volumes.spec import VolumeSpec

#: kernel_size, patch_size, stride, padding, dilation, dilation_patch of spatial-correlation-sampler.
SamplerSettings = tuple[Pair, Pair, Pair, Pair, Pair, Pair]


def check_sampler_settings(
    kernel_size: Any, patch_size: Any, stride: Any, padding: Any, dilation: Any, dilation_patch: Any
) -> SamplerSettings:
    """The settings of ``spatial_correlation_sample`` as pairs (each an int or a pair of ints)."""
    return (
        check_pair(kernel_size, "kernel_size", 1),
        check_pair(patch_size, "patch_size", 1),
        check_pair(stride, "stride", 1),
        check_pair(padding, "padding", 0),
        check_pair(dilation, "dilation", 1),
        check_pair(dilation_patch, "dilation_patch", 1),
    )


def _positions(room: int, stride: int) -> int:
    """Output positions on an axis with ``room`` = padded size - kernel span: ``room / stride + 1``
    with the division rounded toward zero, as the package's C++ divides (one position while the
    kernel overhangs the padded input by less than a stride, none by less than two, then negative)."""
    return (room // stride if room >= 0 else -(-room // stride)) + 1


def check_spatial_correlation_sample(input1: Any, input2: Any, settings: SamplerSettings) -> VolumeSpec:
    """Validate the inputs of ``spatial_correlation_sample``; return its problem.

    The package's output size, ``(H + 2*padding - dilated kernel) / stride + 1`` with the
    division rounded toward zero, and the patch offsets of its CPU code, ``(p - (patch_size -
    1) // 2) * dilation_patch`` for ``p < patch_size``.
    """
    B, C, H, W = check_feature_pair(input1, input2, ("input1", "input2"))
    (kh, kw), (ph, pw), (sh, sw), (padh, padw), (dh, dw), (dph, dpw) = settings
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    out_size = (_positions(H + 2 * padh - span_h, sh), _positions(W + 2 * padw - span_w, sw))
    if min(out_size) < 0:
        raise ValueError(
            f"the kernel must overhang the padded input by less than two strides (the output has "
            f"(H + 2*padding - span) / stride + 1 positions, rounded toward zero, on each axis): kernel_size "
            f"{(kh, kw)} with dilation {(dh, dw)} spans {span_h}x{span_w}, input1 {(B, C, H, W)} with padding "
            f"{(padh, padw)} is {H + 2 * padh}x{W + 2 * padw}, stride {(sh, sw)}: {out_size[0]}x{out_size[1]} positions"
        )
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(kh, kw),
        kernel_dilation=(dh, dw),
        origin=(-padh, -padw),
        stride=(sh, sw),
        out_size=out_size,
        dy=(-((ph - 1) // 2) * dph, dph, ph),
        dx=(-((pw - 1) // 2) * dpw, dpw, pw),
        scale=1.0,
        dtype=input1.dtype,
        device=input1.device,
    )


__all__ = ["SpatialCorrelationSampler", "spatial_correlation_sample"]

# Union, not |: a module-level alias is evaluated at run time, where Python 3.9 has no | of types.
IntPair = Union[int, tuple[int, int]]


def spatial_correlation_sample(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntPair = 1,
    patch_size: IntPair = 1,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    dilation_patch: IntPair = 1,
) -> torch.Tensor:
    r"""Correlate ``input1`` with ``input2`` shifted over a patch of offsets, as the package does.

    Every argument after the inputs is an int or a pair of ints (rows, columns).

    Args:
        input1 (Tensor[B, C, H, W]): first feature map.
        input2 (Tensor[B, C, H, W]): second feature map, same shape, dtype and device.
        kernel_size: size of the window compared at each output position (anchored at its
            top-left tap).
        patch_size: offsets per axis; patch index ``p`` is offset
            ``(p - (patch_size - 1) // 2) * dilation_patch``.
        stride: step between output positions.
        padding: zeros added around both inputs.
        dilation: spacing between the window's taps.
        dilation_patch: spacing between offsets.

    Returns:
        Tensor[B, PH, PW, oH, oW] of ``input1``'s dtype (sums, not averages), with
        ``oH = (H + 2*padding - dilation*(kernel_size - 1) - 1) / stride + 1``, the division
        rounded toward zero (see the module's notes); differentiable in both inputs.

    Example:
        >>> from xcorr.compat.spatial_correlation_sampler import spatial_correlation_sample
        >>> f1 = torch.ones(2, 8, 6, 6)
        >>> out = spatial_correlation_sample(f1, f1, patch_size=3)
        >>> out.shape
        torch.Size([2, 3, 3, 6, 6])
        >>> out[0, :, :, 0, 0]  # at a corner, offsets up or left fall outside
        tensor([[0., 0., 0.],
                [0., 8., 8.],
                [0., 8., 8.]])
    """
    given = (kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    run = bound(
        "spatial_correlation_sample",
        input1,
        input2,
        given,
        lambda: check_spatial_correlation_sample(input1, input2, check_sampler_settings(*given)),
    )
    spec = run.spec
    shape = (spec.batch, spec.dy[2], spec.dx[2], *spec.out_size)
    if 0 in spec.out_size:  # a kernel overhanging the padded input by a stride or more: no positions
        return empty_result(shape, input1, input2)
    return run(input1, input2).reshape(shape)


class SpatialCorrelationSampler(nn.Module):
    r"""Module form of :func:`spatial_correlation_sample`; ``forward(input1, input2)``.

    The settings are checked when the module is built and kept as given (an int or a pair).

    Shape:
        input1, input2 (Tensor[B, C, H, W]) -> Tensor[B, PH, PW, oH, oW].

    Example:
        >>> from xcorr.compat.spatial_correlation_sampler import SpatialCorrelationSampler
        >>> sampler = SpatialCorrelationSampler(patch_size=9, dilation_patch=2)
        >>> sampler
        SpatialCorrelationSampler(patch_size=9, dilation_patch=2)
        >>> sampler(torch.rand(1, 16, 12, 20), torch.rand(1, 16, 12, 20)).shape
        torch.Size([1, 9, 9, 12, 20])
    """

    def __init__(
        self,
        kernel_size: IntPair = 1,
        patch_size: IntPair = 1,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        dilation_patch: IntPair = 1,
    ) -> None:
        super().__init__()
        check_sampler_settings(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
        self.kernel_size = kernel_size
        self.patch_size = patch_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.dilation_patch = dilation_patch

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        return spatial_correlation_sample(
            input1,
            input2,
            self.kernel_size,
            self.patch_size,
            self.stride,
            self.padding,
            self.dilation,
            self.dilation_patch,
        )

    def extra_repr(self) -> str:
        defaults = {"kernel_size": 1, "patch_size": 1, "stride": 1, "padding": 0, "dilation": 1, "dilation_patch": 1}
        shown = {name: getattr(self, name) for name in defaults}
        # A setting equals its default in either form (2 or (2, 2)); the settings were checked.
        changed = {
            name: v for name, v in shown.items() if check_pair(v, name, 0) != check_pair(defaults[name], name, 0)
        }
        return ", ".join(f"{name}={value!r}" for name, value in changed.items())
