"""RAFT-Stereo's 1-D correlation pyramid, exact, differentiable and memory-light when it has to be.

:class:`StereoCorrPyramid` computes what RAFT-Stereo's ``CorrBlock1D`` computes
(princeton-vl/RAFT-Stereo, ``core/corr.py``): every pixel of a row of the left features against
every pixel of the same row of the right features, divided by ``sqrt(C)``, average pooled along
the right row into levels (a kernel and stride of 1x2), and looked up at ``2r+1`` positions
``x / 2**l + dx`` per level, linearly, with zeros outside the row.

The two facts behind :mod:`.pyramid` hold in one dimension too: pooling is linear in ``right``,
and the samples of one lookup share their fractional offset, so the ``2r+1`` samples of a level
are a linear blend of the ``2r+2`` integer taps around them. The all-pairs volumes of every
level sit side by side in one table of rows, between columns of zeros, so a lookup copies
``L`` windows of ``2r+2`` consecutive values per pixel. Their gradients add up across lookups
in one buffer (:class:`_Gradient`) and reach the features by one matrix product per feature
map, once per backward pass, not once per lookup.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._compute import compute_dtype, empty_result, needs_grad
from .._spares import SPARES
from .._tracing import tracing
from ..planning.engine import ENGINE, signature
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
            pooled features and correlates the looked-up taps at each lookup (RAFT-Stereo's
            ``PytorchAlternateCorrBlock1D``, without its sampled copy of the features per tap);
            ``"auto"`` (default) asks the planning engine, which takes the volumes while they
            fit :data:`xcorr.volumes.family.PYRAMID_VOLUME_BYTES`.

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
        self.device = left.device
        lc, rc = left.to(self.dtype), right.to(self.dtype)
        self._empty = (lc, rc) if B == 0 else None
        self._volume = self._rows1 = self._table = None
        if B == 0:
            return
        if self.method == "all_pairs":
            self._gradient = _Gradient()
            self._volume = _volume(lc, rc, self._layout, self._gradient)
            if not tracing():
                # The next pyramid of this shape (RAFT-Stereo's next pair) builds in this buffer:
                # no lookup's backward pass keeps it.
                weakref.finalize(self, SPARES.give, [self._volume])
            # The first column of each pixel's row in the volume, flattened.
            self._row_starts = torch.arange(self._volume.shape[0], device=self.device).unsqueeze(-1) * self._layout.row
        else:
            # Each row of left as a batch item (B*H, W, C), the 1/sqrt(C) folded in; -1 keeps B symbolic.
            self._rows1 = _scaled_rows(lc, 1.0 / math.sqrt(C)).reshape(-1, W, C)
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
        check_stereo_coords(coords, self.shape, self.device)
        channels = self.num_levels * (2 * self.radius + 1)
        if self._empty is not None:
            return empty_result((0, channels, H, W), *self._empty, coords)
        first, frac = self._layout.taps(coords[:, 0].to(self.dtype).reshape(-1))
        n = 2 * self.radius + 2
        if self._volume is not None:
            taps = _windows(self._volume, (first + self._row_starts).view(-1), n, self._gradient)
        else:
            index = first.unsqueeze(-1) + self._layout.steps
            taps = self._correlated(index.view(-1, W, self.num_levels * n))
        # (B, H*W, L, n) taps; their samples (B, H*W, L, 2r+1) are the channels (B, L*(2r+1), H, W).
        taps, frac = taps.view(-1, H * W, self.num_levels, n), frac.view(-1, H * W, self.num_levels, 1)
        if tracing():  # plain operations, which autograd differentiates
            samples = torch.lerp(taps[..., :-1], taps[..., 1:], frac)
            return samples.reshape(-1, H * W, channels).transpose(1, 2).reshape(-1, channels, H, W).contiguous()
        if needs_grad(taps, frac):
            return _Blend.apply(taps, frac, H, W)
        return _blend(taps, frac, H, W)

    def _correlated(self, index: torch.Tensor) -> torch.Tensor:
        """The on-demand taps (B*H, W, T): each row's left pixels against the looked-up pixels of
        its row of the pooled table (every tap lies in the row, the zero columns included), tap
        by tap by :mod:`.pyramid`'s windowed correlation. (Correlating a row whole, then picking
        its taps, was slower at every size measured, down to 3 pixels of the row per tap:
        C256, one thread, 11 against 9 ms at W=32, 75 against 11 ms at W=736.)"""
        rows1, table = self._rows1, self._table
        assert rows1 is not None and table is not None
        if tracing():
            return _traced(rows1, table, index, None, False)
        if needs_grad(rows1, table):
            return _Windows.apply(rows1, table, index)
        return _eager(rows1, table, index, None, False)


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
        """Where a lookup at ``x`` (P,) reads: the column in the row of each level's first tap
        (P, L; its taps are that column and the next ``2r + 1``), and the fractional offset of
        the level's samples from their left taps (P, L), differentiable in ``x``. A position so
        far out of its level that every tap is outside (beyond ``r + 1`` pixels left, ``r``
        right) is clamped to the nearest such one: it reads zeros still, within the row."""
        at = torch.clamp(x.unsqueeze(-1) * self.scale, self.lower, self.upper)
        left = at.detach().floor()
        # (NaN positions: their columns clamped into the row; their samples NaN, from frac.)
        first = (left + self.offsets).long().clamp_(0, self.row - self.steps.numel())
        return first, at - left


def _blend(taps: torch.Tensor, frac: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The samples of the taps (B, H*W, L, n) at ``frac`` (B, H*W, L, 1), written straight into the
    channels of the output (B, L*(n-1), H, W)."""
    B, _, L, n = taps.shape
    out = taps.new_empty(B, L * (n - 1), H, W)
    torch.lerp(taps[..., :-1], taps[..., 1:], frac, out=out.view(B, L, n - 1, H * W).permute(0, 3, 1, 2))
    return out


