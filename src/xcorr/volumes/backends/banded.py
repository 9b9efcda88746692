"""Cost volumes as blocked matrix products: tiles of ``f1`` against their haloed ``f2`` tiles.

A tile of ``th x tw`` positions of ``f1`` meets, over all its displacements, a tile of ``f2``
that is larger by the window: ``Nh x Nw = ((th-1)m + Py) x ((tw-1)m + Px)`` positions. One
matrix product ``(th*tw, C) @ (C, Nh*Nw)`` per tile (all tiles in one batched product) gives
every pair of the two tiles; the band of pairs that are displacements of each other is one
strided view of the product, copied into the volume. The product computes
``Nh*Nw / (Py*Px)`` times the volume's multiply-adds (the tile sizes trade that against the
width of the matrix products) at matrix-product speed, tens of times what the shifted products
reach on a CPU.

Displacement strides waste nothing: the positions of ``f1`` are split into classes by their
residue modulo the displacement stride (with a displacement stride of 2 and an output stride of
1: the four parities of row and column), each class reads the positions of ``f2`` on its own
lattice, and the band is dense there. A negative displacement step (stereo's ``x - d``) is the
positive one read backwards: each haloed tile is copied reversed, and the band then comes out in
the volume's order.

The backward pass is made of the same products: the output gradient is placed in the band of a
zero matrix ``G``, then ``G @ f2_tiles`` is ``f1``'s gradient and ``G^T @ f1_tiles`` that of the
haloed ``f2`` tiles, whose overlaps are added back block by block. A training step costs about
three forward passes.

The inputs are first copied channels-last, one class at a time (each group's channels last), so
that a tile's rows are runs of memory for the operand copies. Temporaries are made a chunk of
tiles at a time in buffers reused by every chunk, under :data:`CHUNK_BYTES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..._compute import needs_grad
from ..._spares import OUTPUTS
from ..._tracing import tracing
from ...planning.cost import Terms
from ..spec import VolumeSpec
from ._base import VolumeBackend, window_sum, window_taps

#: Bytes of one chunk's temporaries (the two tile operands and their product): small enough to stay
#: in the last-level cache between the product and the band's copy (PWC-Net's level 2 ran 1.5x
#: faster with 1-4 MiB than with 16 MiB), and far under the 32 MiB from which glibc maps every
#: temporary fresh from the kernel.
CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class Axis:
    """One axis of a banded problem, in input positions.

    ``f1`` is read at ``start + t*step`` (``t < count``), ``f2`` at those plus ``first + i*dstep``
    (``i < P``, ``dstep > 0``), in tiles of ``tile`` positions of a class.
    """

    start: int
    step: int
    count: int
    first: int
    dstep: int
    P: int
    tile: int

    @property
    def lattice(self) -> int:
        """Input positions between the ``f1`` positions of one class: lcm(step, dstep)."""
        return self.step * self.dstep // math.gcd(self.step, self.dstep)

    @property
    def classes(self) -> int:
        return self.lattice // self.step

    @property
    def m(self) -> int:
        """``f2`` positions (of its class lattice) between consecutive ``f1`` positions of a class."""
        return self.lattice // self.dstep

    @property
    def tiles(self) -> int:
        """Tiles per class (the last one extended by zeros)."""
        per_class = -(-self.count // self.classes)
        return -(-per_class // self.tile)

    @property
    def halo(self) -> int:
        """``f2`` positions of a tile: ``(tile-1)*m + P``."""
        return (self.tile - 1) * self.m + self.P

    @property
    def padded(self) -> int:
        """Output positions computed: whole tiles of every class."""
        return self.tiles * self.tile * self.classes

    def f1_start(self, a: int) -> int:
        return self.start + a * self.step

    def f2_start(self, a: int) -> int:
        return self.start + a * self.step + self.first

    def f2_count(self, tiles: int) -> int:
        """``f2`` positions of a class that ``tiles`` consecutive tiles read."""
        return (tiles * self.tile - 1) * self.m + self.P


def _axis(grid: tuple[int, int, int], d: tuple[int, int, int], tile: int) -> tuple[Axis, bool]:
    """The axis of a product grid and displacements, and whether the displacements run backwards."""
    (start, step, count), (first, dstep, P) = grid, d
    if P == 1:
        # One displacement: any step does; the grid's keeps one class.
        return Axis(start, step, count, first, step, 1, tile), False
    flipped = dstep < 0
    if flipped:
        first, dstep = first + (P - 1) * dstep, -dstep
    return Axis(start, step, count, first, dstep, P, tile), flipped


@dataclass(frozen=True)
class TilePlan:
    """How a banded problem is tiled: its two axes, the groups and channels, and the volume's scale."""

    y: Axis
    x: Axis
    groups: int
    channels: int
    scale: float

    @property
    def tile_bytes(self) -> int:
        """float32 bytes of one tile's temporaries: both operands and their product."""
        C, G = self.channels, self.groups
        M, N = self.y.tile * self.x.tile, self.y.halo * self.x.halo
        return 4 * (C // G) * (M + N) + 4 * M * N


def tile_plan(spec: VolumeSpec) -> tuple[TilePlan, tuple[bool, bool]]:
    """The tiling of ``spec`` (tiles of :func:`choose_tiles`), and whether its row and column
    displacements run backwards."""
    rows, cols = spec.product_grid
    th, tw = choose_tiles(spec)
    y, fy = _axis(rows, spec.dy, th)
    x, fx = _axis(cols, spec.dx, tw)
    return TilePlan(y, x, spec.groups, spec.channels, spec.scale), (fy, fx)


#: Positions of f1 per tile, at least (where a class has as many): narrower matrix products run
#: at a fraction of the matrix-product speed.
TILE_ROWS = 32


def choose_tiles(spec: VolumeSpec) -> tuple[int, int]:
    """Tile sizes ``(th, tw)``: of the tiles of :data:`TILE_ROWS` to ``4 * TILE_ROWS`` positions,
    those with the fewest wasted multiply-adds, ``(1 + (th-1)m/Py) * (1 + (tw-1)m/Px)`` times
    the whole tiles' share of the zeros past a class's end."""
    rows, cols = spec.product_grid
    y, _ = _axis(rows, spec.dy, 1)
    x, _ = _axis(cols, spec.dx, 1)
    ny, nx = -(-y.count // y.classes), -(-x.count // x.classes)
    low = min(TILE_ROWS, ny * nx)
    best = (math.inf, 0, 1, 1)
    for th in range(1, min(ny, 4 * TILE_ROWS) + 1):
        for tw in range(1, min(nx, 4 * TILE_ROWS // th) + 1):
            if th * tw < low:
                continue
            waste = (1 + (th - 1) * y.m / y.P) * (1 + (tw - 1) * x.m / x.P)
            waste *= (-(-ny // th) * th / ny) * (-(-nx // tw) * tw / nx)
            key = (waste, -th * tw, th, tw)
            if key < best:
                best = key
    return best[2], best[3]


def _index_range(start: int, step: int, count: int, size: int) -> tuple[int, int]:
    """The indices ``t0 ... t1-1`` of the positions ``start + t*step`` (``t < count``) inside ``[0, size)``."""
    t0 = -(start // step) if start < 0 else 0
    t1 = min(count, (size - 1 - start) // step + 1) if start <= size - 1 else 0
    return t0, max(t0, t1)


#: Items times groups up to which the channels-last copies are made one plane at a time: a
#: contiguous (C/G, rows*cols) plane copied into its transpose takes PyTorch's blocked transpose,
#: 2-3x faster than a strided copy of the 5-D permutation at C/G >= 16 (PWC-Net's level 2: 8 against
#: 15 ms per map); many small planes (GwcNet's 8-channel groups) lose to one strided copy.
PLANE_COPIES = 16

#: Channels per group from which the plane copies pay (see :data:`PLANE_COPIES`).
PLANE_CHANNELS = 16


def _by_planes(items: int, groups: int, channels: int) -> bool:
    """Whether the channels-last copies go plane by plane (eager mode only: the loop is over the batch)."""
    return not tracing() and items * groups <= PLANE_COPIES and channels // groups >= PLANE_CHANNELS


def _framed(f: torch.Tensor, shape: tuple[int, ...], rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """A new (B, G, rows, cols, C/G) tensor, zero outside ``[y0, y1) x [x0, x1)`` (left to be
    filled): zeroing only the frame saves a fill of the whole (GwcNet: 20 ms per map)."""
    (y0, y1), (x0, x1) = rows, cols
    out = f.new_empty(shape)
    out[:, :, :y0].zero_()
    out[:, :, y1:].zero_()
    out[:, :, y0:y1, :x0].zero_()
    out[:, :, y0:y1, x1:].zero_()
    return out


def _classed(
    f: torch.Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int], groups: int, scale: float = 1.0
) -> torch.Tensor:
    """``f`` (B, C, H, W) on the grid ``rows`` x ``cols`` (start, step, count), zero outside, as
    (B, G, rows, cols, C/G): each group channels-last, so that a tile's row is one run of memory."""
    B, C, H, W = f.shape
    (r, rs, nr), (c, cs, nc) = rows, cols
    (y0, y1), (x0, x1) = _index_range(r, rs, nr, H), _index_range(c, cs, nc, W)
    if _by_planes(B, groups, C) and y1 > y0 and x1 > x0:
        # The grid's part inside f, plane by plane, then placed among the zeros around it.
        Cg, ny, nx = C // groups, y1 - y0, x1 - x0
        src = f[..., r + y0 * rs : r + (y1 - 1) * rs + 1 : rs, c + x0 * cs : c + (x1 - 1) * cs + 1 : cs]
        src = src.contiguous().view(B, groups, Cg, ny * nx)
        whole = (ny, nx) == (nr, nc)
        inner = f.new_empty(B, groups, ny, nx, Cg)
        flat = inner.view(B, groups, ny * nx, Cg)
        for b in range(B):
            for g in range(groups):
                flat[b, g].copy_(src[b, g].t())
        if scale != 1.0:
            inner.mul_(scale)
        if whole:
            return inner
        out = _framed(f, (B, groups, nr, nc, Cg), (y0, y1), (x0, x1))
        out[:, :, y0:y1, x0:x1].copy_(inner)
        return out
    if y1 <= y0 or x1 <= x0:
        return f.new_zeros(B, groups, nr, nc, C // groups)
    out = _framed(f, (B, groups, nr, nc, C // groups), (y0, y1), (x0, x1))
    src = f[..., r + y0 * rs : r + (y1 - 1) * rs + 1 : rs, c + x0 * cs : c + (x1 - 1) * cs + 1 : cs]
    src = src.unflatten(1, (groups, -1)).permute(0, 1, 3, 4, 2)
    region = out[:, :, y0:y1, x0:x1]
    region.copy_(src)
    if scale != 1.0:
        region.mul_(scale)
    return out


def _unclassed(
    g: torch.Tensor, grad: torch.Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int], scale: float = 1.0
) -> None:
    """The adjoint of :func:`_classed`: add ``g`` (B, G, rows, cols, C/G) into ``grad`` (B, C, H, W)."""
    B, C, H, W = grad.shape
    (r, rs, nr), (c, cs, nc) = rows, cols
    (y0, y1), (x0, x1) = _index_range(r, rs, nr, H), _index_range(c, cs, nc, W)
    if y1 > y0 and x1 > x0:
        dst = grad[..., r + y0 * rs : r + (y1 - 1) * rs + 1 : rs, c + x0 * cs : c + (x1 - 1) * cs + 1 : cs]
        G = g.shape[1]
        if _by_planes(B, G, C):
            # Back to f's layout plane by plane (see _classed), then one add of the valid part.
            # (g may extend past the grid: the backward pass's room for whole blocks.)
            rows_g, cols_g = g.shape[2:4]
            planes = g.new_empty(B, G, C // G, rows_g * cols_g)
            flat = g.contiguous().view(B, G, rows_g * cols_g, C // G)
            for b in range(B):
                for k in range(G):
                    planes[b, k].copy_(flat[b, k].t())
            src = planes.view(B, C, rows_g, cols_g)[..., y0:y1, x0:x1]
        else:
            src = g[:, :, y0:y1, x0:x1].permute(0, 1, 4, 2, 3).flatten(1, 2)
        dst.add_(src * scale if scale != 1.0 else src)


def _grids(tiling: TilePlan, ay: int, ax: int) -> tuple[tuple, tuple, tuple, tuple]:
    """Rows and columns (start, step, count) of class ``(ay, ax)`` in f1 and in f2."""
    y, x = tiling.y, tiling.x
    r1 = (y.f1_start(ay), y.lattice, y.tiles * y.tile)
    c1 = (x.f1_start(ax), x.lattice, x.tiles * x.tile)
    r2 = (y.f2_start(ay), y.dstep, y.f2_count(y.tiles))
    c2 = (x.f2_start(ax), x.dstep, x.f2_count(x.tiles))
    return r1, c1, r2, c2


def _tiles_of(a: torch.Tensor, tiling: TilePlan, t0: int, t1: int, out: torch.Tensor) -> torch.Tensor:
    """Tile rows ``t0 ... t1-1`` of a classed f1 copied into ``out``: (tiles, th*tw, C/G), in
    (item, group, tile row, tile) order."""
    y, x = tiling.y, tiling.x
    a = a[:, :, t0 * y.tile : t1 * y.tile].unflatten(2, (t1 - t0, y.tile)).unflatten(4, (x.tiles, x.tile))
    a = a.permute(0, 1, 2, 4, 3, 5, 6)
    out = out[: a.shape[0] * a.shape[1] * a.shape[2] * a.shape[3]]
    out.view(a.shape).copy_(a)
    return out


def _halos_of(
    b: torch.Tensor, tiling: TilePlan, t0: int, t1: int, out: torch.Tensor, flips: tuple[bool, bool]
) -> torch.Tensor:
    """The haloed f2 tiles of tile rows ``t0 ... t1-1`` of a classed f2 copied into ``out``: (tiles, Nh*Nw, C/G),
    each tile's rows (columns) in reverse order where ``flips`` says (see :func:`_band`)."""
    y, x = tiling.y, tiling.x
    start = t0 * y.tile * y.m
    b = b[:, :, start : start + y.f2_count(t1 - t0)]
    b = b.unfold(2, y.halo, y.tile * y.m).unfold(3, x.halo, x.tile * x.m)  # (B, G, n, tiles_x, C/G, Nh, Nw)
    b = b.permute(0, 1, 2, 3, 5, 6, 4)
    if flips[0] or flips[1]:
        b = b.flip(_flip_dims(flips))
    out = out[: b.shape[0] * b.shape[1] * b.shape[2] * b.shape[3]]
    out.view(b.shape).copy_(b)
    return out


def _workspace(f: torch.Tensor, tiling: TilePlan, chunks: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, ...]:
    """Buffers for the largest chunk's operands and product, reused by every chunk: a fresh
    temporary per chunk costs as much again in page faults."""
    y, x = tiling.y, tiling.x
    tiles = max((b1 - b0) * (t1 - t0) for b0, b1, t0, t1 in chunks) * tiling.groups * x.tiles
    M, N, K = y.tile * x.tile, y.halo * x.halo, tiling.channels // tiling.groups
    return f.new_empty(tiles, M, K), f.new_empty(tiles, N, K), f.new_empty(tiles, M, N)


def _flip_dims(flips: tuple[bool, bool]) -> list[int]:
    """The dimensions of the halos (B, G, n, tiles_x, Nh, Nw, C/G) that :func:`_halos_of` reverses."""
    return [d for d, f in ((4, flips[0]), (5, flips[1])) if f]


def _band(m: torch.Tensor, tiling: TilePlan, batch: int, n: int, flips: tuple[bool, bool]) -> torch.Tensor:
    """The band of the tile products ``m`` (tiles, th*tw, Nh*Nw), at the start of its storage:
    (B, G, n, tiles_x, th, tw, Py, Px).

    Where the displacements run backwards (``flips``), the halos' rows (columns) are reversed:
    displacement ``P-1-i`` of position ``r`` is then halo row ``Nh-Py - r*m + i``, a band with
    positive strides whose displacements come out in the volume's order (reversing the volume
    after took as long as the products: GwcNet)."""
    y, x = tiling.y, tiling.x
    th, tw, Nh, Nw = y.tile, x.tile, y.halo, x.halo
    N = Nh * Nw
    size = (batch, tiling.groups, n, x.tiles, th, tw, y.P, x.P)
    tile = th * tw * N
    stride = (tiling.groups * n * x.tiles * tile, n * x.tiles * tile, x.tiles * tile, tile)
    sy, sx = -1 if flips[0] else 1, -1 if flips[1] else 1
    # Both stay positive (Nh > m where th > 1, Nw > m where tw > 1); a size-1 dimension's is any.
    rows = max(0, tw * N + sy * y.m * Nw) if th > 1 else 0
    cols = max(0, N + sx * x.m) if tw > 1 else 0
    offset = (Nh - y.P) * Nw * flips[0] + (Nw - x.P) * flips[1]
    # m starts its storage (a workspace's head): its offset is not read, which tracing forbids.
    return m.as_strided(size, (*stride, rows, cols, Nw, 1), offset)


def chunking(tiling: TilePlan, batch: int, itemsize: int) -> list[tuple[int, int, int, int]]:
    """``(b0, b1, t0, t1)``: items and tile rows per chunk, under :data:`CHUNK_BYTES`. While
    tracing, every item is in each chunk (the batch may be symbolic; the graph must not depend on it)."""
    per_row = tiling.tile_bytes * itemsize // 4 * tiling.groups * tiling.x.tiles
    T = tiling.y.tiles
    if batch == 0:
        return []
    if tracing():
        rows = max(1, CHUNK_BYTES // per_row)
        return [(0, batch, t, min(T, t + rows)) for t in range(0, T, rows)]
    rows = max(1, CHUNK_BYTES // (per_row * batch))
    if rows < T:
        items = max(1, CHUNK_BYTES // (per_row * T))
        if items == 1:
            rows = max(1, CHUNK_BYTES // per_row)
            return [(b, b + 1, t, min(T, t + rows)) for b in range(batch) for t in range(0, T, rows)]
        return [(b, min(batch, b + items), 0, T) for b in range(0, batch, items)]
    return [(0, batch, 0, T)]


def _grid(t: torch.Tensor, tiling: TilePlan) -> torch.Tensor:
    """The volume (B, G, Py, Px, rows, cols) as (B, G, Py, Px, tiles_y, th, classes_y, tiles_x, tw, classes_x):
    output row ``(t*th + r)*classes + a`` is row ``r`` of tile row ``t`` of class ``a``."""
    y, x = tiling.y, tiling.x
    return t.view(-1, tiling.groups, y.P, x.P, y.tiles, y.tile, y.classes, x.tiles, x.tile, x.classes)


def _forward(
    f1: torch.Tensor,
    f2: torch.Tensor,
    tiling: TilePlan,
    kept: list[torch.Tensor] | None,
    flips: tuple[bool, bool],
) -> torch.Tensor:
    """The volume (B, G, Py, Px, rows, cols) on whole tiles, its displacement axes reversed where
    ``flips`` says (see :func:`_band`); the classed inputs are appended to ``kept`` if given (the
    backward pass reads them again)."""
    y, x, G = tiling.y, tiling.x, tiling.groups
    B = f1.shape[0]
    out = OUTPUTS.empty((B, G, y.P, x.P, y.padded, x.padded), f1.dtype, f1.device)
    grid = _grid(out, tiling)
    chunks = chunking(tiling, B, f1.element_size())
    wa, wb, wm = _workspace(f1, tiling, chunks)
    for ay in range(y.classes):
        for ax in range(x.classes):
            r1, c1, r2, c2 = _grids(tiling, ay, ax)
            a_cl, b_cl = _classed(f1, r1, c1, G, tiling.scale), _classed(f2, r2, c2, G)
            if kept is not None:
                kept += [a_cl, b_cl]
            for b0, b1, t0, t1 in chunks:
                a, b = _tiles_of(a_cl[b0:b1], tiling, t0, t1, wa), _halos_of(b_cl[b0:b1], tiling, t0, t1, wb, flips)
                m = torch.bmm(a, b.transpose(1, 2), out=wm[: a.shape[0]])
                band = _band(m, tiling, b1 - b0, t1 - t0, flips)
                grid[b0:b1, :, :, :, t0:t1, :, ay, :, :, ax].copy_(band.permute(0, 1, 6, 7, 2, 4, 3, 5))
    return out


def _put_tiles(ga: torch.Tensor, ga_cl: torch.Tensor, tiling: TilePlan, b0: int, b1: int, t0: int, t1: int) -> None:
    """Write the tiles' gradients ``ga`` (tiles, th*tw, C/G) into tile rows ``t0 ... t1-1`` of the
    classed f1 gradient ``ga_cl``: the adjoint of :func:`_tiles_of`."""
    y, x, n = tiling.y, tiling.x, t1 - t0
    ga = ga.reshape(b1 - b0, tiling.groups, n, x.tiles, y.tile, x.tile, -1)
    dst = ga_cl[b0:b1, :, t0 * y.tile : t1 * y.tile].unflatten(2, (n, y.tile))
    dst.unflatten(4, (x.tiles, x.tile)).copy_(ga.permute(0, 1, 2, 4, 3, 5, 6))


def _add_halos(
    gb: torch.Tensor,
    g_cl: torch.Tensor,
    tiling: TilePlan,
    b0: int,
    b1: int,
    t0: int,
    t1: int,
    flips: tuple[bool, bool],
) -> None:
    """Add the haloed tiles' gradients ``gb`` (tiles, Nh*Nw, C/G), reversed where ``flips`` says,
    into the classed f2 gradient ``g_cl``: the adjoint of :func:`_halos_of`.

    Tiles step ``sy = th*m`` rows and ``sx = tw*m`` columns, so block ``(ky, kx)`` of every tile
    (rows ``ky*sy ...``, columns ``kx*sx ...`` of it) lands on a grid of its own, without overlap:
    one strided add per block."""
    y, x, G = tiling.y, tiling.x, tiling.groups
    sy, sx, n = y.tile * y.m, x.tile * x.m, t1 - t0
    gb = gb.reshape(b1 - b0, G, n, x.tiles, y.halo, x.halo, -1)
    if flips[0] or flips[1]:  # back to the halos' own order
        gb = gb.flip(_flip_dims(flips))
    for ky in range(-(-y.halo // sy)):
        hk = min(sy, y.halo - ky * sy)
        rows = g_cl[b0:b1, :, (t0 + ky) * sy : (t0 + ky + n) * sy].unflatten(2, (n, sy))[:, :, :, :hk]
        for kx in range(-(-x.halo // sx)):
            wk = min(sx, x.halo - kx * sx)
            dst = rows[:, :, :, :, kx * sx : (kx + x.tiles) * sx].unflatten(4, (x.tiles, sx))[..., :wk, :]
            src = gb[:, :, :, :, ky * sy : ky * sy + hk, kx * sx : kx * sx + wk]
            dst.add_(src.permute(0, 1, 2, 4, 3, 5, 6))


def _class_gradients(
    g_class: torch.Tensor,
    a_cl: torch.Tensor,
    b_cl: torch.Tensor,
    tiling: TilePlan,
    chunks: list[tuple[int, int, int, int]],
    workspace: tuple[torch.Tensor, ...],
    needs: tuple,
    flips: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of one class's classed f1 and f2 (``a_cl``, ``b_cl``) where ``needs`` says,
    from its output gradient ``g_class`` (B, G, Py, Px, tiles_y, th, tiles_x, tw). Per chunk, the
    output gradient fills the band of the product's gradient, which then meets each operand in one
    product. The f2 gradient has room for the last tiles' blocks past the halo's end (they add
    zeros there)."""
    y, x = tiling.y, tiling.x
    wa, wb, wm = workspace
    sy, sx = y.tile * y.m, x.tile * x.m
    ga_cl = torch.empty_like(a_cl) if needs[0] else None
    rows, cols = (y.tiles + -(-y.halo // sy)) * sy, (x.tiles + -(-x.halo // sx)) * sx
    gb_cl = a_cl.new_zeros(a_cl.shape[0], tiling.groups, rows, cols, a_cl.shape[-1]) if needs[1] else None
    for b0, b1, t0, t1 in chunks:
        a, b = _tiles_of(a_cl[b0:b1], tiling, t0, t1, wa), _halos_of(b_cl[b0:b1], tiling, t0, t1, wb, flips)
        chunk = g_class[b0:b1, :, :, :, t0:t1].permute(0, 1, 4, 6, 5, 7, 2, 3)
        _band(wm, tiling, b1 - b0, t1 - t0, flips).copy_(chunk)
        grad = wm[: a.shape[0]]
        if ga_cl is not None:
            _put_tiles(torch.bmm(grad, b), ga_cl, tiling, b0, b1, t0, t1)
        if gb_cl is not None:
            _add_halos(torch.bmm(grad.transpose(1, 2), a), gb_cl, tiling, b0, b1, t0, t1, flips)
    return ga_cl, gb_cl


def _backward(
    g: torch.Tensor,
    classed: list[torch.Tensor],
    shape: tuple[int, ...],
    tiling: TilePlan,
    needs: tuple,
    flips: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of f1 and f2 (of ``shape``) where ``needs`` says, from the output gradient
    ``g`` and the classed inputs of the forward pass (f1's and f2's of each class, in turn)."""
    y, x = tiling.y, tiling.x
    grid = _grid(g.contiguous(), tiling)
    g1 = g.new_zeros(shape) if needs[0] else None
    g2 = g.new_zeros(shape) if needs[1] else None
    chunks = chunking(tiling, shape[0], g.element_size())
    workspace = _workspace(g, tiling, chunks)
    # The product's gradient is zero off the band, whose places are the same in every chunk.
    workspace[2].zero_()
    for ay in range(y.classes):
        for ax in range(x.classes):
            r1, c1, r2, c2 = _grids(tiling, ay, ax)
            a_cl, b_cl = classed[2 * (ay * x.classes + ax)], classed[2 * (ay * x.classes + ax) + 1]
            g_class = grid[..., ay, :, :, ax]
            ga_cl, gb_cl = _class_gradients(g_class, a_cl, b_cl, tiling, chunks, workspace, needs, flips)
            if g1 is not None and ga_cl is not None:
                _unclassed(ga_cl, g1, r1, c1, tiling.scale)
            if g2 is not None and gb_cl is not None:
                _unclassed(gb_cl, g2, r2, c2)
    return g1, g2


class _Banded(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f1, f2, tiling, flips):
        kept: list[torch.Tensor] = []
        out = _forward(f1, f2, tiling, kept, flips)
        ctx.save_for_backward(*kept)
        ctx.tiling, ctx.shape, ctx.flips = tiling, tuple(f1.shape), flips
        return out

    @staticmethod
    def backward(ctx, g):
        g1, g2 = _backward(g, list(ctx.saved_tensors), ctx.shape, ctx.tiling, ctx.needs_input_grad[:2], ctx.flips)
        return g1, g2, None, None


def cost_volume(f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec) -> torch.Tensor:
    """The cost volume of ``spec`` as tiled products (see :func:`tile_plan`)."""
    return _tiled(f1, f2, spec, *tile_plan(spec))


def bind(spec: VolumeSpec, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eager calls of one signature: the tiling worked out once."""
    tiling, flips = tile_plan(spec)
    return lambda f1, f2: _tiled(f1, f2, spec, tiling, flips)


def _tiled(
    f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec, tiling: TilePlan, flips: tuple[bool, bool]
) -> torch.Tensor:
    out = _Banded.apply(f1, f2, tiling, flips) if needs_grad(f1, f2) else _forward(f1, f2, tiling, None, flips)
    (_, _, nr), (_, _, nc) = spec.product_grid
    if out.shape[-2] != nr or out.shape[-1] != nc:
        out = out[..., :nr, :nc]
    out = window_sum(out.flatten(2, 3), spec)
    if out.is_contiguous() or tracing():
        return out.contiguous()
    return OUTPUTS.empty(tuple(out.shape), out.dtype, out.device).copy_(out)


def fits(spec: VolumeSpec) -> bool:
    """The band needs distinct displacements along each axis (a step of 0 repeats one)."""
    return not ((spec.dy[1] == 0 and spec.dy[2] > 1) or (spec.dx[1] == 0 and spec.dx[2] > 1))


def terms(spec: VolumeSpec) -> Terms:
    """The cost model's counts: a few operations per chunk of tiles, the tile products'
    multiply-adds (the band's and the waste's: the copies of the operands grow with them), and
    the elements of the volume copied out of them."""
    B, C = spec.shape[:2]
    G, P = spec.groups, spec.displacements
    Ho, Wo = spec.out_size
    tiling, _ = tile_plan(spec)
    y, x = tiling.y, tiling.x
    classes = y.classes * x.classes
    tiles = B * G * classes * y.tiles * x.tiles
    M, N, K = y.tile * x.tile, y.halo * x.halo, C // G
    return Terms(
        {
            "banded_call": 1.0,
            "banded_chunk": float(classes * len(chunking(tiling, B, 4))),
            "banded_mac": float(tiles * M * N * K),
            "banded_band": float(B * G * P * y.padded * x.padded + B * G * P * Ho * Wo * (1 + window_taps(spec))),
        },
        "banded_backward",
        wide="banded_float64",
    )


#: Built-in constants (see :data:`xcorr.volumes.backends.shifted.CONSTANTS`).
CONSTANTS = {
    "AVX2": {
        "banded_call": 260000.0,
        "banded_chunk": 290000.0,
        "banded_mac": 0.104,
        "banded_band": 1.70,
        "banded_backward": 1.97,
        "banded_float64": 2.0,
    }
}


VOLUME_BACKEND = VolumeBackend("banded", run=cost_volume, bind=bind, fits=fits, terms=terms, constants=CONSTANTS)
