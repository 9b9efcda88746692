"""The validated problem of a cost volume, and the checks that build it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import (
    Pair,
    _type_name,
    check_choice,
    check_feature_pair,
    check_non_negative_int,
    check_positive_int,
    check_tensor,
)


@dataclass(frozen=True)
class VolumeSpec:
    """Shapes and geometry of one cost volume (local correlation, stereo) after validation.

    ``out[b, g, i*Px + j, y, x] = scale * sum_{c in group g} sum_{u<kh, v<kw}
    F1[b, c, Yu, Xv] * F2[b, c, Yu + dy_i, Xv + dx_j]`` with ``Yu = origin[0] + y*stride[0] +
    u*kernel_dilation[0]``, ``Xv`` likewise, ``dy_i = dy[0] + i*dy[1]``, ``dx_j = dx[0] + j*dx[1]``
    and ``F1``, ``F2`` the inputs extended by zeros outside the map. Group ``g`` holds channels
    ``g*C/G ... (g+1)*C/G - 1``. :func:`xcorr.local_correlation` and :func:`xcorr.stereo_correlation`
    build theirs from their arguments; build one directly for any other volume and compute it
    with :func:`xcorr.volumes.correlate`.

    Attributes:
        shape (tuple[int, int, int, int]): ``(B, C, H, W)`` of both feature maps.
        groups (int): ``G``, a divisor of ``C``.
        kernel (tuple[int, int]): ``(kh, kw)``, the taps summed per output.
        kernel_dilation (tuple[int, int]): spacing of the taps.
        origin (tuple[int, int]): the ``f1`` position of output ``(0, 0)``'s first tap (negative
            to centre a kernel on the output's pixel).
        stride (tuple[int, int]): step between output positions.
        out_size (tuple[int, int]): ``(Ho, Wo)``.
        dy (tuple[int, int, int]): ``(first, step, Py)``: the rows of the displacement window.
        dx (tuple[int, int, int]): ``(first, step, Px)``: its columns.
        scale (float): factor of every output.
        dtype (torch.dtype): the features' dtype.
        device (torch.device): the features' device.
    """

    shape: tuple[int, int, int, int]
    groups: int
    kernel: Pair
    kernel_dilation: Pair
    origin: Pair
    stride: Pair
    out_size: Pair
    dy: tuple[int, int, int]
    dx: tuple[int, int, int]
    scale: float
    dtype: torch.dtype
    device: torch.device

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def group_channels(self) -> int:
        """Channels summed into each output channel (``C / G``)."""
        return self.shape[1] // self.groups

    @property
    def displacements(self) -> int:
        """``Py * Px``: displacements per output position and group."""
        return self.dy[2] * self.dx[2]

    @property
    def out_shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.groups, self.displacements, *self.out_size)

    @property
    def extent(self) -> Pair:
        """The rows and columns one kernel spans, ``dilation * (kernel - 1) + 1``."""
        (kh, kw), (dh, dw) = self.kernel, self.kernel_dilation
        return dh * (kh - 1) + 1, dw * (kw - 1) + 1

    @property
    def pointwise(self) -> bool:
        """Whether the kernel is one tap, so that products are needed at the output positions only."""
        return self.kernel == (1, 1)

    @property
    def product_grid(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """The f1 positions whose products with f2 make the volume, as ``((row0, step, rows), (col0,
        step, cols))``. A one-tap kernel needs the output positions only; a larger kernel needs
        every position its windows cover (then summed over each window)."""
        (oy, ox), (sy, sx), (Ho, Wo) = self.origin, self.stride, self.out_size
        if self.pointwise:
            return (oy, sy, Ho), (ox, sx, Wo)
        (ey, ex) = self.extent
        return (oy, 1, (Ho - 1) * sy + ey), (ox, 1, (Wo - 1) * sx + ex)


@dataclass(frozen=True)
class PyramidSpec:
    """A validated correlation pyramid: features of ``shape`` (B, C, H, W), its levels and radius;
    ``once``: whether the last pyramid of its call signature was looked up only once (see
    :meth:`xcorr.volumes.family.PyramidFamily.looked_up_once`)."""

    shape: tuple[int, ...]
    num_levels: int
    radius: int
    dtype: torch.dtype
    device: torch.device
    once: bool = False

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one lookup's output."""
        B, _, H, W = self.shape
        return (B, self.num_levels * (2 * self.radius + 1) ** 2, H, W)