class _Blend(torch.autograd.Function):
    """:func:`_blend`, differentiable in the taps and in ``frac`` (the latter only computed, and
    the taps only kept, where ``frac`` needs it)."""

    @staticmethod
    def forward(ctx, taps, frac, H, W):
        ctx.save_for_backward(frac, taps if ctx.needs_input_grad[1] else None)
        return _blend(taps, frac, H, W)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        frac, taps = ctx.saved_tensors
        B, HW, L, _ = frac.shape
        g = g.reshape(B, L, -1, HW).permute(0, 3, 1, 2)  # (B, H*W, L, n-1), as the taps lie
        g_taps = g_frac = None
        if ctx.needs_input_grad[0]:
            # Tap k gets (1 - frac) of sample k and frac of sample k - 1: one blend of the
            # samples' gradients, zero-extended on both sides (a third of the time of the
            # products and sums written out).
            extended = F.pad(g, (1, 1))
            g_taps = torch.lerp(extended[..., 1:], extended[..., :-1], frac)
        if ctx.needs_input_grad[1]:
            g_frac = (g * (taps[..., 1:] - taps[..., :-1])).sum(-1, keepdim=True)
        return g_taps, g_frac, None, None


def _windows(volume: torch.Tensor, first: torch.Tensor, n: int, gradient: _Gradient) -> torch.Tensor:
    """The ``n`` consecutive values of ``volume`` (contiguous) from each flat index of ``first``
    (F,): (F, n)."""
    if tracing():  # plain operations, which autograd differentiates
        index = first.unsqueeze(-1) + torch.arange(n, device=first.device)
        return volume.reshape(-1)[index]
    if needs_grad(volume):
        return _Windows1D.apply(volume, first, n, gradient)
    # Rows of an overlapping view, copied whole: twice as fast as a gather of every tap.
    return volume.view(-1).unfold(0, n, 1).index_select(0, first)


