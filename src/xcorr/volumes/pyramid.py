"""RAFT's correlation pyramid, exact, differentiable and memory-light when it has to be.

:class:`CorrPyramid` computes what RAFT's ``CorrBlock`` computes (princeton-vl/RAFT,
``core/corr.py``): the all-pairs correlation of two feature maps divided by ``sqrt(C)``, average
pooled over the second map's pixels into levels, and looked up in a ``(2r+1) x (2r+1)`` window
around a pixel position per pixel of the first map, bilinearly, with zeros outside the level.

Two facts make it cheap. Pooling and sampling are linear in ``f2``, so the level-``l`` volume is
``f1`` against ``f2`` pooled ``l`` times: the pyramid pools the features, never a volume. And
the samples of one window share their fractional offset, so a window is a bilinear blend of the
``(2r+2)**2`` integer taps around it: each lookup reads ``(2r+2)**2`` correlations per level, not
``4 (2r+1)**2``, and those taps are what :class:`_Windows` computes, forward and backward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._compute import compute_dtype, empty_result, needs_grad
from .._tracing import tracing
from ..planning.engine import ENGINE, signature
from .family import pyramid_level_dense
from .spec import PyramidSpec, check_corr_coords, check_corr_pyramid

#: The bytes that the temporaries of one chunk of an on-demand lookup, and of every backward pass,
#: may take (the gathered windows, pixels x taps x C, or a chunk of one level's scores, pixels x
#: level pixels).
#: 8 MiB keeps a chunk in cache: 64-pixel chunks of 100 taps x 256 channels (6.5 MB) took a third
#: of the time of 1024-pixel ones (RAFT's level 0 at 46x62, 2-core AVX2 CPU).
CHUNK_BYTES = 8 << 20


def _method(f1: torch.Tensor, f2: torch.Tensor, num_levels: int, radius: int, method: str) -> str:
    """The validated arguments' method, ``"auto"`` decided by the planning engine."""
    method = check_corr_pyramid(f1, f2, num_levels, radius, method)
    if method != "auto":
        return method
    return ENGINE.decide(PyramidSpec(tuple(f1.shape), num_levels, radius, compute_dtype(f1.dtype), f1.device))