@dataclass(frozen=True)
class StereoPyramidSpec(PyramidSpec):
    """A validated 1-D (stereo) correlation pyramid: features of ``shape`` (B, C, H, W), its
    levels and radius. (The planning engine finds a spec's family by its exact type.)"""

    @property
    def widths(self) -> tuple[int, ...]:
        """Each level's width: ``W`` halved, rounding down, once per level (``W // 2**l``)."""
        return level_widths(self.shape[-1], self.num_levels)

    @property
    def row(self) -> int:
        """The width of a row of its tables, every level side by side (see :func:`level_columns`)."""
        return level_columns(self.widths, self.radius)[1]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one lookup's output."""
        B, _, H, W = self.shape
        return (B, self.num_levels * (2 * self.radius + 1), H, W)


def level_widths(width: int, num_levels: int) -> tuple[int, ...]:
    """The widths of a 1-D pyramid's levels: ``width // 2**l`` (``F.avg_pool2d`` with a kernel and
    stride of 1x2 halves a width rounding down, and halving twice is dividing by 4)."""
    return tuple(width >> level for level in range(num_levels))


def level_columns(widths: tuple[int, ...], radius: int) -> tuple[tuple[int, ...], int]:
    """Where a 1-D pyramid's levels lie in a row of its tables (its volumes, its pooled features):
    each level's first column, and the row's width. Before, between and after the levels lie
    ``2r + 2`` columns of zeros, so that a lookup's ``2r + 2`` taps in a level, consecutive
    columns, stay in the row wherever they fall and read zeros outside the level."""
    pad = 2 * radius + 2
    starts = tuple(pad + sum(widths[:level]) + level * pad for level in range(len(widths)))
    return starts, starts[-1] + widths[-1] + pad


NORMALIZE = ("none", "mean", "sqrt")


LAYOUTS = ("flat", "grid")


def _scale(normalize: str, channels: int, taps: int) -> float:
    """The factor of each output: 1, ``1 / (taps * channels)`` or ``1 / sqrt(channels)``."""
    if normalize == "mean":
        return 1.0 / (taps * channels)
    if normalize == "sqrt":
        return 1.0 / math.sqrt(channels)
    return 1.0


