"""Correlation by real FFTs.

Only the valid outputs are needed, so the transform length only has to cover the padded search
(not search + template - 1): circular wrap-around never reaches a kept output. Lengths are
2·3·5·7-smooth (fast in pocketfft and cuFFT). Channels are summed in the frequency domain where
the mode sums them, dilation is applied by spreading the template's taps, and stride by keeping
every ``s``-th output, so every geometry is exact.

The cost hardly depends on the template size, which is why FFT wins for large templates; its
float32 error stays near 1e-7 of the largest output even where direct convolution, summing
hundreds of thousands of products, loses 1e-3.

* Backward: in the frequency domain, reusing the spectra saved by the forward pass (one forward
  transform of the output gradient and one inverse transform per input).
* Overlap-save: when the search is much larger than the template, it is cut into overlapping
  tiles of a short fast length, which costs fewer operations than one long transform.
* Memory: the work is cut into chunks of items (and of channels, where one item is too big) whose
  search spectra fit :data:`CHUNK_BYTES`, so peak memory stays bounded and the spectra stay in
  cache.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, cast

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..._compute import finite_footprint, needs_grad
from ..._spares import OUTPUTS
from ..._tracing import tracing
from ...planning.cost import Terms
from ..adjoint import spread
from ..spec import Pair, Spec, Spec3d
from ._base import Backend

#: Bytes of search spectra one chunk transforms at a time. Small chunks keep the temporaries in
#: cache and below glibc's 32 MiB mmap threshold: larger ones are mapped fresh from the kernel on
#: every call, and zeroing their pages cost more than the transforms themselves (one 34 MB
#: spectrum per array made B8 C64 128x128 / 32x32 3.5x slower than chunks of 4 MB).
CHUNK_BYTES = 4 << 20
#: Bytes of search spectra per chunk where one map alone passes :data:`CHUNK_BYTES` (an image of
#: about 1024x1024 and more): below glibc's 32 MiB mmap threshold.
LARGE_MAP_CHUNK_BYTES = 24 << 20
#: Bytes of spectra (search, template, output, gradients) one up-channel chunk may hold.
UPCHANNEL_CHUNK_BYTES = 1 << 30

#: Up-channel products over at most this many search channels are broadcast products, beyond an
#: einsum (a matrix product per frequency).
FEW_UPCHANNEL_CHANNELS = 4

#: Bytes of one template spectrum from which :func:`_conjugate_spectrum` transforms map by map
#: (64 maps of 256x256 lost 1.2x to the loop; 1024x1024 maps gained 3.5x).
LARGE_SPECTRUM_BYTES = 1 << 20

#: Tile only where it saves at least this fraction of the transform work (tiles add overhead).
TILE_MIN_SAVING = 0.3


def next_fast_len(n: int) -> int:
    """The smallest 2·3·5·7-smooth integer >= ``n`` (fast pocketfft / cuFFT length)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _transform_cost(n: int) -> float:
    return n * math.log2(max(n, 2))


def tile_length(padded: int, span: int) -> int:
    """The overlap-save tile length along one axis, or ``padded`` itself when tiling does not pay.

    ``span`` is the dilated template's extent; each tile of length ``T`` yields ``T - span + 1``
    valid outputs. The cost counted is tiles x ``T log T``.
    """
    outputs = padded - span + 1
    whole = next_fast_len(padded)
    best, best_cost = whole, _transform_cost(whole)
    T = next_fast_len(2 * span)
    while T < whole:
        cost = math.ceil(outputs / (T - span + 1)) * _transform_cost(T)
        if cost < best_cost:
            best, best_cost = T, cost
        T = next_fast_len(T + 1)
    if best != whole and best_cost > (1 - TILE_MIN_SAVING) * _transform_cost(whole):
        return whole
    return best


def _spectra_sum(Y: torch.Tensor, dim: int) -> torch.Tensor:
    """``Y.sum(dim, keepdim=True)`` for spectra; column-major ones (:func:`_spectrum_like`) by
    halving: elementwise adds of the two halves keep their layout, where a complex reduction
    runs a slow loop and turns them row-major (three 1024x1024 maps at two threads: 0.22
    against 6.5 ms; row-major maps sum fast, 32 of 128x128 in 0.03 ms against 0.10 by halving)."""
    if Y.stride(-1) == 1:
        return Y.sum(dim, keepdim=True)
    n = Y.shape[dim]
    while n > 1:
        half = n // 2
        summed = Y.narrow(dim, 0, half) + Y.narrow(dim, half, half)
        if n % 2:
            summed.narrow(dim, 0, 1).add_(Y.narrow(dim, n - 1, 1))
        Y, n = summed, half
    return Y