class CorrPyramid:
    r"""RAFT's correlation pyramid of ``f1`` against ``f2``, looked up with ``pyr(coords)``.

    Level ``l`` (``0 <= l < num_levels``) is the correlation of ``f1`` with ``f2`` average pooled
    ``l`` times (2x2, stride 2, sizes rounded down, as ``F.avg_pool2d``), divided by
    ``sqrt(C)``. ``pyr(coords)`` samples each level around ``coords / 2**l``:

    ``out[b, l*K*K + i*K + j, y, x] = sum_c f1[b, c, y, x] * S(P_l f2[b, c], X/2**l + i - r, Y/2**l + j - r) / sqrt(C)``

    with ``K = 2r + 1``, ``(X, Y) = coords[b, :, y, x]`` and ``S(img, px, py)`` the bilinear
    sample at pixel position ``(px, py)``, zero outside the image
    (``F.grid_sample(..., align_corners=True)`` as RAFT calls it). The channels are RAFT's order:
    the level, then the window's **x** offset ``i - r`` (the major index), then its y offset
    ``j - r``. A level one pixel wide or high is sampled by the same rule (RAFT divides by
    zero there).

    Args:
        f1 (Tensor[B, C, H, W]): features of the first image.
        f2 (Tensor[B, C, H, W]): features of the second image (same shape, dtype, device).
        num_levels (int): pyramid levels; ``H`` and ``W`` must be at least ``2**(num_levels-1)``.
        radius (int): the window's radius ``r``.
        method (str): ``"all_pairs"`` builds every level's volume once (``B*H*W`` by ``H_l*W_l``
            values: one matrix product per level; lookups then only read it), the right choice
            while it fits in memory; ``"on_demand"`` keeps only the pooled features and
            correlates the looked-up windows at each lookup, in chunks of
            :data:`~xcorr.volumes.pyramid.CHUNK_BYTES` (RAFT's ``AlternateCorrBlock``, in plain PyTorch, any dtype:
            at 136x240 its peak memory is a small fraction of the 5.7 GB of the volumes);
            ``"auto"`` (default) asks the planning engine, which takes the volumes while they
            fit :data:`xcorr.volumes.family.PYRAMID_VOLUME_BYTES`.

    Lookups return float32 for float16, bfloat16 and float32 features (half precision is
    computed in float32, as RAFT's ``.float()`` returns it) and float64 for float64 ones;
    ``coords`` (any floating dtype) are used in that dtype. Lookups are differentiable in ``f1``,
    ``f2`` and ``coords`` (the bilinear weights' derivative, as ``grid_sample``'s); the backward
    pass correlates the windows again rather than holding a volume's gradient. ``f1`` and ``f2``
    are never modified. Tracing (``torch.compile``, ONNX export with a dynamic batch) runs one
    chunk of plain operations.

    Example:
        >>> f1, f2 = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
        >>> pyr = xcorr.CorrPyramid(f1, f2, num_levels=2, radius=1)
        >>> ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        >>> out = pyr(torch.stack([xs, ys])[None])  # every pixel at its own position
        >>> out.shape
        torch.Size([1, 18, 16, 16])
        >>> # channel 4 = level 0, x offset 0, y offset 0: f1 . f2 at the same pixel / sqrt(C)
        >>> torch.allclose(out[:, 4], (f1 * f2).sum(1) / 8**0.5, atol=1e-6)
        True
    """

    def __init__(
        self, f1: torch.Tensor, f2: torch.Tensor, num_levels: int = 4, radius: int = 4, *, method: str = "auto"
    ) -> None:
        self.method = ENGINE.cached(
            signature("CorrPyramid", (f1, f2), (num_levels, radius, method)),
            lambda: _method(f1, f2, num_levels, radius, method),
        )
        self.num_levels, self.radius = num_levels, radius
        self.shape = tuple(f1.shape)
        self.dtype = compute_dtype(f1.dtype)
        B, C, H, W = self.shape
        f1c, f2c = f1.to(self.dtype), f2.to(self.dtype)
        self._empty = (f1c, f2c) if B == 0 else None
        # f1's pixels as rows (B, H*W, C), the 1/sqrt(C) folded in; -1 keeps the batch symbolic.
        self._rows1 = _scaled_rows(f1c, 1.0 / math.sqrt(C))
        all_pairs = self.method == "all_pairs" and B > 0
        self._levels = [
            _Level(size, table, _level_volume(self._rows1, table, size[0] * size[1]) if all_pairs else None)
            for size, table in _pooled_tables(f2c, num_levels)
        ]

    def __repr__(self) -> str:
        return (
            f"CorrPyramid(shape={self.shape}, num_levels={self.num_levels}, radius={self.radius}, "
            f"method={self.method!r})"
        )

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """Look the pyramid up around ``coords``.

        Args:
            coords (Tensor[B, 2, H, W]): for every pixel of ``f1``, a position in ``f2`` in
                pixels, channels (x, y) (RAFT's ``coords1``).

        Returns:
            Tensor[B, num_levels*(2r+1)**2, H, W], float32 (float64 for float64 features).
        """
        B, C, H, W = self.shape
        check_corr_coords(coords, self.shape, self._rows1.device)
        window = (2 * self.radius + 1) ** 2
        if self._empty is not None:
            return empty_result((0, self.num_levels * window, H, W), *self._empty, coords)
        xy = coords.to(self.dtype).reshape(-1, 2, H * W)
        if tracing():
            levels = [
                _lookup(self._rows1, level, xy, index, self.radius, False) for index, level in enumerate(self._levels)
            ]
            traced = torch.cat(levels, dim=1) if len(levels) > 1 else levels[0]
            return traced.reshape(-1, self.num_levels * window, H, W).contiguous()
        grad = needs_grad(self._rows1, self._levels[0].table)
        # Eager lookups write each level into the output, holding no level's result besides.
        out = xy.new_empty(B, self.num_levels * window, H, W)
        for index, level in enumerate(self._levels):
            samples = _lookup(self._rows1, level, xy, index, self.radius, grad)
            out[:, index * window : (index + 1) * window].copy_(samples.reshape(B, window, H, W))
        return out


class _Level(NamedTuple):
    """One level of the pyramid: its size, ``f2`` pooled to it as a table of pixel rows with a
    last row of zeros that stands for "outside" (B*Hl*Wl + 1, C), and its volume against ``f1``
    (B, H*W, Hl*Wl) where the volumes are built."""

    size: tuple[int, int]
    table: torch.Tensor
    volume: torch.Tensor | None


def _pooled_tables(f2: torch.Tensor, num_levels: int) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """Each level's size and table (see :class:`_Level`): ``f2`` average pooled ``l`` times."""
    C = f2.shape[1]
    level, tables = f2, []
    for index in range(num_levels):
        if index:
            level = F.avg_pool2d(level, 2, stride=2)
        rows = level.permute(0, 2, 3, 1).reshape(-1, C)
        tables.append(((level.shape[-2], level.shape[-1]), torch.cat([rows, rows.new_zeros(1, C)])))
    return tables


