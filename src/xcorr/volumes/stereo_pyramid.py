"""RAFT-Stereo's 1-D correlation pyramid, exact, differentiable and memory-light when it has to be.

:class:`StereoCorrPyramid` computes what RAFT-Stereo's ``CorrBlock1D`` computes
(princeton-vl/RAFT-Stereo, ``core/corr.py``): every pixel of a row of the left features against
every pixel of the same row of the right features, divided by ``sqrt(C)``, average pooled along
the right row into levels (a kernel and stride of 1x2), and looked up at ``2r+1`` positions
``x / 2**l + dx`` per level, linearly, with zeros outside the row.

The two facts behind :mod:`.pyramid` hold in one dimension too: pooling is linear in ``right``,
and the samples of one lookup share their fractional offset, so the ``2r+1`` samples of a level
are a linear blend of the ``2r+2`` integer taps around them. The all-pairs volumes of every
level sit side by side in one table of rows, so a lookup is one gather of ``L*(2r+2)`` taps per
pixel. Their gradients add up across lookups (autograd sums them) and reach the features by one
matrix product per feature map, once per backward pass, not once per lookup.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._compute import compute_dtype, empty_result, needs_grad
from .._tracing import tracing
from ..planning.engine import ENGINE, signature
from .family import stereo_pyramid_row_dense
from .pyramid import _eager, _scaled_rows, _traced, _Windows
from .spec import StereoPyramidSpec, check_stereo_coords, check_stereo_corr_pyramid, level_columns, level_widths


def _method(left: torch.Tensor, right: torch.Tensor, num_levels: int, radius: int, method: str) -> str:
    """The validated arguments' method, ``"auto"`` decided by the planning engine."""
    method = check_stereo_corr_pyramid(left, right, num_levels, radius, method)
    if method != "auto":
        return method
    spec = StereoPyramidSpec(tuple(left.shape), num_levels, radius, compute_dtype(left.dtype), left.device)
    return ENGINE.decide(spec)


