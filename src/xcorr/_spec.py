"""The validated description of one correlation problem, shared by the planner and the backends."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

Pair = tuple[int, int]


@dataclass(frozen=True)
class Spec:
    """Shapes and geometry of ``xcorr(x, z, ...)`` after validation.

    ``k`` search items share each template (``B == Bz * k``); ``out_channels`` is 1 for
    ``"naive"``, ``C`` for ``"depthwise"`` and ``K = Cz // C`` for ``"upchannel"``.
    """

    mode: str
    x_shape: tuple[int, int, int, int]
    z_shape: tuple[int, int, int, int]
    padding: Pair
    stride: Pair
    dilation: Pair
    dtype: torch.dtype
    device: torch.device

    @property
    def batch(self) -> int:
        return self.x_shape[0]

    @property
    def channels(self) -> int:
        return self.x_shape[1]

    @property
    def templates(self) -> int:
        return self.z_shape[0]

    @property
    def k(self) -> int:
        """Search items per template."""
        return self.batch // self.templates if self.templates else 0

    @property
    def out_channels(self) -> int:
        if self.mode == "naive":
            return 1
        if self.mode == "depthwise":
            return self.channels
        return self.z_shape[1] // self.channels

    @property
    def padded_search(self) -> Pair:
        (_, _, H, W), (ph, pw) = self.x_shape, self.padding
        return H + 2 * ph, W + 2 * pw

    @property
    def dilated_template(self) -> Pair:
        (_, _, h, w), (dh, dw) = self.z_shape, self.dilation
        return dh * (h - 1) + 1, dw * (w - 1) + 1

    @property
    def out_size(self) -> Pair:
        (Hp, Wp), (hd, wd), (sh, sw) = self.padded_search, self.dilated_template, self.stride
        return (Hp - hd) // sh + 1, (Wp - wd) // sw + 1

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, *self.out_size)

    def with_batch(self, batch: int, templates: int | None = None) -> Spec:
        """This problem with ``batch`` search items (a template plan meets searches of any such
        batch) and, if given, ``templates`` templates (a chunk of the batch)."""
        (B, C, H, W), (Bz, Cz, h, w) = self.x_shape, self.z_shape
        templates = Bz if templates is None else templates
        if batch == B and templates == Bz:
            return self
        return replace(self, x_shape=(batch, C, H, W), z_shape=(templates, Cz, h, w))


@dataclass(frozen=True)
class VolumeSpec:
    """Shapes and geometry of one cost volume (local correlation, stereo) after validation.

    ``out[b, g, i*Px + j, y, x] = scale * sum_{c in group g} sum_{u<kh, v<kw}
    F1[b, c, Yu, Xv] * F2[b, c, Yu + dy_i, Xv + dx_j]`` with ``Yu = origin[0] + y*stride[0] +
    u*kernel_dilation[0]``, ``Xv`` likewise, ``dy_i = dy[0] + i*dy[1]``, ``dx_j = dx[0] + j*dx[1]``
    and ``F1``, ``F2`` the inputs extended by zeros outside the map. Group ``g`` holds channels
    ``g*C/G ... (g+1)*C/G - 1``.
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

    def with_batch(self, batch: int) -> VolumeSpec:
        """This problem with ``batch`` items (a chunk of the batch)."""
        if batch == self.batch:
            return self
        return replace(self, shape=(batch, *self.shape[1:]))

    @property
    def extent(self) -> Pair:
        """Rows and columns one kernel spans: ``dilation * (kernel - 1) + 1``."""
        (kh, kw), (dh, dw) = self.kernel, self.kernel_dilation
        return dh * (kh - 1) + 1, dw * (kw - 1) + 1

    @property
    def pointwise(self) -> bool:
        """Whether the kernel is one tap, so that products are needed at the output positions only."""
        return self.kernel == (1, 1)

    @property
    def product_grid(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """The f1 positions whose products with f2 make the volume: ``((row0, step, rows), (col0,
        step, cols))``. A one-tap kernel needs the output positions only; a larger kernel needs
        every position its windows cover (then summed over each window)."""
        (oy, ox), (sy, sx), (Ho, Wo) = self.origin, self.stride, self.out_size
        if self.pointwise:
            return (oy, sy, Ho), (ox, sx, Wo)
        (ey, ex) = self.extent
        return (oy, 1, (Ho - 1) * sy + ey), (ox, 1, (Wo - 1) * sx + ex)