def _level_volume(rows1: torch.Tensor, table: torch.Tensor, pixels: int) -> torch.Tensor:
    """The correlations (B, H*W, pixels) of ``f1``'s rows with every pixel of one level's table."""
    level = table[:-1].reshape(-1, pixels, table.shape[1])
    if tracing():
        # Plain operations: autograd differentiates the gathers from it.
        return torch.bmm(rows1, level.transpose(1, 2))
    with torch.no_grad():  # the backward pass of _Windows does not need it
        return torch.bmm(rows1, level.transpose(1, 2))


def _lookup(rows1: torch.Tensor, level: _Level, xy: torch.Tensor, index: int, radius: int, grad: bool) -> torch.Tensor:
    """The window samples (B, (2r+1)**2, P) of level ``index`` around ``xy / 2**index`` (B, 2, P)."""
    (Hl, Wl), table, volume = level
    n = 2 * radius + 2
    # Far outside, every tap is outside: clamping there keeps the integer taps small without
    # changing a value (nor a gradient: it is zero there).
    x = (xy[:, 0] / 2**index).clamp(-(radius + 2), Wl + radius + 1)
    y = (xy[:, 1] / 2**index).clamp(-(radius + 2), Hl + radius + 1)
    x0, y0 = x.floor(), y.floor()
    local, valid = _taps(x0.long() - radius, y0.long() - radius, Hl, Wl, n)
    # With the volumes built, the backward pass is dense too: per chunk of pixels, the taps'
    # gradient scattered into a row of scores and two matrix products (RAFT's level 0 at 46x62:
    # a third of the time of the windows' gathers and scattered adds).
    dense = volume is not None or pyramid_level_dense(Hl * Wl, radius)
    if grad:
        taps = _Windows.apply(rows1, table, local, valid, volume, dense, (Hl, Wl))
    elif tracing():
        taps = _traced(rows1, table, local, valid, volume, dense, Hl * Wl)
    else:
        taps = _eager(rows1, table, local, valid, volume, dense, Hl * Wl)
    return _blend(taps, x - x0, y - y0, n).reshape(-1, xy.shape[-1], (n - 1) ** 2).transpose(1, 2)


def _scaled_rows(f1: torch.Tensor, scale: float) -> torch.Tensor:
    """``f1 * scale`` as pixel rows (B, H*W, C), contiguous, made in one pass (in eager mode)."""
    B, C, H, W = f1.shape
    if tracing() or needs_grad(f1):  # (out= is not differentiable)
        return (f1 * scale).permute(0, 2, 3, 1).reshape(-1, H * W, C).contiguous()
    rows = f1.new_empty(B, H, W, C)
    torch.mul(f1.permute(0, 2, 3, 1), scale, out=rows)
    return rows.view(B, H * W, C)