class _Gradient:
    """The gradient of an all-pairs pyramid's volume, one for all its lookups: their backward
    passes add their taps' gradients into it, and the volume's backward pass, which autograd runs
    after every lookup's that leads to it, takes it. Each lookup's own zeros of the volume's
    size, summed by autograd, took a third of a training step's time (RAFT-Stereo's: 12
    lookups, B2, 80x184, one thread)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def add(self, first: torch.Tensor, grads: torch.Tensor, shape: torch.Size) -> None:
        """Add ``grads`` (F, n) at the windows from each flat index of ``first`` (F,) of a
        volume of ``shape``."""
        if self.buffer is None:
            self.buffer = SPARES.take(tuple(shape), grads.dtype, grads.device).zero_()
        # Each pixel's windows lie in its own row of the volume: a scatter along the rows runs
        # on every core, where one over the flat volume ran on one (2.2 times the time, 2 cores).
        row = shape[-1]
        pixels = self.buffer.numel() // row
        columns = first.view(pixels, -1) - torch.arange(0, pixels * row, row, device=first.device).unsqueeze(-1)
        index = (columns.unsqueeze(-1) + torch.arange(grads.shape[-1], device=first.device)).view(pixels, -1)
        self.buffer.view(pixels, row).scatter_add_(1, index, grads.reshape(pixels, -1))

    def take(self) -> torch.Tensor | None:
        buffer, self.buffer = self.buffer, None
        return buffer


class _Windows1D(torch.autograd.Function):
    """:func:`_windows` from the volume, whose backward pass adds the windows' gradients into the
    pyramid's :class:`_Gradient` and hands autograd none: the volume's backward pass reads them
    there. (A lookup's only edge is to the volume, so autograd runs its backward pass only where
    it runs the volume's.)"""

    @staticmethod
    def forward(ctx, volume, first, n, gradient):
        ctx.save_for_backward(first)
        ctx.shape, ctx.gradient = volume.shape, gradient
        return volume.view(-1).unfold(0, n, 1).index_select(0, first)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (first,) = ctx.saved_tensors
        ctx.gradient.add(first, g, ctx.shape)
        return None, None, None, None


def _pooled_table(right: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``right`` pooled along its rows into every level, as a table of pixel rows per image row
    (B*H, row, C): row ``h`` of item ``b``'s levels side by side as the layout places them, zeros
    between."""
    B, C, H, _ = right.shape
    table = right.new_zeros(B, H, layout.row, C)
    level = right
    for index, (start, width) in enumerate(zip(layout.starts, layout.widths)):
        if index:
            level = F.avg_pool2d(level, (1, 2), stride=(1, 2))
        table[:, :, start : start + width] = level.permute(0, 2, 3, 1)
    return table.view(B * H, layout.row, C)


def _volume(left: torch.Tensor, right: torch.Tensor, layout: _Layout, gradient: _Gradient) -> torch.Tensor:
    """Every level's all-pairs volume (B*H*W, row): row ``(b, h, w)`` holds pixel ``w`` of row ``h``
    of ``left`` against each level's pixels of that row of ``right``, over ``sqrt(C)``, placed as
    the layout says."""
    if tracing():  # plain operations, which autograd differentiates
        scale = 1.0 / math.sqrt(left.shape[1])
        level = torch.matmul(left.permute(0, 2, 3, 1), right.permute(0, 2, 1, 3)) * scale
        zeros = level.new_zeros(*level.shape[:-1], layout.starts[0])
        pieces = [zeros, level, zeros]
        for width in layout.widths[1:]:
            level = (level[..., 0 : 2 * width : 2] + level[..., 1 : 2 * width : 2]) * 0.5
            pieces += [level, zeros]
        return torch.cat(pieces, dim=-1).reshape(-1, layout.row)
    if needs_grad(left, right):
        return _Volume.apply(left, right, layout, gradient)
    return _pooled_volume(left, right, layout)


def _pooled_volume(left: torch.Tensor, right: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """:func:`_volume` in eager mode: level 0 by one batched matrix product per item over its
    rows, read from the (B, C, H, W) maps as they lie (a row of either is a matrix of C by W
    with a leading dimension of H*W: no copy), then each further level pooled from the one
    before into its columns."""
    B, C, H, W = left.shape
    pad = layout.starts[0]
    volume = SPARES.take((B * H * W, layout.row), left.dtype, left.device)
    out = volume.view(B, H, W, layout.row)
    for b in range(B):
        # (A matrix product written into a strided slice of out took 15 times as long.)
        product = torch.bmm(left[b].permute(1, 2, 0), right[b].permute(1, 0, 2))
        torch.mul(product, 1.0 / math.sqrt(C), out=out[b, ..., pad : pad + W])
    for start in (*layout.starts, layout.row):  # the columns of zeros before each level, and after
        out[..., start - pad : start].zero_()
    for finer, (start, width) in zip(layout.starts, zip(layout.starts[1:], layout.widths[1:])):
        pairs = out[..., finer : finer + 2 * width]
        torch.add(pairs[..., 0::2], pairs[..., 1::2], out=out[..., start : start + width]).mul_(0.5)
    return volume


class _Volume(torch.autograd.Function):
    """:func:`_pooled_volume` with a backward pass that takes the gradient all the lookups have
    added up (:class:`_Gradient`), spreads each level's back onto level 0 (coarsest first, each
    level's half onto the two pixels it averages) and then takes two batched matrix products per
    item: every lookup's gradient reaches the features at once."""

    @staticmethod
    def forward(ctx, left, right, layout, gradient):
        ctx.save_for_backward(left, right)
        ctx.layout, ctx.gradient = layout, gradient
        ctx.set_materialize_grads(False)  # the lookups hand autograd no gradient
        return _pooled_volume(left, right, layout)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        left, right = ctx.saved_tensors
        starts, widths = ctx.layout.starts, ctx.layout.widths
        B, C, H, W = left.shape
        added = ctx.gradient.take()
        if g is None and added is None:
            return None, None, None, None
        # The lookups' sum is ours to change in place; autograd's gradient is not.
        summed = added if g is None else (g.clone() if added is None else added.add_(g))
        g = summed.view(B, H, W, -1)
        for level in reversed(range(len(widths) - 1)):
            start, coarser = starts[level], widths[level + 1]
            pairs = g[..., start : start + 2 * coarser].unflatten(-1, (coarser, 2))
            pairs.add_(g[..., starts[level + 1] : starts[level + 1] + coarser].unsqueeze(-1), alpha=0.5)
        spread = g[..., starts[0] : starts[0] + widths[0]]
        # Per item and row, (C, W) = right's (C, W2) @ spread's (W2, W1), and left's likewise, made
        # as (B, H, C, W) and handed back as a (B, C, H, W) view of it.
        grads = []
        for need, other, volume in ((0, right, spread.transpose(-1, -2)), (1, left, spread)):
            if not ctx.needs_input_grad[need]:
                grads.append(None)
                continue
            grad = left.new_empty(B, H, C, W)
            for b in range(B):
                torch.bmm(other[b].permute(1, 0, 2), volume[b], out=grad[b])
            grads.append(grad.mul_(1.0 / math.sqrt(C)).transpose(1, 2))
        SPARES.give([summed])  # for the next backward pass of this shape
        return grads[0], grads[1], None, None