class StereoCorrPyramid:
    r"""RAFT-Stereo's 1-D correlation pyramid of ``left`` against ``right``, looked up with ``pyr(coords)``.

    Level ``l`` (``0 <= l < num_levels``) correlates each pixel of ``left`` with the pixels of
    its own row of ``right``, average pooled ``l`` times along the row (kernel and stride 1x2,
    widths rounded down: ``W // 2**l``), divided by ``sqrt(C)``. ``pyr(coords)`` samples each
    level at ``x / 2**l + d``, ``d = -r ... r``:

    ``out[b, l*(2r+1) + d + r, h, w] = sum_c left[b, c, h, w] * S(P_l right[b, c, h], x/2**l + d) / sqrt(C)``

    with ``x = coords[b, 0, h, w]`` and ``S(row, px)`` the linear sample of a row at pixel
    position ``px``, zero outside it (``F.grid_sample(..., align_corners=True)`` on a one-pixel
    high image, as RAFT-Stereo calls it). The channels are RAFT-Stereo's order: the level, then
    the offset ``d``. A level one pixel wide is sampled by the same rule (``CorrBlock1D``
    divides by zero there), and ``num_levels`` levels need ``W >= 2**(num_levels-1)``
    (``CorrBlock1D`` pools once more than it uses, so it needs twice that).

    Args:
        left (Tensor[B, C, H, W]): features of the left image.
        right (Tensor[B, C, H, W]): features of the right image (same shape, dtype, device).
        num_levels (int): pyramid levels; ``W`` must be at least ``2**(num_levels-1)``.
        radius (int): the lookup's radius ``r``.
        method (str): ``"all_pairs"`` builds every level's volume once (``B*H*W`` by
            ``W + W//2 + ...`` values: one matrix product per row of the image; lookups then only
            read it), the right choice while it fits in memory; ``"on_demand"`` keeps only the
            pooled features and correlates the looked-up taps at each lookup, in chunks
            (RAFT-Stereo's ``PytorchAlternateCorrBlock1D``, without its copy of the features per
            tap); ``"auto"`` (default) asks the planning engine, which takes the volumes while
            they fit :data:`xcorr.volumes.family.PYRAMID_VOLUME_BYTES`.

    Lookups return float32 for float16, bfloat16 and float32 features (half precision is
    computed in float32, as RAFT-Stereo's ``.float()`` returns it) and float64 for float64 ones;
    ``coords`` (any floating dtype) are used in that dtype. Lookups are differentiable in
    ``left``, ``right`` and ``coords`` (the linear weights' derivative, as ``grid_sample``'s).
    ``left`` and ``right`` are never modified. Tracing (``torch.compile``, ONNX export) runs
    plain operations.

    Example:
        >>> left, right = torch.randn(1, 8, 4, 16), torch.randn(1, 8, 4, 16)
        >>> pyr = xcorr.StereoCorrPyramid(left, right, num_levels=2, radius=1)
        >>> xs = torch.arange(16.0).expand(1, 1, 4, 16)
        >>> out = pyr(xs - 2)  # every pixel at disparity 2: x coordinates only, (B, 1, H, W)
        >>> out.shape
        torch.Size([1, 6, 4, 16])
        >>> # channel 1 = level 0, offset 0: left . right two pixels to the left / sqrt(C)
        >>> torch.allclose(out[..., 2:][:, 1], (left[..., 2:] * right[..., :-2]).sum(1) / 8**0.5, atol=1e-6)
        True
    """

    def __init__(
        self, left: torch.Tensor, right: torch.Tensor, num_levels: int = 4, radius: int = 4, *, method: str = "auto"
    ) -> None:
        self.method = ENGINE.cached(
            signature("StereoCorrPyramid", (left, right), (num_levels, radius, method)),
            lambda: _method(left, right, num_levels, radius, method),
        )
        self.num_levels, self.radius = num_levels, radius
        self.shape = tuple(left.shape)
        self.dtype = compute_dtype(left.dtype)
        B, C, H, W = self.shape
        self._layout = _Layout.of(level_widths(W, num_levels), radius, self.dtype, left.device)
        lc, rc = left.to(self.dtype), right.to(self.dtype)
        self._empty = (lc, rc) if B == 0 else None
        # Each row of left as a batch item (B*H, W, C), the 1/sqrt(C) folded in; -1 keeps B symbolic.
        self._rows1 = _scaled_rows(lc, 1.0 / math.sqrt(C)).reshape(-1, W, C)
        self._volume = self._table = None
        if B == 0:
            return
        if self.method == "all_pairs":
            self._volume = _volume(self._rows1, _scaled_rows(rc, 1.0).reshape(-1, W, C), self._layout)
        else:
            self._table = _pooled_table(rc, self._layout)

    def __repr__(self) -> str:
        return (
            f"StereoCorrPyramid(shape={self.shape}, num_levels={self.num_levels}, radius={self.radius}, "
            f"method={self.method!r})"
        )

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """Look the pyramid up around ``coords``.

        Args:
            coords (Tensor[B, 2, H, W] or Tensor[B, 1, H, W]): for every pixel of ``left``, an x
                position in its row of ``right``, in pixels, in channel 0 (RAFT-Stereo's
                ``coords1``; a channel 1, the y position, is not read).

        Returns:
            Tensor[B, num_levels*(2r+1), H, W], float32 (float64 for float64 features).
        """
        B, C, H, W = self.shape
        check_stereo_coords(coords, self.shape, self._rows1.device)
        channels = self.num_levels * (2 * self.radius + 1)
        if self._empty is not None:
            return empty_result((0, channels, H, W), *self._empty, coords)
        index, frac = self._layout.taps(coords[:, 0].to(self.dtype).reshape(-1))
        if self._volume is not None:
            taps = self._volume.gather(1, index.flatten(1))
        else:
            taps = self._correlated(index.view(-1, W, index.shape[1] * index.shape[2]))
        taps = taps.view(index.shape)
        samples = torch.lerp(taps[..., :-1], taps[..., 1:], frac.unsqueeze(-1))
        return samples.reshape(-1, H * W, channels).transpose(1, 2).reshape(-1, channels, H, W).contiguous()

    def _correlated(self, index: torch.Tensor) -> torch.Tensor:
        """The on-demand taps (B*H, W, T): each row's left pixels against the looked-up pixels of
        its row of the pooled table, by the windowed correlation of :mod:`.pyramid` (every tap
        lies in the row, the zero columns included)."""
        table = self._table
        assert table is not None
        row = self._layout.row
        dense = stereo_pyramid_row_dense(row, index.shape[-1])
        inside = torch.ones((), dtype=torch.bool, device=index.device).expand(index.shape)
        if tracing():
            return _traced(self._rows1, table, index, inside, None, dense, row)
        if needs_grad(self._rows1, table):
            return _Windows.apply(self._rows1, table, index, inside, None, dense, (1, row))
        return _eager(self._rows1, table, index, inside, None, dense, row)