def _taps(x: torch.Tensor, y: torch.Tensor, H: int, W: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n x n`` integer taps from ``(x, y)`` (B, P) of a level of ``H x W`` pixels: their
    pixel indices in the level, clamped inside it, and whether they lie inside; (B, P, n*n) each,
    tap ``a*n + b`` at ``(x + a, y + b)`` (x major, as the output's channels)."""
    steps = torch.arange(n, device=x.device)
    cols, rows = x.unsqueeze(-1) + steps, y.unsqueeze(-1) + steps
    valid = ((cols >= 0) & (cols < W)).unsqueeze(-1) & ((rows >= 0) & (rows < H)).unsqueeze(-2)
    local = cols.clamp(0, W - 1).unsqueeze(-1) + rows.clamp(0, H - 1).unsqueeze(-2) * W
    return local.flatten(-2), valid.flatten(-2)


def _blend(taps: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, n: int) -> torch.Tensor:
    """The window's bilinear samples (B, P, n-1, n-1) from its integer taps (B, P, n*n), every
    sample at fractional offset ``(fx, fy)`` (B, P) from its top-left tap."""
    d = taps.unflatten(-1, (n, n))
    fx, fy = fx[..., None, None], fy[..., None, None]
    across = d[..., :-1, :] + (d[..., 1:, :] - d[..., :-1, :]) * fx
    return across[..., :-1] + (across[..., 1:] - across[..., :-1]) * fy


def _rows_index(local: torch.Tensor, valid: torch.Tensor, pixels: int, table: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` (all items' level pixels, then the zero row) that the taps read."""
    offsets = torch.arange(local.shape[0], device=local.device).view(-1, 1, 1) * pixels
    return (local + offsets).masked_fill_(~valid, table.shape[0] - 1)


def _chunk(per_pixel: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // (per_pixel * itemsize))


def _traced(rows1, table, local, valid, volume, dense, pixels) -> torch.Tensor:
    """The taps in plain operations, one chunk: what a tracer records, autograd differentiates."""
    if volume is None and dense:
        volume = torch.bmm(rows1, table[:-1].reshape(-1, pixels, table.shape[1]).transpose(1, 2))
    if volume is not None:
        return volume.gather(2, local) * valid
    # The clamped taps inside the level, then masked: no index depends on the (symbolic) batch.
    offsets = torch.arange(local.shape[0], device=local.device).view(-1, 1, 1) * pixels
    return (table[local + offsets] * rows1.unsqueeze(2)).sum(-1) * valid


def _eager(rows1, table, local, valid, volume, dense, pixels) -> torch.Tensor:
    """The taps (B, P, T) in chunks under :data:`CHUNK_BYTES`: read from the volume, or
    correlated window by window, or a chunk of pixels against the whole level (``dense``)."""
    if volume is not None:
        return volume.gather(2, local).masked_fill_(~valid, 0)
    B, P, C = rows1.shape
    T = local.shape[-1]
    if dense:
        level = table[:-1].view(B, pixels, C)
        out = rows1.new_empty(B, P, T)
        step = _chunk(pixels, rows1.element_size())
        for b in range(B):
            for s in range(0, P, step):
                scores = torch.mm(rows1[b, s : s + step], level[b].t())
                torch.gather(scores, 1, local[b, s : s + step], out=out[b, s : s + step])
        return out.masked_fill_(~valid, 0)
    index = _rows_index(local, valid, pixels, table).view(-1, T)
    flat = rows1.reshape(-1, C)
    out = rows1.new_empty(B * P, T)
    step = _chunk(T * C, rows1.element_size())
    for s in range(0, B * P, step):
        picked = table.index_select(0, index[s : s + step].reshape(-1)).view(-1, T, C)
        # Batched matrix-vector products: no (pixels, T, C) product is written and read again.
        torch.bmm(picked, flat[s : s + step].unsqueeze(-1), out=out[s : s + step].unsqueeze(-1))
    return out.view(B, P, T)


class _Windows(torch.autograd.Function):
    """The integer taps (B, P, T) of ``rows1`` (B, P, C) against ``table``'s rows, with a
    backward pass made of the same windowed (or per-level dense) correlations, in chunks: no
    volume-sized gradient is ever made."""

    @staticmethod
    def forward(ctx, rows1, table, local, valid, volume, dense, size):
        ctx.save_for_backward(rows1, table, local, valid)
        ctx.dense, ctx.pixels = dense, size[0] * size[1]
        return _eager(rows1, table, local, valid, volume, dense, ctx.pixels)

    @staticmethod
    def backward(ctx, g):
        rows1, table, local, valid = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        B, P, C = rows1.shape
        T, pixels = local.shape[-1], ctx.pixels
        g = g.masked_fill(~valid, 0)
        g1 = torch.empty_like(rows1) if need1 else None
        gt = torch.zeros_like(table) if need2 else None
        if ctx.dense:
            level = table[:-1].view(B, pixels, C)
            step = _chunk(pixels, rows1.element_size())
            for b in range(B):
                for s in range(0, P, step):
                    e = slice(s, s + step)
                    scores = rows1.new_zeros(g[b, e].shape[0], pixels).scatter_add_(1, local[b, e], g[b, e])
                    if g1 is not None:
                        torch.mm(scores, level[b], out=g1[b, e])
                    if gt is not None:
                        gt[:-1].view(B, pixels, C)[b].addmm_(scores.t(), rows1[b, e])
            return g1, gt, None, None, None, None, None
        index = _rows_index(local, valid, pixels, table).view(-1, T)
        flat, g = rows1.reshape(-1, C), g.reshape(-1, T)
        g1_flat = g1.view(-1, C) if g1 is not None else None
        step = _chunk(T * C, rows1.element_size())
        for s in range(0, B * P, step):
            e = slice(s, s + step)
            rows = index[e].reshape(-1)
            if g1_flat is not None:
                picked = table.index_select(0, rows).view(-1, T, C)
                torch.bmm(g[e].unsqueeze(1), picked, out=g1_flat[e].unsqueeze(1))
            if gt is not None:
                gt.index_add_(0, rows, (g[e].unsqueeze(-1) * flat[e].unsqueeze(1)).view(-1, C))
        return g1, gt, None, None, None, None, None