def _combine(X: torch.Tensor, Zc: torch.Tensor, mode: str, k: int, overwrite: bool = False) -> torch.Tensor:
    """Frequency-domain product and channel reduction: (B, C, F) x (Bz, Cz, F) -> (B, K, F).

    With ``overwrite`` the product is written into ``X`` (modes naive and depthwise): a search
    spectrum that no gradient needs is not kept, and a fresh product of its size would be mapped
    and zero-filled by the kernel on every call once it passes glibc's mmap threshold.
    """
    B, C = X.shape[:2]
    Bz = Zc.shape[0]
    X = X.reshape(Bz, k, C, *X.shape[2:])
    if mode == "upchannel":
        Zk = Zc.reshape(Bz, -1, C, *Zc.shape[2:])
        if C <= FEW_UPCHANNEL_CHANNELS:
            # Broadcast products summed over the few channels (grey or colour images against many
            # templates); einsum's matrix-product layout costs more than it saves there.
            Y = X.unsqueeze(2) * Zk.unsqueeze(1)
            Y = _spectra_sum(Y, 3).squeeze(3)
        else:
            Y = torch.einsum("bkcuv,bjcuv->bkjuv", X, Zk)
    else:
        Y = X.mul_(Zc.unsqueeze(1)) if overwrite else X * Zc.unsqueeze(1)
        if mode == "naive":
            Y = _spectra_sum(Y, 2)
    return Y.reshape(B, -1, *Y.shape[3:])


def _place(t: torch.Tensor, L: Pair, at: Pair = (0, 0)) -> torch.Tensor:
    """``t`` placed at offset ``at`` in zeros of spatial size ``L``, in one write pass
    (``F.pad`` fills the whole buffer, then copies: twice the memory traffic)."""
    *lead, H, W = t.shape
    (r, c), (L0, L1) = at, L
    if (r, c) == (0, 0) and (H, W) == (L0, L1):
        return t
    out = t.new_empty(*lead, L0, L1)
    out[..., r : r + H, c : c + W] = t
    out[..., :r, :] = 0
    out[..., r + H :, :] = 0
    out[..., r : r + H, :c] = 0
    out[..., r : r + H, c + W :] = 0
    return out


