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
import warnings
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._compute import compute_dtype, empty_result, needs_grad
from .._spares import SPARES
from .._tracing import tracing
from ..planning.engine import ENGINE, signature
from .family import PYRAMID_KEPT_BYTES, PYRAMIDS, pyramid_gradient_dense, pyramid_level_dense
from .spec import PyramidSpec, check_corr_coords, check_corr_pyramid

#: The bytes that the temporaries of one chunk of an on-demand lookup, and of every backward pass,
#: may take (the gathered windows, pixels x taps x C, or a chunk of one level's scores, pixels x
#: level pixels).
#: 8 MiB keeps a chunk in cache: 64-pixel chunks of 100 taps x 256 channels (6.5 MB) took a third
#: of the time of 1024-pixel ones (RAFT's level 0 at 46x62, 2-core AVX2 CPU).
CHUNK_BYTES = 8 << 20

#: A level's table has a multiple of this many rows (its pixels, then at least one row of zeros):
#: volumes with rows of 2856 floats took 0.7 of the time of rows of 2853 (RAFT's level 0 at
#: 46x62 and its zero row, 2-core AVX2 CPU).
TABLE_ROWS_MULTIPLE = 16


def _method(f1: torch.Tensor, f2: torch.Tensor, num_levels: int, radius: int, method: str, once: bool) -> str:
    """The validated arguments' method, ``"auto"`` decided by the planning engine (for one lookup
    where ``once``)."""
    method = check_corr_pyramid(f1, f2, num_levels, radius, method)
    if method != "auto":
        return method
    spec = PyramidSpec(tuple(f1.shape), num_levels, radius, compute_dtype(f1.dtype), f1.device, once)
    return ENGINE.decide(spec, needs_grad(f1, f2))


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
            at 136x240 its peak memory is a small fraction of the 5.7 GB of the volumes), except
            that lookups without a graph read the coarse levels whose volumes fit
            :data:`~xcorr.volumes.family.PYRAMID_KEPT_BYTES` from those volumes, made at the
            first such lookup;
            ``"auto"`` (default) asks the planning engine, which takes the volumes while they
            fit :data:`xcorr.volumes.family.PYRAMID_VOLUME_BYTES`, except where the last pyramid
            of the same shapes and settings was looked up only once: then on demand does a
            fraction of the work (RAFT's 46x62: about 0.3 of the volumes' time, forward and
            backward), until a pyramid is looked up more than once again.

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
        # The call's signature also keys the lookups seen: RAFT builds a pyramid per image pair and
        # looks it up per iteration, so the last one's lookups say how the next one is used.
        self._signature = signature("CorrPyramid", (f1, f2), (num_levels, radius, method))
        self._lookups = 0
        once = PYRAMIDS.looked_up_once(self._signature)
        self.method = ENGINE.cached(
            self._signature and (*self._signature, once),
            lambda: _method(f1, f2, num_levels, radius, method, once),
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
        self._levels: list[_Level] = []
        for size, table in _pooled_tables(f2c, num_levels):
            volume = None
            if all_pairs:
                below = self._levels[-1] if self._levels else None
                margin = 2 * radius + 2
                volume = (
                    _level_volume(self._rows1, table, margin)
                    if below is None
                    else _pooled_volume(below, size, table, margin)
                )
            self._levels.append(_Level(size, table, volume, volume is None or tracing() or _finite(volume)))
        if all_pairs and not tracing():
            _give_back(self, self._levels)
        # Where the lookups of one backward pass sum their taps' gradient (see _Scores): one for
        # every level, with the volumes built; else one per level.
        self._scores: list[_Scores | None] = [None] * num_levels
        # On demand, the coarse levels whose volumes are kept (see _kept_levels), by index.
        self._kept: dict[int, _Level] | None = None

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
        if self._signature is not None:
            self._lookups += 1
            PYRAMIDS.looked_up(self._signature, self._lookups)
        window = (2 * self.radius + 1) ** 2
        if self._empty is not None:
            return empty_result((0, self.num_levels * window, H, W), *self._empty, coords)
        xy = coords.to(self.dtype).reshape(-1, 2, H * W)
        grad = not tracing() and needs_grad(self._rows1, self._levels[0].table)
        if tracing() or (torch.is_grad_enabled() and (grad or needs_grad(xy))):
            levels = [
                _lookup(self._rows1, level, xy, index, self.radius, grad and self._sink(index))
                for index, level in enumerate(self._levels)
            ]
            # One concatenation, whose backward pass slices the gradient (copies into slices of
            # one output would clone the whole gradient once per level); each level's samples
            # (B, P, rows, columns) to the channels' order (columns major).
            K = 2 * self.radius + 1
            out = torch.cat([t.view(-1, H * W, K, K).permute(0, 3, 2, 1) for t in levels], dim=1)
            return out.view(-1, self.num_levels * window, H, W)
        # Without a graph, each level's blend writes its channels of the output (transposed as
        # it goes: 0.4 of the time of a blend and then a copy).
        out = xy.new_empty(B, self.num_levels * window, H * W)
        kept = self._levels if self._levels[0].volume is not None else self._kept_levels()
        # The levels with volumes (every level, or the coarse ones kept) in one pass of each step.
        first = next((index for index, level in enumerate(kept) if level.volume is not None), len(kept))
        for index, level in enumerate(kept[:first]):
            into = out[:, index * window : (index + 1) * window]
            _lookup(self._rows1, level, xy, index, self.radius, False, into)
        if first < len(kept):
            _sampled_volumes(kept[first:], first, xy, self.radius, out)
        return out.view(B, self.num_levels * window, H, W)

    def _kept_levels(self) -> list[_Level]:
        """On demand, the levels for a lookup without a graph: the coarse ones whose volumes
        fit :data:`~xcorr.volumes.family.PYRAMID_KEPT_BYTES` in all (coarsest first, never level
        0) with their volume, made at the first such lookup and kept; the others as they are."""
        if self._kept is None:
            self._kept = {}
            left = PYRAMID_KEPT_BYTES
            B, P, _ = self._rows1.shape
            for index in range(self.num_levels - 1, 0, -1):
                level = self._levels[index]
                size = B * P * level.table.shape[1] * self._rows1.element_size()
                if size > left:
                    break
                left -= size
                volume = _level_volume(self._rows1, level.table, 2 * self.radius + 2)
                self._kept[index] = level._replace(volume=volume, finite=_finite(volume))
            if self._kept:
                _give_back(self, list(self._kept.values()))
        return [self._kept.get(index, level) for index, level in enumerate(self._levels)]

    def _sink(self, index: int) -> tuple[_Scores, int] | None:
        """The current :class:`_Scores` of level ``index`` (made anew after a backward pass
        consumed it) and the level's place in it, or ``None`` where each lookup's backward pass
        correlates its windows."""
        if self._levels[0].volume is not None:  # every level's volume pooled from level 0's
            levels, place, key = self._levels, index, 0
        else:
            level = self._levels[index]
            table = level.table
            pixels = self._rows1.shape[0] * self._rows1.shape[1]
            if not _dense(level, self.radius) and not pyramid_gradient_dense(
                pixels, table.shape[1], table.element_size()
            ):
                return None
            levels, place, key = [level], 0, index
        scores = self._scores[key]
        if scores is None or scores.consumed:
            scores = self._scores[key] = _Scores(self._rows1, levels, self.radius)
        return scores, place


class _Level(NamedTuple):
    """One level of the pyramid: its size, ``f2`` pooled to it as a table of pixel rows per item
    (B, R, C), rows ``Hl*Wl`` on zeros (the first stands for "outside"; ``R`` is a multiple of
    :data:`TABLE_ROWS_MULTIPLE`), where the volumes are built, its volume against ``f1``
    (B, H*W, R), and whether every score of the volume is finite (see :func:`_runs`)."""

    size: tuple[int, int]
    table: torch.Tensor
    volume: torch.Tensor | None
    finite: bool = True


def _give_back(pyramid: object, levels: list[_Level]) -> None:
    """Hand the buffers of the ``levels``' volumes (:func:`_volume_buffer`'s) to the spares when
    ``pyramid`` is collected: the next pyramid of its shape (RAFT's next image pair) makes its
    volumes in them."""
    buffers = [level.volume._base for level in levels if level.volume is not None]
    weakref.finalize(pyramid, SPARES.give, [buffer for buffer in buffers if buffer is not None])


def _finite(volume: torch.Tensor) -> bool:
    """Whether every score of ``volume`` is finite (one pass: its least and greatest, which a NaN
    makes NaN)."""
    low, high = torch.aminmax(volume)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _pooled_tables(f2: torch.Tensor, num_levels: int) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """Each level's size and table (see :class:`_Level`): ``f2`` average pooled ``l`` times."""
    C = f2.shape[1]
    level, tables = f2, []
    for index in range(num_levels):
        if index:
            level = F.avg_pool2d(level, 2, stride=2)
        pixels = level.shape[-2] * level.shape[-1]
        rows = level.permute(0, 2, 3, 1).reshape(-1, pixels, C)
        zeros = TABLE_ROWS_MULTIPLE - pixels % TABLE_ROWS_MULTIPLE
        tables.append(((level.shape[-2], level.shape[-1]), F.pad(rows, (0, 0, 0, zeros))))
    return tables


def _pooled_volume(below: _Level, size: tuple[int, int], table: torch.Tensor, margin: int) -> torch.Tensor:
    """A level's volume (B, H*W, R) from the volume of the level below it, average pooled 2x2
    (as its table is): a quarter of the matrix product's time read from memory instead. In eager
    mode, in a buffer with ``margin`` more scores before and after it (see :func:`_volume_buffer`)."""
    (Hb, Wb), (Hl, Wl) = below.size, size
    assert below.volume is not None
    B, P, _ = below.volume.shape
    if tracing():
        image = below.volume[..., : Hb * Wb].reshape(B * P, 1, Hb, Wb)
        pooled = F.avg_pool2d(image, 2, stride=2).reshape(B, P, Hl * Wl)
        return F.pad(pooled, (0, table.shape[1] - Hl * Wl))
    out = _volume_buffer((B, P, table.shape[1]), below.volume, margin)
    out[..., Hl * Wl :] = 0
    # Row pairs first, into a buffer, then column pairs: each add reads runs of memory (the four
    # corners' stride-2 views, added one by one, took 3x as long: RAFT's level 1 at 46x62).
    pairs = _pairs(below.volume, below.size, size)
    rows = SPARES.take((B, P, Hl, 2 * Wl), below.volume.dtype, below.volume.device)
    torch.add(pairs[..., 0, :], pairs[..., 1, :], out=rows)
    columns = rows.unflatten(-1, (Wl, 2))
    pooled = out[..., : Hl * Wl].view(B, P, Hl, Wl)
    torch.add(columns[..., 0], columns[..., 1], out=pooled).mul_(0.25)
    SPARES.give([rows])
    return out


def _pairs(volume: torch.Tensor, below: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The view (B, P, Hl, 2, 2*Wl) of a volume's (B, P, R) scores at the level below whose 2x2
    averages make a level of ``size``: each pixel's two rows, and its columns in pairs."""
    (Hb, Wb), (Hl, Wl) = below, size
    image = volume[..., : Hb * Wb].unflatten(-1, (Hb, Wb))
    return image[..., : 2 * Hl, : 2 * Wl].unflatten(-2, (Hl, 2))


def _level_volume(rows1: torch.Tensor, table: torch.Tensor, margin: int) -> torch.Tensor:
    """The correlations (B, H*W, R) of ``f1``'s rows with every row of one level's table; in
    eager mode, in a buffer with ``margin`` more scores before and after it."""
    if tracing():
        # Plain operations: autograd differentiates the gathers from it.
        return torch.bmm(rows1, table.transpose(1, 2))
    out = _volume_buffer((rows1.shape[0], rows1.shape[1], table.shape[1]), rows1, margin)
    with torch.no_grad():  # the backward pass of _Scores does not need it
        return torch.bmm(rows1, table.transpose(1, 2), out=out)


def _volume_buffer(shape: tuple[int, int, int], like: torch.Tensor, margin: int) -> torch.Tensor:
    """A volume of ``shape`` (its contents arbitrary) in a spare flat buffer, between ``margin``
    zeros before and after it: the runs of a window at a volume's first or last pixel, and of rows
    outside a level (see :func:`_runs`), then lie in the buffer. The buffer is the volume's
    ``_base``."""
    numel = shape[0] * shape[1] * shape[2]
    margin = -(-margin // TABLE_ROWS_MULTIPLE) * TABLE_ROWS_MULTIPLE  # (rows aligned as without it)
    flat = SPARES.take((numel + 2 * margin,), like.dtype, like.device)
    flat[:margin].zero_()
    flat[margin + numel :].zero_()
    return flat[margin : margin + numel].view(shape)


def _lookup(
    rows1: torch.Tensor,
    level: _Level,
    xy: torch.Tensor,
    index: int,
    radius: int,
    grad: bool | tuple[_Scores, int] | None,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """The window samples (B, P, (2r+1)**2) of level ``index`` around ``xy / 2**index`` (B, 2, P).

    ``grad`` is false without a backward pass, the :class:`_Scores` and the level's place in it
    where its taps' gradient is summed densely over the lookups, or ``None`` for a windowed
    backward pass. Without a graph, ``into`` (B, (2r+1)**2, P) receives the samples."""
    (Hl, Wl), table, volume = level.size, level.table, level.volume
    n = 2 * radius + 2
    size = torch.tensor([[Wl], [Hl]], dtype=xy.dtype, device=xy.device)
    xy = _clamped(xy / 2**index if index else xy, size, radius)
    corner = xy.floor()
    fraction = xy - corner
    local = _taps(corner, radius, Hl, Wl, n)
    dense = _dense(level, radius)
    if isinstance(grad, tuple):
        scores, place = grad
        taps = _DenseTaps.apply(scores.token, scores, place, local)
    elif grad is None:
        taps = _Windows.apply(rows1, table, local)
    elif tracing():
        taps = _traced(rows1, table, local, volume, dense)
    else:
        taps = _eager(rows1, table, local, volume, dense)
    return _blend(taps, fraction[:, 0], fraction[:, 1], n, into)


def _clamped(xy: torch.Tensor, size: torch.Tensor, radius: int) -> torch.Tensor:
    """Positions ``xy`` (..., 2, P; x, y) on a level of ``size`` (..., 2, 1: width, height),
    clamped where every tap is outside: far outside, clamping keeps the integer taps small
    without changing a value (nor a gradient: it is zero there)."""
    return torch.minimum(xy.clamp(min=-(radius + 2)), size + (radius + 1.0))


def _dense(level: _Level, radius: int) -> bool:
    """Whether a level's taps are read from a matrix product with the whole level (its volume,
    or per chunk of pixels) rather than correlated window by window."""
    return level.volume is not None or pyramid_level_dense(level.size[0] * level.size[1], radius)


def _scaled_rows(f1: torch.Tensor, scale: float) -> torch.Tensor:
    """``f1 * scale`` as pixel rows (B, H*W, C), contiguous, made in one pass (in eager mode)."""
    B, C, H, W = f1.shape
    if tracing() or needs_grad(f1):  # (out= is not differentiable)
        return (f1 * scale).permute(0, 2, 3, 1).reshape(-1, H * W, C).contiguous()
    rows = f1.new_empty(B, H, W, C)
    torch.mul(f1.permute(0, 2, 3, 1), scale, out=rows)
    return rows.view(B, H * W, C)


def _taps(corner: torch.Tensor, radius: int, H: int, W: int, n: int) -> torch.Tensor:
    """The ``n x n`` integer taps of windows whose sample at offset ``(0, 0)`` lies in the pixel
    ``corner`` (B, 2, P; x, y) of a level of ``H x W`` pixels, as rows of its table (B, P, n*n):
    ``H*W``, the zero row, for a tap outside the level; tap ``b*n + a`` at ``(x - r + a, y - r + b)``
    (rows major, as the level's pixels and :func:`_runs`)."""
    steps = torch.arange(-radius, n - radius, device=corner.device)
    position = corner.long().unsqueeze(-1) + steps  # (B, 2, P, n): columns, then rows
    size = torch.tensor([W, H], device=corner.device).view(2, 1, 1)
    outside = H * W
    # A column or row outside counts ``outside`` alone, so that any sum with it is at least that.
    inside = (position >= 0) & (position < size)
    position = torch.where(inside, position * torch.tensor([1, W], device=corner.device).view(2, 1, 1), outside)
    return (position[:, 1].unsqueeze(-1) + position[:, 0].unsqueeze(-2)).clamp_(max=outside).flatten(-2)


def _sampled_volumes(levels: list[_Level], first: int, xy: torch.Tensor, radius: int, out: torch.Tensor) -> None:
    """Without a graph, the window samples of consecutive ``levels`` with volumes, the first of
    index ``first``, around ``xy / 2**index`` (B, 2, P), written into their channels of ``out``
    (B, num_levels*(2r+1)**2, P). Each step runs once for all of them, the levels stacked on a
    first axis (per level, the same operations: a dozen small ones on (B, P, n) index maps cost
    as much at the coarsest level as at the finest, RAFT's 55x128)."""
    L, (B, _, P) = len(levels), xy.shape
    n, K = 2 * radius + 2, 2 * radius + 1
    device = xy.device
    sizes = torch.tensor([[level.size[1], level.size[0]] for level in levels], device=device)  # (L, 2): W, H
    scale = torch.tensor([2.0**index for index in range(first, first + L)], dtype=xy.dtype, device=device)
    pos = _clamped(xy / scale.view(L, 1, 1, 1), sizes.to(xy.dtype).view(L, 1, 2, 1), radius)
    corner = pos.floor()
    fraction = pos - corner
    taps = _runs(levels, corner, radius, sizes)
    d = taps.view(L, B, P, n, n)
    fx, fy = fraction[:, :, 0].view(L, B, P, 1, 1), fraction[:, :, 1].view(L, B, P, 1, 1)
    # Down the rows first, then across (see _blend); the samples go to the channels, columns major.
    down = torch.lerp(d[..., :-1, :], d[..., 1:, :], fy)
    samples = out.view(B, -1, K * K, P)[:, first : first + L].permute(1, 0, 3, 2).unflatten(-1, (K, K))
    torch.lerp(down[..., :-1], down[..., 1:], fx, out=samples.transpose(-1, -2))


def _runs(levels: list[_Level], corner: torch.Tensor, radius: int, sizes: torch.Tensor) -> torch.Tensor:
    """The ``n x n`` integer taps (L, B, P, n, n), rows then columns, of windows whose sample at
    offset ``(0, 0)`` lies in the pixel ``corner`` (L, B, 2, P; x, y) of each of the ``levels``
    (their ``sizes`` (L, 2): width, height), read from their volumes (B, P, R) as ``n`` runs of
    ``n`` adjacent scores per window (one index per run: 0.25 of the time of a gather's index per
    tap and the gather, RAFT's level 0 at 46x62), zero outside the level. The volumes lie in
    buffers of :func:`_volume_buffer`: a row outside the level reads the ``n`` zeros before it,
    and a run that passes the level's left or right edge (then reading its pixel's neighbouring
    rows of scores, or the zeros before or after them) has those taps multiplied by zero, or set
    to zero where a volume is not finite (a NaN or infinity read there would spread to windows
    that do not hold it: 0.4 ms against 0.2 for the product at RAFT's level 0)."""
    L, B, _, P = corner.shape
    n = 2 * radius + 2
    device = corner.device
    W, H = sizes[:, 0].view(L, 1, 1, 1), sizes[:, 1].view(L, 1, 1, 1)
    R = torch.tensor([level.volume.shape[2] for level in levels], device=device).view(L, 1, 1, 1)  # type: ignore[union-attr]
    steps = torch.arange(n, device=device)
    start = corner.long() - radius  # (L, B, 2, P): the window's first column and row
    columns = start[:, :, 0].unsqueeze(-1) + steps  # (L, B, P, n)
    rows = start[:, :, 1].unsqueeze(-1) + steps
    pixel = torch.arange(B * P, device=device).view(1, B, P, 1) * R
    # Indices into the runs below, which start n scores before each volume, at its zeros.
    index = rows * W + (pixel + start[:, :, 0].unsqueeze(-1) + n)  # (L, B, P, n)
    index.masked_fill_((rows < 0) | (rows >= H), 0)
    taps = corner.new_empty(L, B * P * n, n)
    for at, level in enumerate(levels):
        assert level.volume is not None
        flat = level.volume.view(-1)
        runs = flat.as_strided((flat.numel() + n + 1, n), (1, 1), flat.storage_offset() - n)
        torch.index_select(runs, 0, index[at].view(-1), out=taps[at])
    taps = taps.view(L, B, P, n, n)
    outside = (columns < 0) | (columns >= W)
    if not bool(outside.any()):
        return taps
    if all(level.finite for level in levels):
        return taps.mul_(outside.logical_not_().to(taps.dtype).unsqueeze(-2))
    return taps.masked_fill_(outside.unsqueeze(-2), 0)


def _blend(
    taps: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, n: int, into: torch.Tensor | None = None
) -> torch.Tensor:
    """The window's bilinear samples (B, P, (n-1)**2), rows major, from its integer taps
    (B, P, n*n or n, n; rows major), every sample at fractional offset ``(fx, fy)`` (B, P) from
    its top-left tap; or, without a graph, written into ``into`` (B, (n-1)**2, P; columns major,
    the output's channels), which is returned. Down the rows first, then across: each step of the
    first reads whole rows of the windows (across first took twice the time, RAFT's 46x62)."""
    B, P = fx.shape
    if into is not None:
        d, fx, fy = taps.view(B, P, n, n), fx.view(B, P, 1, 1), fy.view(B, P, 1, 1)
        down = torch.lerp(d[:, :, :-1], d[:, :, 1:], fy)
        samples = into.transpose(1, 2).unflatten(-1, (n - 1, n - 1)).transpose(-1, -2)
        torch.lerp(down[..., :-1], down[..., 1:], fx, out=samples)
        return into
    d = taps.view(B * P, n, n)
    fx, fy = fx.reshape(-1, 1, 1), fy.reshape(-1, 1, 1)
    if tracing():
        down = d[:, :-1] + (d[:, 1:] - d[:, :-1]) * fy
        return (down[..., :-1] + (down[..., 1:] - down[..., :-1]) * fx).view(B, P, -1)
    return _Bilinear.apply(d, fy, fx).view(B, P, -1)


class _Bilinear(torch.autograd.Function):
    """Windows (N, n, n) blended to their samples (N, n-1, n-1): linear along the first axis
    at ``f1`` (N, 1, 1), then along the second at ``f2``. Two kernels forward, a few backward,
    each over window-sized arrays (autograd of the blend's slices made a dozen)."""

    @staticmethod
    def forward(ctx, d, f1, f2):
        first = torch.lerp(d[:, :-1], d[:, 1:], f1)
        ctx.save_for_backward(d, f1, f2)
        return torch.lerp(first[..., :-1], first[..., 1:], f2)

    @staticmethod
    def backward(ctx, g):
        d, f1, f2 = ctx.saved_tensors
        need_d, need_1, need_2 = ctx.needs_input_grad
        # The transpose of each linear step: a share (1 - f) to the first tap, f to the next.
        upper = g * f2
        ga = torch.cat([g - upper, upper[..., -1:]], dim=-1)
        ga[..., 1:-1] += upper[..., :-1]
        gd = g1 = g2 = None
        if need_d:
            upper = ga * f1
            gd = torch.cat([ga - upper, upper[:, -1:]], dim=1)
            gd[:, 1:-1] += upper[:, :-1]
        if need_1:
            g1 = (ga * (d[:, 1:] - d[:, :-1])).sum((1, 2), keepdim=True)
        if need_2:
            first = torch.lerp(d[:, :-1], d[:, 1:], f1)
            g2 = (g * (first[..., 1:] - first[..., :-1])).sum((1, 2), keepdim=True)
        return gd, g1, g2


def _rows_index(local: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows of the items' tables flattened (B * R, C) that the taps read."""
    offsets = torch.arange(local.shape[0], device=local.device).view(-1, 1, 1) * table.shape[1]
    return local + offsets


def _chunk(per_pixel: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // (per_pixel * itemsize))


def _traced(rows1, table, local, volume, dense) -> torch.Tensor:
    """The taps in plain operations, one chunk: what a tracer records, autograd differentiates."""
    if volume is None and dense:
        volume = torch.bmm(rows1, table.transpose(1, 2))
    if volume is not None:
        return volume.gather(2, local)
    return (table.reshape(-1, table.shape[-1])[_rows_index(local, table)] * rows1.unsqueeze(2)).sum(-1)


def _eager(rows1, table, local, volume, dense) -> torch.Tensor:
    """The taps (B, P, T) in chunks under :data:`CHUNK_BYTES`: read from the volume, or
    correlated window by window, or a chunk of pixels against the whole level (``dense``)."""
    if volume is not None:
        return volume.gather(2, local)
    B, P, C = rows1.shape
    T = local.shape[-1]
    if dense:
        out = rows1.new_empty(B, P, T)
        step = _chunk(table.shape[1], rows1.element_size())
        for b in range(B):
            for s in range(0, P, step):
                scores = torch.mm(rows1[b, s : s + step], table[b].t())
                torch.gather(scores, 1, local[b, s : s + step], out=out[b, s : s + step])
        return out
    index = _rows_index(local, table).view(-1, T)
    flat, rows = table.reshape(-1, C), rows1.reshape(-1, C)
    if rows1.device.type == "cpu" and T <= table.shape[1]:
        # (More taps per window than the level has rows fails in sampled_addmm; such levels are
        # correlated whole unless asked otherwise.)
        return _sampled(rows, flat, index).view(B, P, T)
    out = rows1.new_empty(B * P, T)
    step = _chunk(T * C, rows1.element_size())
    for s in range(0, B * P, step):
        picked = flat.index_select(0, index[s : s + step].reshape(-1)).view(-1, T, C)
        # Batched matrix-vector products: no (pixels, T, C) product is written and read again.
        torch.bmm(picked, rows[s : s + step].unsqueeze(-1), out=out[s : s + step].unsqueeze(-1))
    return out.view(B, P, T)


def _transposed_product(index: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, columns: int) -> torch.Tensor:
    """``G^T @ rows`` (columns, C) for the sparse matrix ``G`` (N, columns) of ``values`` (N, T)
    at columns ``index`` (N, T), and ``rows`` (N, C): ``G^T`` in CSR, its entries the taps sorted
    by column (stably: each row's pixels in order). A COO matrix, coalesced by the product, took
    1.4x as long (RAFT's level 0 at 46x62: 570 400 taps)."""
    N, T = index.shape
    flat = index.reshape(-1)
    # Sorted as int32 where the columns allow: the same (stable) permutation in 0.75 of int64's
    # time (RAFT's level 0 at 46x62: 6.9 against 8.9 ms, the conversion included).
    order = torch.argsort(flat.int() if columns <= torch.iinfo(torch.int32).max else flat, stable=True)
    crow = torch.zeros(columns + 1, dtype=torch.long, device=index.device)
    torch.cumsum(torch.bincount(flat, minlength=columns), 0, out=crow[1:])
    pixels = torch.div(order, T, rounding_mode="floor")
    with warnings.catch_warnings():  # (CSR tensors are a beta feature of PyTorch)
        warnings.simplefilter("ignore", UserWarning)
        transposed = torch.sparse_csr_tensor(
            crow, pixels, values.reshape(-1)[order], size=(columns, N), check_invariants=False
        )
    return transposed @ rows


def _pattern(index: torch.Tensor, values: torch.Tensor, columns: int) -> torch.Tensor:
    """The sparse matrix (N, columns) of ``values`` (N, T) at columns ``index`` (N, T), in CSR."""
    N, T = index.shape
    crow = torch.arange(0, N * T + 1, T, device=index.device)
    with warnings.catch_warnings():  # (CSR tensors are a beta feature of PyTorch)
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, index.reshape(-1), values.reshape(-1), size=(N, columns), check_invariants=False
        )


def _sampled(rows: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[p] . table[index[p, t]]`` (N, T) for rows (N, C) and a table (R, C): the matrix
    product at the taps only, one kernel that writes no gathered window (on a CPU, 1/20 of the
    time of gathering the windows for batched matrix-vector products at RAFT's level 0)."""
    pattern = _pattern(index, rows.new_zeros(index.shape), table.shape[0])
    # Into the pattern itself: a new result would copy the pattern's indices and values first
    # (0.90-0.94 of the time at RAFT's level 0).
    return torch.sparse.sampled_addmm(pattern, rows, table.t(), beta=0.0, out=pattern).values().view(index.shape)


class _Scores:
    """Scores against ``f1`` as a node of the graph, for a backward pass that makes them once:
    every lookup's taps' gradient is scattered into one dense gradient of its level's scores
    (B, P, R), and when the last lookup of the backward pass has added its own, two matrix
    products per item turn it into the gradients of ``f1``'s rows and the first level's table.
    ``levels`` are that level and, where the volumes are built, the levels pooled from it: their
    gradients reach it through the pooling's transpose (each pixel's gradient, a quarter to each
    of the four it averages).

    RAFT looks a pyramid up 12 times per training step: correlating the scores' gradient per
    lookup made its backward pass 12 times the matrix products of one. ``token`` is the 0-d
    output of the node (:class:`_LevelScores`) that every lookup takes as its input, so the
    autograd engine runs that node after all of them. A backward pass consumes it; the next
    lookup then makes a new one.
    """

    def __init__(self, rows1: torch.Tensor, levels: list[_Level], radius: int) -> None:
        self.rows1, self.levels = rows1, levels
        self.dense = [_dense(level, radius) for level in levels]
        self.grads: list[torch.Tensor | None] = [None] * len(levels)
        self.consumed = False
        self.token = _LevelScores.apply(rows1, levels[0].table, self)

    def taps(self, place: int, local: torch.Tensor) -> torch.Tensor:
        level = self.levels[place]
        return _eager(self.rows1, level.table, local, level.volume, self.dense[place])

    def add(self, place: int, local: torch.Tensor, g: torch.Tensor) -> None:
        """Adds a lookup's taps' gradient (B, P, T) at level ``place``."""
        grad = self.grads[place]
        if grad is None:
            grad = self.grads[place] = self._zeros(place, g)
        grad.scatter_add_(2, local, g)

    def _zeros(self, place: int, like: torch.Tensor) -> torch.Tensor:
        """A zero gradient of level ``place``'s scores, in a spare buffer where one waits."""
        shape = (self.rows1.shape[0], self.rows1.shape[1], self.levels[place].table.shape[1])
        return SPARES.take(shape, like.dtype, like.device).zero_()

    def take(self) -> torch.Tensor | None:
        """The gradient of the first level's scores, every pooled level's added to it; the node
        consumed."""
        grads, self.grads, self.consumed = self.grads, [None] * len(self.levels), True
        for place in range(len(grads) - 1, 0, -1):
            g = grads[place]
            if g is None:
                continue
            below = grads[place - 1]
            if below is None:
                below = grads[place - 1] = self._zeros(place - 1, g)
            (Hl, Wl) = self.levels[place].size
            quarter = g[..., : Hl * Wl].view(*g.shape[:2], Hl, Wl).mul_(0.25)
            # Each quarter widened to its two columns, then added to both rows (the four corners'
            # stride-2 views took 2.5x as long, see _pooled_volume).
            wide = quarter.repeat_interleave(2, dim=-1)
            _pairs(below, self.levels[place - 1].size, (Hl, Wl)).add_(wide.unsqueeze(-2))
            SPARES.give([g])
        return grads[0]


class _LevelScores(torch.autograd.Function):
    """``rows1`` against a level's table, in the graph as a 0-d token (see :class:`_Scores`)."""

    @staticmethod
    def forward(ctx, rows1, table, scores):
        ctx.save_for_backward(rows1, table)
        ctx.scores = scores
        return rows1.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        rows1, table = ctx.saved_tensors
        g = ctx.scores.take()
        if g is None:  # no lookup of this backward pass reached the levels
            return None, None, None
        need1, need2 = ctx.needs_input_grad[:2]
        # (The zero rows' gradient is the padding's, which drops it.)
        g1 = torch.bmm(g, table) if need1 else None
        gt = torch.bmm(g.transpose(1, 2), rows1) if need2 else None
        SPARES.give([g])
        return g1, gt, None


class _DenseTaps(torch.autograd.Function):
    """A lookup's integer taps (B, P, T) of a level whose backward pass is :class:`_Scores`'."""

    @staticmethod
    def forward(ctx, token, scores, place, local):
        ctx.save_for_backward(local)
        ctx.scores, ctx.place = scores, place
        return scores.taps(place, local)

    @staticmethod
    def backward(ctx, g):
        (local,) = ctx.saved_tensors
        ctx.scores.add(ctx.place, local, g)
        return torch.zeros((), dtype=g.dtype, device=g.device), None, None, None


class _Windows(torch.autograd.Function):
    """The integer taps (B, P, T) of ``rows1`` (B, P, C) against a level's table, correlated
    window by window, with a backward pass made of the same windowed correlations, in chunks: no
    volume-sized gradient is ever made (the levels too large to correlate whole). The taps are
    kept for it as int32 where a level's rows fit: they were a quarter of a training step's peak
    memory as int64 at 136x240, where every level is windowed (making them again instead took
    1.28x the step's time)."""

    @staticmethod
    def forward(ctx, rows1, table, local):
        kept = local.to(torch.int32) if table.shape[1] <= torch.iinfo(torch.int32).max else local
        ctx.save_for_backward(rows1, table, kept)
        return _eager(rows1, table, local, None, False)

    @staticmethod
    def backward(ctx, g):
        rows1, table, local = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        B, P, C = rows1.shape
        T = local.shape[-1]
        index = _rows_index(local, table).view(-1, T)
        flat, rows, g = table.reshape(-1, C), rows1.reshape(-1, C), g.reshape(-1, T)
        g1 = gt = None
        if rows1.device.type == "cpu":
            # Sparse products with the taps' gradient as a matrix (B*P, B*R): it by the table,
            # its transpose by f1's rows; neither writes a gathered window.
            if need1:
                g1 = F.embedding_bag(index, flat, mode="sum", per_sample_weights=g).view(B, P, C)
            if need2:
                gt = _transposed_product(index, g, rows, len(flat))
            return g1, gt.view(table.shape) if gt is not None else None, None
        g1 = torch.empty_like(rows1) if need1 else None
        gt = torch.zeros_like(table) if need2 else None
        g1_flat = g1.view(-1, C) if g1 is not None else None
        gt_flat = gt.view(-1, C) if gt is not None else None
        step = _chunk(T * C, rows1.element_size())
        for s in range(0, B * P, step):
            e = slice(s, s + step)
            picks = index[e].reshape(-1)
            if g1_flat is not None:
                picked = flat.index_select(0, picks).view(-1, T, C)
                torch.bmm(g[e].unsqueeze(1), picked, out=g1_flat[e].unsqueeze(1))
            if gt_flat is not None:
                gt_flat.index_add_(0, picks, (g[e].unsqueeze(-1) * rows[e].unsqueeze(1)).view(-1, C))
        return g1, gt, None