def check_local_correlation(
    f1: Any,
    f2: Any,
    max_displacement: Any,
    displacement_stride: Any,
    stride: Any,
    kernel_size: Any,
    normalize: Any,
    layout: Any,
) -> VolumeSpec:
    """Validate the arguments of :func:`xcorr.local_correlation`; return its problem."""
    B, C, H, W = check_feature_pair(f1, f2, ("f1", "f2"))
    d = check_non_negative_int(max_displacement, "max_displacement")
    ds = check_positive_int(displacement_stride, "displacement_stride")
    s = check_positive_int(stride, "stride")
    k = check_positive_int(kernel_size, "kernel_size")
    normalize = check_choice(normalize, "normalize", NORMALIZE)
    check_choice(layout, "layout", LAYOUTS)
    R, kr = d // ds, (k - 1) // 2
    P = 2 * R + 1
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(k, k),
        kernel_dilation=(1, 1),
        origin=(-kr, -kr),
        stride=(s, s),
        out_size=(-(-H // s), -(-W // s)),
        dy=(-R * ds, ds, P),
        dx=(-R * ds, ds, P),
        scale=_scale(normalize, C, k * k),
        dtype=f1.dtype,
        device=f1.device,
    )


def check_volume_inputs(f1: Any, f2: Any, spec: Any) -> None:
    """Validate the arguments of :func:`xcorr.volumes.correlate`: a :class:`VolumeSpec`, and
    features of its shape, dtype and device."""
    if not isinstance(spec, VolumeSpec):
        raise TypeError(f"spec must be a VolumeSpec, got {_type_name(spec)}")
    check_feature_pair(f1, f2, ("f1", "f2"))
    if tuple(f1.shape) != tuple(spec.shape) or f1.dtype != spec.dtype or f1.device != spec.device:
        raise ValueError(
            f"f1 and f2 must have the spec's shape, dtype and device {tuple(spec.shape)}, {spec.dtype}, "
            f"{spec.device}; got {tuple(f1.shape)}, {f1.dtype}, {f1.device}"
        )


def check_groups(groups: Any, channels: int) -> int:
    """``None`` (one group) or a positive int that divides ``channels``."""
    if groups is None:
        return 1
    G = check_positive_int(groups, "groups")
    if channels % G:
        raise ValueError(
            f"groups must divide the channels (each group averages C/groups channels); got groups={G} for C={channels}"
        )
    return G


def check_stereo_correlation(left: Any, right: Any, max_disparity: Any, groups: Any, normalize: Any) -> VolumeSpec:
    """Validate the arguments of :func:`xcorr.stereo_correlation`; return its problem."""
    B, C, H, W = check_feature_pair(left, right, ("left", "right"))
    D = check_positive_int(max_disparity, "max_disparity")
    G = check_groups(groups, C)
    normalize = check_choice(normalize, "normalize", NORMALIZE)
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=G,
        kernel=(1, 1),
        kernel_dilation=(1, 1),
        origin=(0, 0),
        stride=(1, 1),
        out_size=(H, W),
        dy=(0, 1, 1),
        dx=(0, -1, D),
        scale=_scale(normalize, C // G, 1),
        dtype=left.dtype,
        device=left.device,
    )


PYRAMID_METHODS = ("auto", "all_pairs", "on_demand")


def check_corr_pyramid(f1: Any, f2: Any, num_levels: Any, radius: Any, method: Any) -> str:
    """Validate the arguments of :class:`xcorr.CorrPyramid`; return the method.

    ``f1`` and ``f2`` are (B, C, H, W) of one shape, dtype and device with at least one channel
    (the volume is divided by sqrt(C)); every level halves (rounding down) the size of the one
    before, and the coarsest, ``2**(num_levels - 1)`` times smaller, must keep a pixel.
    """
    _, _, H, W = check_feature_pair(f1, f2, ("f1", "f2"))
    check_positive_int(num_levels, "num_levels")
    check_positive_int(radius, "radius")
    method = check_choice(method, "method", PYRAMID_METHODS)
    smallest = 2 ** (num_levels - 1)
    if H < smallest or W < smallest:
        raise ValueError(
            f"num_levels={num_levels} needs f1 and f2 of at least {smallest}x{smallest} pixels (each level halves "
            f"the one before and the coarsest must keep a pixel); got shape {tuple(f1.shape)}"
        )
    return method


def check_corr_coords(coords: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``coords`` (B, 2, H, W) for features of ``shape`` (B, C, H, W), floating-point, on ``device``."""
    check_tensor(coords, "coords", "B 2 H W")
    B, _, H, W = shape
    if tuple(coords.shape) != (B, 2, H, W):
        raise ValueError(
            f"coords must have shape (B, 2, H, W) = {(B, 2, H, W)}: an (x, y) position in f2 for every pixel "
            f"of f1; got {tuple(coords.shape)}"
        )
    if coords.device != device:
        raise ValueError(f"coords must be on the features' device {device}, got {coords.device}")
    return coords


def check_stereo_corr_pyramid(left: Any, right: Any, num_levels: Any, radius: Any, method: Any) -> str:
    """Validate the arguments of :class:`xcorr.StereoCorrPyramid`; return the method.

    ``left`` and ``right`` are (B, C, H, W) of one shape, dtype and device with at least one
    channel; every level halves (rounding down) the width of the one before, and the coarsest,
    ``2**(num_levels - 1)`` times narrower, must keep a pixel. The height is never pooled.
    """
    _, _, _, W = check_feature_pair(left, right, ("left", "right"))
    check_positive_int(num_levels, "num_levels")
    check_positive_int(radius, "radius")
    method = check_choice(method, "method", PYRAMID_METHODS)
    smallest = 2 ** (num_levels - 1)
    if W < smallest:
        raise ValueError(
            f"num_levels={num_levels} needs left and right at least {smallest} pixels wide (each level halves the "
            f"width of the one before and the coarsest must keep a pixel); got shape {tuple(left.shape)}"
        )
    return method


def check_stereo_coords(coords: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``coords`` (B, 2, H, W) or (B, 1, H, W) for features of ``shape`` (B, C, H, W),
    floating-point, on ``device``."""
    check_tensor(coords, "coords", "B 2 H W")
    B, _, H, W = shape
    if tuple(coords.shape) not in ((B, 2, H, W), (B, 1, H, W)):
        raise ValueError(
            f"coords must have shape (B, 2, H, W) = {(B, 2, H, W)} (RAFT-Stereo's coords1: channel 0 is an x "
            f"position in right for every pixel of left, channel 1 is not read) or (B, 1, H, W) = {(B, 1, H, W)}; "
            f"got {tuple(coords.shape)}"
        )
    if coords.device != device:
        raise ValueError(f"coords must be on the features' device {device}, got {coords.device}")
    return coords