def _irfft2(Y: torch.Tensor, L: Pair, rows: slice, cols: slice) -> torch.Tensor:
    """``irfft2(Y, s=L)[..., rows, cols]``, on pieces of maps of at most :data:`CHUNK_BYTES` of
    spectra (one map at least) where ``Y`` holds more: an up-channel chunk's many output maps
    in one inverse took 2.5-3x as long as one at a time (8 templates on a 1024² image, 146
    against 53 ms, one thread), its temporaries mapped fresh and out of cache."""
    *lead, Fh, Fw = Y.shape
    per_map = Fh * Fw * Y.element_size()
    maps = math.prod(lead)
    step = max(1, CHUNK_BYTES // per_map)
    if maps <= step:
        return _irfft2_whole(Y, L, rows, cols)
    flat = Y.reshape(maps, Fh, Fw)
    first = _irfft2_whole(flat[:step], L, rows, cols)
    out = first.new_empty(maps, *first.shape[1:])
    out[:step] = first
    for i in range(step, maps, step):
        out[i : i + step] = _irfft2_whole(flat[i : i + step], L, rows, cols)
    return out.view(*lead, *first.shape[1:])


def _irfft2_whole(Y: torch.Tensor, L: Pair, rows: slice, cols: slice) -> torch.Tensor:
    """``irfft2(Y, s=L)[..., rows, cols]``, the last (real) transform run on the kept rows only.

    Never slower than one ``irfft2``, even where nearly every row is kept (pocketfft, 1 thread,
    25th percentiles: 1024² keeping 961 rows 12.9 vs 13.7 ms, 2048² keeping 1921 54.7 vs 58.6 ms,
    2048 maps of 32² keeping 25 rows 10.1 vs 10.8 ms).
    """
    if rows.stop - rows.start == L[0]:
        return torch.fft.irfft2(Y, s=L)[..., rows, cols]
    y = torch.fft.ifft(Y, dim=-2)[..., rows, :]
    return torch.fft.irfft(y, n=L[1], dim=-1)[..., cols]


# Conjugates are taken with conj_physical: a lazily conjugated operand sends the products
# below through a copy-and-multiply path about 2x slower than a plain complex multiply.


#: A template of at most this fraction of the transform's rows takes its real transform on its
#: own rows only (:func:`_conjugate_spectrum`); larger ones take ``rfft2``.
FEW_TEMPLATE_ROWS = 1 / 8


def _few_rows(h: int, L: Pair) -> bool:
    """Whether a template of ``h`` rows has few rows for transform length ``L`` (see
    :data:`FEW_TEMPLATE_ROWS`)."""
    return h <= FEW_TEMPLATE_ROWS * L[0]


def _conjugate_spectrum(zd: torch.Tensor, L: Pair) -> torch.Tensor:
    """``conj(rfft2(zd))`` at length ``L``, conjugated in place. A template of few rows (see
    :data:`FEW_TEMPLATE_ROWS`) takes the real transform on its own rows only, the zero rows
    joining in the second, complex one (:func:`_column_major_spectrum`): 45% less than ``rfft2``
    with its zero padding (a 64x64 template at 1024x1024: 1.6 vs 2.9 ms at one thread, 1.3 vs
    2.3 at two; 128x128 at 2048x2048: 11.5 vs 20.5 ms at one). Where the template fills half
    the rows, the complex transform along the strided rows costs more than it saves (256
    channels of 127x127 at 256x256: 115 vs 77 ms), so ``rfft2`` it is."""
    if not _few_rows(zd.shape[-2], L):
        return torch.fft.rfft2(zd, s=L).conj_physical_()
    return _column_major_spectrum(zd, L).conj_physical_()


def _column_major_spectrum(t: torch.Tensor, L: Pair) -> torch.Tensor:
    """``rfft2(t, s=L)`` by a real transform along each row, then a complex one along each
    column, which leaves its maps column-major (the rows' axis fastest).

    Maps of :data:`LARGE_SPECTRUM_BYTES` and more are transformed one by one into a column-major
    buffer: the complex transform along the rows of many at once copies them, 3.5x as long per
    map (8 templates of 40x40 at 1024x1024, one thread: 78 against 22 ms; three 1024x1024 images:
    33 against 9 ms for ``rfft2``)."""
    *lead, h, w = t.shape
    maps = math.prod(lead)
    if maps == 1 or L[0] * (L[1] // 2 + 1) * 2 * t.element_size() < LARGE_SPECTRUM_BYTES or tracing():
        return torch.fft.fft(torch.fft.rfft(t, n=L[1], dim=-1), n=L[0], dim=-2)
    flat = t.reshape(maps, h, w)
    dtype = torch.promote_types(t.dtype, torch.complex64)
    out = torch.empty(maps, L[1] // 2 + 1, L[0], dtype=dtype, device=t.device).transpose(1, 2)
    for i in range(maps):
        torch.fft.fft(torch.fft.rfft(flat[i], n=L[1], dim=-1), n=L[0], dim=-2, out=out[i])
    return out.view(*lead, L[0], L[1] // 2 + 1)


def _spectrum_like(t: torch.Tensor, L: Pair, like: torch.Tensor) -> torch.Tensor:
    """``rfft2(t, s=L)`` in the memory layout of the spectrum ``like``, which it will multiply:
    column-major (:func:`_column_major_spectrum`) where ``like`` is, as the conjugate spectra of
    templates of few rows are. A product of two spectra of different layouts reads one across
    its rows, 5-6x slower than one of matching layouts (a 1024x1024 map at one thread: 1.9
    against 0.3 ms); the two transforms cost about what ``rfft2`` does, and the inverse
    transform along the rows then reads contiguous columns."""
    if like.dim() >= 2 and like.stride(-2) == 1 and like.shape[-1] > 1 and t.shape[-2] > 1:
        return _column_major_spectrum(t, L)
    return torch.fft.rfft2(t, s=L)


class _SpectralCorrelation(torch.autograd.Function):
    """Valid, stride-1 correlation in the frequency domain, at transform length ``L``, of searches
    ``x`` (B, C, H, W), zero-padded by ``padding``, with dilated templates ``zd`` (Bz, Cz, hd, wd);
    ``Zc``, the conjugate template spectrum, may come precomputed (template plans)."""

    @staticmethod
    def forward(ctx, x, zd, Zc, mode, L, padding):
        B, Bz = x.shape[0], zd.shape[0]
        (ph, pw), (H, W), (hd, wd) = padding, x.shape[-2:], zd.shape[-2:]
        if Zc is None:
            Zc = _conjugate_spectrum(zd, L)
        X = _spectrum_like(_place(x, L, padding), L, Zc)
        Hv, Wv = H + 2 * ph - hd + 1, W + 2 * pw - wd + 1
        # Each gradient needs the other input's spectrum only; an unneeded search spectrum takes
        # the product in place.
        search_grad, template_grad = ctx.needs_input_grad[:2]
        ctx.save_for_backward(X if template_grad else None, Zc if search_grad else None)
        ctx.mode, ctx.L, ctx.padding, ctx.sizes = mode, L, padding, (x.shape, zd.shape)
        Y = _combine(X, Zc, mode, B // Bz, overwrite=not template_grad)
        return _irfft2(Y, L, slice(0, Hv), slice(0, Wv))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        # The saved spectra carry no graph: second derivatives need method="direct".
        X, Zc = ctx.saved_tensors
        (B, C, H, W), (Bz, Cz, hd, wd) = ctx.sizes
        (ph, pw), L, k = ctx.padding, ctx.L, B // Bz
        G = _spectrum_like(_place(g, L), L, X if Zc is None else Zc)
        G = G.reshape(Bz, k, -1, *G.shape[2:])
        gx = gz = None
        if ctx.needs_input_grad[0]:
            # The search gradient convolves the output gradient with the template: G * conj(Zc).
            if ctx.mode == "upchannel":
                Gx = torch.einsum("bkjuv,bjcuv->bkcuv", G, Zc.reshape(Bz, -1, C, *Zc.shape[2:]).conj_physical())
            else:
                Gx = G * Zc.conj_physical().unsqueeze(1)
            gx = _irfft2(Gx.reshape(B, C, *Gx.shape[3:]), L, slice(ph, ph + H), slice(pw, pw + W))
        if ctx.needs_input_grad[1]:
            # The template gradient correlates the search with the output gradient, over items.
            X = X.reshape(Bz, k, C, *X.shape[2:])
            if ctx.mode == "upchannel":
                Gz = torch.einsum("bkcuv,bkjuv->bjcuv", X, G.conj_physical())
            else:
                Gz = _spectra_sum(X * G.conj_physical(), 1).squeeze(1)
            gz = _irfft2(Gz.reshape(Bz, Cz, *Gz.shape[-2:]), L, slice(0, hd), slice(0, wd))
        return gx, gz, None, None, None, None


def axis_plan(padded: int, span: int) -> tuple[int, int, int]:
    """How one axis is transformed: (tiles, tile extent, transform length).

    Without tiling that is one tile of the whole padded search at its fast length. Remembered
    for plain ints: the search for the tile length costs up to 0.7 ms an axis (1024 long, a
    64-tap template), as much as a small correlation.
    """
    if type(padded) is int and type(span) is int:  # not while tracing with symbolic sizes
        return _axis_plan_of_ints(padded, span)
    return _axis_plan(padded, span)


@functools.lru_cache(maxsize=1024)
def _axis_plan_of_ints(padded: int, span: int) -> tuple[int, int, int]:
    return _axis_plan(padded, span)


def _axis_plan(padded: int, span: int) -> tuple[int, int, int]:
    T, whole = tile_length(padded, span), next_fast_len(padded)
    if T >= whole or T >= padded:
        return 1, padded, whole
    return math.ceil((padded - span + 1) / (T - span + 1)), T, T


def _tiles(xp: torch.Tensor, T: Pair, step: Pair, n: Pair) -> torch.Tensor:
    """Cut ``xp`` (B, C, Hp, Wp) into ``n`` overlapping tiles of extent ``T``: (B*nh*nw, C, T0, T1)."""
    B, C, Hp, Wp = xp.shape
    xp = F.pad(xp, (0, (n[1] - 1) * step[1] + T[1] - Wp, 0, (n[0] - 1) * step[0] + T[0] - Hp))
    t = xp.unfold(2, T[0], step[0]).unfold(3, T[1], step[1])  # (B, C, nh, nw, T0, T1)
    return t.permute(0, 2, 3, 1, 4, 5).reshape(B * n[0] * n[1], C, *T)


@dataclass(frozen=True)
class Layout:
    """How a problem is transformed: transform length ``L``; overlap-save tiles of extent ``T``,
    ``n`` of them per axis, a step of ``step`` apart (``n == (1, 1)``: no tiling); and the size of
    the stride-1 valid output."""

    L: Pair
    T: Pair
    n: Pair
    step: Pair
    valid: Pair

    @staticmethod
    def of(spec: Spec) -> Layout:
        (hd, wd), (Hp, Wp) = spec.dilated_template, spec.padded_search
        (nh, Th, Lh), (nw, Tw, Lw) = (axis_plan(p, s) for p, s in zip(spec.padded_search, spec.dilated_template))
        return Layout(
            L=(Lh, Lw), T=(Th, Tw), n=(nh, nw), step=(Th - hd + 1, Tw - wd + 1), valid=(Hp - hd + 1, Wp - wd + 1)
        )


def chunk_plan(spec: Spec) -> tuple[int, int]:
    """(search items, channels) per chunk, so that a chunk's search spectra fit :data:`CHUNK_BYTES`.

    Whole items are preferred; an item whose channels alone exceed the budget is cut by channels.
    Up-channel chunks are larger: its frequency-domain product (an einsum over channels) copies
    the whole template spectrum into a bins-first layout once per chunk, which small chunks would
    repeat many times (2.5x slower for 8 items sharing one 256x10-channel template). It takes
    whole items whose spectra (search, output, their gradients and its share of the templates)
    fit :data:`UPCHANNEL_CHUNK_BYTES`.
    """
    C = spec.channels
    layout = Layout.of(spec)
    (nh, nw), (Lh, Lw) = layout.n, layout.L
    per_map = nh * nw * Lh * (Lw // 2 + 1) * 2 * spec.dtype.itemsize
    if spec.mode == "upchannel":
        Cz, k, K = spec.z_shape[1], spec.k, spec.out_channels
        shared = spec.templates == 1
        per_item = per_map * (2 * (C + K) + (0 if shared else Cz / max(k, 1)))
        budget = UPCHANNEL_CHUNK_BYTES - (per_map * Cz if shared else 0)
        return max(1, int(budget // per_item)), C
    # A map that alone passes the budget has left the cache whatever the chunk: then naive mode's
    # channels are only cut to stay below the mmap threshold, since each cut costs an inverse
    # transform and a sum in space (depthwise mode transforms every channel back anyway).
    large = per_map >= CHUNK_BYTES and spec.mode == "naive"
    budget = LARGE_MAP_CHUNK_BYTES if large else CHUNK_BYTES
    maps = max(1, budget // per_map)
    if maps >= C:
        return _even(spec.batch, maps // C), C
    return 1, _even(C, maps)


def _parts(n: int, most: int) -> int:
    """The fewest parts of at most ``most`` that ``n`` splits into (at least one)."""
    return max(1, -(-n // most))


def _even_slices(n: int, most: int) -> list[slice]:
    """``n`` split into :func:`_parts` parts whose sizes differ by one at most
    (256 channels in parts of at most 15: 18 parts of 14 or 15, not 17 of 15 and one of 1)."""
    parts = _parts(n, most)
    bounds = [i * n // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _even(n: int, most: int) -> int:
    """The size of :func:`_parts` near-equal parts of ``n`` when all but the last are equal: no
    tiny leftover part (63 + 1 channels cost two chunks' fixed costs for 64 channels' work)."""
    return max(1, -(-n // _parts(n, most)))


def chunk_count(spec: Spec) -> int:
    """How many chunks :func:`prepare`'s ``run`` cuts ``spec`` into (for the cost model)."""
    if spec.batch == 0:
        return 0
    items, chans = chunk_plan(spec)
    return len(_item_chunks(spec, items)) * _parts(spec.channels, chans)


def _item_chunks(spec: Spec | Spec3d, per: int) -> list[tuple[slice, slice]]:
    """(items, templates) of each chunk: whole templates with all of their ``k`` items, or, when
    one template's items exceed ``per``, runs of one template's items."""
    B, Bz, k = spec.batch, spec.templates, spec.k
    if Bz == 1:
        return [(slice(i, min(B, i + per)), slice(0, 1)) for i in range(0, B, per)]
    if per >= k:
        t = per // k
        return [(slice(i * k, min(Bz, i + t) * k), slice(i, min(Bz, i + t))) for i in range(0, Bz, t)]
    return [(slice(i * k + j, i * k + min(k, j + per)), slice(i, i + 1)) for i in range(Bz) for j in range(0, k, per)]


def _template_channels(z: torch.Tensor, mode: str, C: int, channels: slice) -> torch.Tensor:
    """The template channels that meet search channels ``channels`` (all K groups in up-channel)."""
    if mode != "upchannel":
        return z[:, channels]
    Bz, _, *rest = z.shape
    return z.reshape(Bz, -1, C, *rest)[:, :, channels].reshape(Bz, -1, *rest)


def _join(parts: list[torch.Tensor], mode: str) -> torch.Tensor:
    """One item chunk's channel chunks: side by side in depthwise mode, else partial sums."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, 1) if mode == "depthwise" else sum(parts[1:], parts[0])


def _spectrum(zd: torch.Tensor, L: Pair) -> torch.Tensor:
    """The conjugate template spectrum, taken as data (the backward pass handles the template)."""
    with torch.no_grad():
        return _conjugate_spectrum(zd, L)


def _output_groups(spec: Spec, layout: Layout, grad: bool) -> int:
    """Output maps per group where an up-channel chunk is transformed group by group
    (:func:`_upchannel_groups`), or 0 where it is not: without gradients, untiled, for searches
    of few channels, and where the template spectra (and products) of all maps, K x C of them,
    would pass :data:`CHUNK_BYTES`."""
    if grad or spec.mode != "upchannel" or layout.n != (1, 1) or spec.channels > FEW_UPCHANNEL_CHANNELS:
        return 0
    Lh, Lw = layout.L
    per_map = Lh * (Lw // 2 + 1) * 2 * spec.dtype.itemsize
    K, C = spec.out_channels, spec.channels
    if K * C * per_map <= CHUNK_BYTES:  # the template spectra and products of all maps fit
        return 0
    return _even(K, max(1, CHUNK_BYTES // (per_map * C)))


def _upchannel_groups(
    x: torch.Tensor, zd: torch.Tensor, Zc: torch.Tensor | None, spec: Spec, layout: Layout, group: int
) -> torch.Tensor:
    """Up-channel correlation of searches ``x`` (all of them one template's, or one item per
    template) without gradients, ``group`` output maps at a time: the search is transformed
    once, and each group's template spectra, products and inverse transforms stay within
    :data:`CHUNK_BYTES`, reused from group to group (8 templates of 40x40 against a 1024x1024
    image: one spectrum of the image instead of one per call of two, and none of the 34 MB
    arrays that glibc maps fresh from the kernel on every call)."""
    B, C = x.shape[:2]
    Bz, K = zd.shape[0], spec.out_channels
    L, (ph, pw) = layout.L, spec.padding
    Hv, Wv = layout.valid
    z = zd.reshape(Bz, K, C, *zd.shape[2:])
    Zk = None if Zc is None else Zc.reshape(Bz, K, C, *Zc.shape[2:])
    out = OUTPUTS.empty((B, K, Hv, Wv), x.dtype, x.device)
    spectra = _GroupSpectra(z, L, group) if Zk is None else None
    X = None
    for g in _even_slices(K, group):
        Zg = spectra.of(g) if spectra is not None else cast(torch.Tensor, Zk)[:, g].flatten(1, 2)
        if X is None:
            X = _spectrum_like(_place(x, L, (ph, pw)), L, Zg)
        if C == 1 and B == Bz and spectra is not None:
            Y = Zg.mul_(X)  # the group's own spectra, one map per output: the product in place
        else:
            Y = _combine(X, Zg, "upchannel", B // Bz)
        out[:, g] = _irfft2(Y, L, slice(0, Hv), slice(0, Wv))
    return out


class _GroupSpectra:
    """The conjugate spectra of :func:`_upchannel_groups`' template groups, made one group at a
    time in two buffers reused by every group: a template of few rows (see
    :data:`FEW_TEMPLATE_ROWS`) has its rows' real transforms placed in zeros made once (a fresh
    padded transform zero-fills a whole spectrum per template) and its columns transformed along
    the buffer's contiguous axis, which leaves the spectrum column-major as
    :func:`_column_major_spectrum` does (8 templates of 40x40 at 1024x1024: 0.92-0.94 of the
    time, bit for bit the same); larger ones take :func:`_conjugate_spectrum`."""

    def __init__(self, z: torch.Tensor, L: Pair, group: int) -> None:
        self.z, self.L = z, L  # (Bz, K, C, h, w)
        Bz, _, C, h, _ = z.shape
        self.few = _few_rows(h, L) and not tracing()
        if self.few:
            dtype = torch.promote_types(z.dtype, torch.complex64)
            shape = (Bz, group * C, L[1] // 2 + 1, L[0])
            self.padded = torch.zeros(shape, dtype=dtype, device=z.device)
            self.spectrum = torch.empty(shape, dtype=dtype, device=z.device)

    def of(self, g: slice) -> torch.Tensor:
        """The conjugate spectra (Bz, |g|*C, Lh, Lw//2+1) of the templates of ``g``: valid until
        the next call."""
        Bz, _, C, h, w = self.z.shape
        t = self.z[:, g].reshape(Bz, -1, h, w)
        if not self.few:
            return _conjugate_spectrum(t, self.L)
        maps = t.shape[1]
        padded, spectrum = self.padded[:, :maps], self.spectrum[:, :maps]
        padded[..., :h].copy_(torch.fft.rfft(t, n=self.L[1], dim=-1).transpose(-1, -2))
        torch.fft.fft(padded, dim=-1, out=spectrum)
        return spectrum.transpose(-1, -2).conj_physical_()


def _correlate_chunk(
    x: torch.Tensor, zd: torch.Tensor, Zc: torch.Tensor | None, spec: Spec, layout: Layout
) -> torch.Tensor:
    """Stride-1 valid correlation of one chunk, whole or in overlap-save tiles."""
    if layout.n == (1, 1):
        return _SpectralCorrelation.apply(x, zd, Zc, spec.mode, layout.L, spec.padding)
    (ph, pw), (nh, nw), step = spec.padding, layout.n, layout.step
    B = x.shape[0]
    # Tiles of one item are consecutive, so they keep sharing that item's template.
    tiles = _tiles(F.pad(x, (pw, pw, ph, ph)), layout.T, step, layout.n)
    y = _SpectralCorrelation.apply(tiles, zd, Zc, spec.mode, layout.L, (0, 0))
    K = y.shape[1]
    y = y.reshape(B, nh, nw, K, *step).permute(0, 3, 1, 4, 2, 5).reshape(B, K, nh * step[0], nw * step[1])
    return y[..., : layout.valid[0], : layout.valid[1]]


def _run(
    x: torch.Tensor, zd: torch.Tensor, Zd: torch.Tensor | None, spec: Spec, layout: Layout, grad: bool
) -> torch.Tensor:
    """:func:`_chunked`, with the footprint of non-finite searches that direct summation has.

    A NaN or infinity in a transform spreads to every output of its chunk, where summation
    touches only the windows that contain it: :func:`~xcorr._compute.finite_footprint` restores
    it, the windows counted by a correlation with a template of ones. Non-finite templates need
    nothing: every window uses every tap, in both.
    """

    def windows(mask: torch.Tensor) -> torch.Tensor:
        return _chunked(mask, spread(mask.new_ones(spec.z_shape), spec.dilation), None, spec, layout, False)

    return finite_footprint(lambda x: _chunked(x, zd, Zd, spec, layout, grad), x, windows)


def _chunked(
    x: torch.Tensor, zd: torch.Tensor, Zd: torch.Tensor | None, spec: Spec, layout: Layout, grad: bool
) -> torch.Tensor:
    """The correlation of searches ``x`` with dilated templates ``zd``, chunk by chunk.

    ``Zd``, the conjugate spectrum of all of ``zd``, is given by template plans; otherwise each
    chunk transforms its own templates (which keeps the working set small), except that one
    template serving several chunks is transformed once.
    """
    items, chans = chunk_plan(spec)
    chunks = _item_chunks(spec, items)
    group = _output_groups(spec, layout, grad)
    if group:  # (up-channel chunks hold every channel: see chunk_plan)
        parts = [_upchannel_groups(x[i], zd[t], None if Zd is None else Zd[t], spec, layout, group) for i, t in chunks]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    else:
        out = _chunk_by_chunk(x, zd, Zd, spec, layout, grad, chunks, chans)
    sh, sw = spec.stride
    return out[..., ::sh, ::sw].contiguous()


def _chunk_by_chunk(
    x: torch.Tensor,
    zd: torch.Tensor,
    Zd: torch.Tensor | None,
    spec: Spec,
    layout: Layout,
    grad: bool,
    chunks: list[tuple[slice, slice]],
    chans: int,
) -> torch.Tensor:
    """:func:`_chunked`'s stride-1 output, chunk of items by chunk of ``chans`` channels."""
    mode, C = spec.mode, spec.channels
    channel_chunks = _even_slices(C, chans)
    # Without a backward pass, chunks are written straight into the output: one copy instead
    # of a concatenation by channels and another by items.
    one = len(chunks) * len(channel_chunks) == 1
    out = None if grad or one else x.new_empty(spec.batch, spec.out_channels, *layout.valid)
    rows: list[list[torch.Tensor]] = [[] for _ in chunks]
    for cs in channel_chunks:
        whole = chans == C
        zc = zd if whole else _template_channels(zd, mode, C, cs)
        Zc = Zd if whole or Zd is None else _template_channels(Zd, mode, C, cs)
        if Zc is None and spec.templates == 1 and len(chunks) > 1:
            Zc = _spectrum(zc, layout.L)
        xc = x if whole else x[:, cs]
        for row, (i, t) in zip(rows, chunks):
            y = _correlate_chunk(xc[i], zc[t], None if Zc is None else Zc[t], spec, layout)
            if out is None:
                row.append(y)
            elif mode == "depthwise":
                out[i, cs] = y
            elif cs.start == 0:
                out[i] = y
            else:
                out[i] += y  # partial sums over channel chunks
    if out is None:
        parts = [_join(row, mode) for row in rows]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out


def correlate(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The correlation of ``spec`` by real FFTs."""
    return _run(x, spread(z, spec.dilation), None, spec, Layout.of(spec), needs_grad(x, z))


def prepare(z: torch.Tensor, spec: Spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """Template plans: the template's spectrum is taken once, from ``z``'s values now; gradients
    still flow to ``z``."""
    layout, zd = Layout.of(spec), spread(z, spec.dilation)
    Zd = _spectrum(zd, layout.L)
    return lambda x: _run(x, zd, Zd, spec.with_batch(x.shape[0]), layout, needs_grad(x, zd))


def bind(spec: Spec, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eager calls of one signature: the transform layout worked out once."""
    layout, dilation = Layout.of(spec), spec.dilation
    return lambda x, z: _run(x, spread(z, dilation), None, spec, layout, grad)


def terms(spec: Spec) -> Terms:
    """The cost model's counts: the transforms' points (times ``log2`` of their length) and the
    frequency-domain products, over the overlap-save tiles, and the chunks of bounded memory."""
    B, C = spec.x_shape[:2]
    Bz, Cz = spec.z_shape[:2]
    K = spec.out_channels
    layout = Layout.of(spec)
    (nh, nw), (Lh, Lw) = layout.n, layout.L
    points, bins = Lh * Lw, Lh * (Lw // 2 + 1)
    transforms = (B * nh * nw * (C + K) + Bz * Cz) * points * math.log2(points)
    products = B * nh * nw * bins * (C * K if spec.mode == "upchannel" else C)
    return Terms(
        {"fft_call": 1.0, "fft_chunk": float(chunk_count(spec)), "fft_point": transforms, "fft_product": products},
        "fft_backward",
        wide="float64_fft",
    )


#: Built-in constants per CPU capability (see :data:`xcorr.correlation.backends.direct.CONSTANTS`).
CONSTANTS = {
    "AVX512": {
        "fft_call": 393000.0,
        "fft_chunk": 0.0,
        "fft_point": 0.133,
        "fft_product": 2.78,
        "fft_backward": 1.8,
        "float64_fft": 1.7,
    },
    "AVX2": {
        "fft_call": 264000.0,
        "fft_chunk": 60500.0,
        "fft_point": 0.186,
        "fft_product": 4.74,
        "fft_backward": 1.73,
        "float64_fft": 1.7,
    },
}


#: Runs where ``torch.fft`` has kernels.
BACKEND = Backend(
    "fft", run=correlate, prepare=prepare, bind=bind, devices=("cpu", "cuda"), terms=terms, constants=CONSTANTS
)


# Volumes (5-D searches and templates): one real transform over the three axes per map, at fast
# lengths that cover the search (the valid outputs need no more), channels summed in the frequency
# domain for ``"naive"``; differentiable through ``torch.fft``'s own gradients. Chunks of whole
# items keep each chunk's search spectra within :data:`LARGE_MAP_CHUNK_BYTES` (a volume's map
# passes :data:`CHUNK_BYTES` from about 100³).

_AXES_3D = (-3, -2, -1)


def volume_lengths(spec: Spec3d) -> tuple[int, int, int]:
    """The transform lengths of a volume problem: each axis of the search at its fast length."""
    D, H, W = (next_fast_len(n) for n in spec.x_shape[2:])
    return D, H, W


def volume_items_per_chunk(spec: Spec3d) -> int:
    """Search items per chunk: their spectra (all channels) within :data:`LARGE_MAP_CHUNK_BYTES`."""
    L = volume_lengths(spec)
    per_map = L[0] * L[1] * (L[2] // 2 + 1) * 2 * spec.dtype.itemsize
    return max(1, LARGE_MAP_CHUNK_BYTES // (per_map * spec.channels))


def _volume_spectrum(z: torch.Tensor, L: tuple[int, int, int]) -> torch.Tensor:
    return torch.fft.rfftn(z, s=L, dim=_AXES_3D).conj_physical()


def _volumes_chunked(
    x: torch.Tensor, z: torch.Tensor, spec: Spec3d, L: tuple[int, int, int], grad: bool
) -> torch.Tensor:
    Do, Ho, Wo = spec.out_size
    chunks = _item_chunks(spec, volume_items_per_chunk(spec))
    shared = _volume_spectrum(z, L) if spec.templates == 1 and len(chunks) > 1 else None
    parts = []
    for items, templates in chunks:
        Zc = shared if shared is not None else _volume_spectrum(z[templates], L)
        X = torch.fft.rfftn(x[items], s=L, dim=_AXES_3D)
        Y = _combine(X, Zc, spec.mode, spec.k, overwrite=not grad)
        parts.append(torch.fft.irfftn(Y, s=L, dim=_AXES_3D)[..., :Do, :Ho, :Wo])
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


def _run_volumes(x: torch.Tensor, z: torch.Tensor, spec: Spec3d, L: tuple[int, int, int], grad: bool) -> torch.Tensor:
    """:func:`_volumes_chunked`, with direct summation's footprint of non-finite searches (see :func:`_run`)."""

    def windows(mask: torch.Tensor) -> torch.Tensor:
        return _volumes_chunked(mask, mask.new_ones(spec.z_shape), spec, L, False)

    return finite_footprint(lambda x: _volumes_chunked(x, z, spec, L, grad), x, windows)


def correlate_volumes(x: torch.Tensor, z: torch.Tensor, spec: Spec3d) -> torch.Tensor:
    """The volume correlation of ``spec`` by real FFTs over three axes."""
    return _run_volumes(x, z, spec, volume_lengths(spec), needs_grad(x, z))


def prepare_volumes(z: torch.Tensor, spec: Spec3d) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform lengths worked out once."""
    L = volume_lengths(spec)
    return lambda x: _run_volumes(x, z, spec.with_batch(x.shape[0]), L, needs_grad(x, z))


def bind_volumes(spec: Spec3d, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eager calls of one signature: the transform lengths worked out once."""
    L = volume_lengths(spec)
    return lambda x, z: _run_volumes(x, z, spec, L, grad)


def terms_volumes(spec: Spec3d) -> Terms:
    """:func:`terms`' counts for transforms over three axes (no tiles)."""
    B, C = spec.x_shape[:2]
    Bz, K = spec.templates, spec.out_channels
    L = volume_lengths(spec)
    points, bins = math.prod(L), L[0] * L[1] * (L[2] // 2 + 1)
    chunks = len(_item_chunks(spec, volume_items_per_chunk(spec))) if B else 0
    return Terms(
        {
            "fft_call": 1.0,
            "fft_chunk": float(chunks),
            "fft_point": (B * (C + K) + Bz * C) * points * math.log2(points),
            "fft_product": B * bins * C,
        },
        "fft_backward",
        wide="float64_fft",
    )


#: Volumes (:class:`~xcorr.correlation.spec.Spec3d`), with the 2-D record's constants.
BACKEND_3D: Backend[Spec3d] = Backend(
    "fft",
    run=correlate_volumes,
    prepare=prepare_volumes,
    bind=bind_volumes,
    devices=("cpu", "cuda"),
    modes=("naive", "depthwise"),
    terms=terms_volumes,
    constants=CONSTANTS,
)