class _Layout(NamedTuple):
    """Where each level lies in a row of the tables (:func:`~.spec.level_columns`: a lookup's taps
    are ``2r + 2`` consecutive columns of the row, zeros where they fall outside their level),
    and the constants of a lookup (L,): each level's scale ``2**-l``, the bounds of its
    positions, the column of its position 0 less ``r``."""

    widths: tuple[int, ...]
    starts: tuple[int, ...]
    row: int
    scale: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    offsets: torch.Tensor
    steps: torch.Tensor

    @staticmethod
    def of(widths: tuple[int, ...], radius: int, dtype: torch.dtype, device: torch.device) -> _Layout:
        starts, row = level_columns(widths, radius)

        def constants(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return _Layout(
            widths,
            starts,
            row,
            constants([2.0**-level for level in range(len(widths))]),
            constants([-(radius + 2.0)] * len(widths)),
            constants([width + radius for width in widths]),
            constants([start - radius for start in starts]),
            torch.arange(2 * radius + 2, device=device),
        )

    def taps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The taps of a lookup at ``x`` (P,): their columns in the row (P, L, 2r+2), and the
        fractional offset of each level's samples from their left taps (P, L), differentiable in
        ``x``. A position beyond ``r + 2`` pixels out of its level reads zeros only: clamped
        there, it reads zeros still, and stays within the row."""
        at = torch.clamp(x.unsqueeze(-1) * self.scale, self.lower, self.upper)
        left = at.detach().floor()
        # (NaN positions: their columns clamped into the row; their samples NaN, from frac.)
        first = (left + self.offsets).long().clamp_(0, self.row - self.steps.numel())
        return first.unsqueeze(-1) + self.steps, at - left


def _pooled_table(right: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``right`` pooled along its rows into every level, as one table of pixel rows: item ``b``,
    row ``h``'s levels side by side as the layout places them (B*H*row, C), zeros between, then
    one more row of zeros (which the windowed correlation takes for "outside")."""
    B, C, H, _ = right.shape
    table = right.new_zeros(B, H, layout.row, C)
    level = right
    for index, (start, width) in enumerate(zip(layout.starts, layout.widths)):
        if index:
            level = F.avg_pool2d(level, (1, 2), stride=(1, 2))
        table[:, :, start : start + width] = level.permute(0, 2, 3, 1)
    return torch.cat([table.view(-1, C), table.new_zeros(1, C)])


def _volume(rows1: torch.Tensor, rows2: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """Every level's all-pairs volume (B*H*W, row): row ``(b, h, w)`` holds left pixel ``w`` of
    row ``h`` against each level's pixels of that row, placed as the layout says."""
    if tracing():  # plain operations, which autograd differentiates
        level = torch.bmm(rows1, rows2.transpose(1, 2))
        pad = layout.starts[0]
        zeros = level.new_zeros(*level.shape[:2], pad)
        pieces = [zeros, level, zeros]
        for width in layout.widths[1:]:
            level = (level[..., 0 : 2 * width : 2] + level[..., 1 : 2 * width : 2]) * 0.5
            pieces += [level, zeros]
        volume = torch.cat(pieces, dim=-1)
        return volume.reshape(-1, volume.shape[-1])
    if needs_grad(rows1, rows2):
        return _Volume.apply(rows1, rows2, layout)
    return _pooled_volume(rows1, rows2, layout)


def _pooled_volume(rows1: torch.Tensor, rows2: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """:func:`_volume` in eager mode: level 0 by one batched matrix product, each further level
    pooled from the one before into its columns, zeros between."""
    BH, W, _ = rows1.shape
    out = rows1.new_empty(BH, W, layout.row)
    pad = layout.starts[0]
    out[..., :pad].zero_()
    # (A matrix product written into a strided slice of out took 15 times as long.)
    out[..., pad : pad + W] = torch.bmm(rows1, rows2.transpose(1, 2))
    for finer, (start, width) in zip(layout.starts, zip(layout.starts[1:], layout.widths[1:])):
        out[..., start - pad : start].zero_()
        pairs = out[..., finer : finer + 2 * width]
        torch.add(pairs[..., 0::2], pairs[..., 1::2], out=out[..., start : start + width]).mul_(0.5)
    out[..., layout.row - pad :].zero_()
    return out.view(BH * W, -1)


class _Volume(torch.autograd.Function):
    """:func:`_pooled_volume` with a backward pass that spreads each level's gradient back onto
    level 0 (coarsest first, each level's half onto the two pixels it averages) and then takes
    two batched matrix products: the gradients of all the lookups, which autograd has summed,
    reach the features at once."""

    @staticmethod
    def forward(ctx, rows1, rows2, layout):
        ctx.save_for_backward(rows1, rows2)
        ctx.layout = layout
        return _pooled_volume(rows1, rows2, layout)

    @staticmethod
    def backward(ctx, g):
        rows1, rows2 = ctx.saved_tensors
        starts, widths = ctx.layout.starts, ctx.layout.widths
        BH, W, _ = rows1.shape
        g = g.view(BH, W, -1)
        spread = g[..., starts[-1] : starts[-1] + widths[-1]]
        for level in reversed(range(len(widths) - 1)):
            start, width, coarser = starts[level], widths[level], widths[level + 1]
            finer = g[..., start : start + width].clone()
            finer[..., : 2 * coarser].unflatten(-1, (coarser, 2)).add_(spread.unsqueeze(-1), alpha=0.5)
            spread = finer
        need1, need2 = ctx.needs_input_grad[:2]
        g1 = torch.bmm(spread, rows2) if need1 else None
        g2 = torch.bmm(spread.transpose(1, 2), rows1) if need2 else None
        return g1, g2, None
