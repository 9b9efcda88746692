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
