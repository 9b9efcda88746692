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
* Memory: the batch is processed in chunks whose spectra fit :data:`MEMORY_BUDGET` bytes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._spec import Pair, Spec

#: Bytes of spectra (search, template and product) one chunk of the batch may hold at once.
MEMORY_BUDGET = 1 << 30

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


def _spread(z: torch.Tensor, dilation: Pair) -> torch.Tensor:
    dh, dw = dilation
    if dh == dw == 1:
        return z
    Bz, Cz, h, w = z.shape
    zd = z.new_zeros(Bz, Cz, dh * (h - 1) + 1, dw * (w - 1) + 1)
    zd[:, :, ::dh, ::dw] = z
    return zd


def _combine(X: torch.Tensor, Zc: torch.Tensor, mode: str, k: int) -> torch.Tensor:
    """Frequency-domain product and channel reduction: (B, C, F) x (Bz, Cz, F) -> (B, K, F)."""
    B, C = X.shape[:2]
    Bz = Zc.shape[0]
    X = X.reshape(Bz, k, C, *X.shape[2:])
    if mode == "depthwise":
        Y = X * Zc.unsqueeze(1)
    elif mode == "naive":
        Y = (X * Zc.unsqueeze(1)).sum(2, keepdim=True)
    else:
        Y = torch.einsum("bkcuv,bjcuv->bkjuv", X, Zc.reshape(Bz, -1, C, *Zc.shape[2:]))
    return Y.reshape(B, -1, *Y.shape[3:])


class _Valid(torch.autograd.Function):
    """Valid, stride-1 correlation of padded searches ``xp`` (B, C, Hp, Wp) with dilated
    templates ``zd`` (Bz, Cz, hd, wd) at transform length ``L``."""

    @staticmethod
    def forward(ctx, xp, zd, mode, L):
        B, Bz = xp.shape[0], zd.shape[0]
        X = torch.fft.rfft2(xp, s=L)
        Zc = torch.fft.rfft2(zd, s=L).conj()
        y = torch.fft.irfft2(_combine(X, Zc, mode, B // Bz), s=L)
        (Hp, Wp), (hd, wd) = xp.shape[-2:], zd.shape[-2:]
        ctx.save_for_backward(X, Zc)
        ctx.mode, ctx.L, ctx.sizes = mode, L, (xp.shape, zd.shape)
        return y[..., : Hp - hd + 1, : Wp - wd + 1]

    @staticmethod
    def backward(ctx, g):
        X, Zc = ctx.saved_tensors
        xs, zs = ctx.sizes
        B, C, Hp, Wp = xs
        Bz, Cz, hd, wd = zs
        k = B // Bz
        G = torch.fft.rfft2(g, s=ctx.L)
        G = G.reshape(Bz, k, -1, *G.shape[2:])
        X = X.reshape(Bz, k, C, *X.shape[2:])
        gx = gz = None
        if ctx.needs_input_grad[0]:
            # d out / d x is a convolution with the template: spectrum G * Z = G * conj(Zc).
            if ctx.mode == "upchannel":
                Gx = torch.einsum("bkjuv,bjcuv->bkcuv", G, Zc.reshape(Bz, -1, C, *Zc.shape[2:]).conj())
            else:
                Gx = G * Zc.conj().unsqueeze(1)
            gx = torch.fft.irfft2(Gx.reshape(B, C, *Gx.shape[3:]), s=ctx.L)[..., :Hp, :Wp]
        if ctx.needs_input_grad[1]:
            # d out / d z correlates the search with the output gradient: X * conj(G), over items.
            if ctx.mode == "upchannel":
                Gz = torch.einsum("bkcuv,bkjuv->bjcuv", X, G.conj())
            else:
                Gz = (X * G.conj()).sum(1)
            gz = torch.fft.irfft2(Gz.reshape(Bz, Cz, *Gz.shape[-2:]), s=ctx.L)[..., :hd, :wd]
        return gx, gz, None, None


def _tiles(xp: torch.Tensor, T: Pair, step: Pair) -> tuple[torch.Tensor, Pair]:
    """Cut ``xp`` (B, C, Hp, Wp) into overlapping tiles: (B * nh * nw, C, T0, T1)."""
    B, C, Hp, Wp = xp.shape
    nh = max(math.ceil((Hp - T[0]) / step[0]), 0) + 1
    nw = max(math.ceil((Wp - T[1]) / step[1]), 0) + 1
    xp = F.pad(xp, (0, (nw - 1) * step[1] + T[1] - Wp, 0, (nh - 1) * step[0] + T[0] - Hp))
    t = xp.unfold(2, T[0], step[0]).unfold(3, T[1], step[1])  # (B, C, nh, nw, T0, T1)
    return t.permute(0, 2, 3, 1, 4, 5).reshape(B * nh * nw, C, *T), (nh, nw)


def _valid(xp: torch.Tensor, zd: torch.Tensor, mode: str) -> torch.Tensor:
    """Stride-1 valid correlation, tiled (overlap-save) where that is cheaper."""
    B, C, Hp, Wp = xp.shape
    Bz, _, hd, wd = zd.shape
    T = (tile_length(Hp, hd), tile_length(Wp, wd))
    L = (next_fast_len(Hp), next_fast_len(Wp))
    if T == L:
        return _Valid.apply(xp, zd, mode, L)
    T = (min(T[0], Hp), min(T[1], Wp))
    step = (T[0] - hd + 1, T[1] - wd + 1)
    tiles, (nh, nw) = _tiles(xp, T, step)
    # Tiles of one item are consecutive, so they keep sharing that item's template.
    y = _Valid.apply(tiles, zd, mode, (next_fast_len(T[0]), next_fast_len(T[1])))
    K = y.shape[1]
    y = y.reshape(B, nh, nw, K, *step).permute(0, 3, 1, 4, 2, 5).reshape(B, K, nh * step[0], nw * step[1])
    return y[..., : Hp - hd + 1, : Wp - wd + 1]


def chunk_items(spec: Spec) -> int:
    """How many search items one chunk may hold so that its spectra fit :data:`MEMORY_BUDGET`.

    Counted per item: its search spectrum and its output spectrum (kept for the backward pass)
    and as much again for the gradients' spectra, plus its share of the template spectra.
    """
    C, Cz, k, K = spec.channels, spec.z_shape[1], spec.k, spec.out_channels
    L = [next_fast_len(n) for n in spec.padded_search]
    bins = L[0] * (L[1] // 2 + 1) * 2 * torch.empty((), dtype=spec.dtype).element_size()
    shared = spec.templates == 1
    per_item = bins * (2 * (C + K) + (0 if shared else Cz / max(k, 1)))
    budget = MEMORY_BUDGET - (bins * Cz if shared else 0)
    return max(1, int(budget // per_item))


def xcorr(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    (ph, pw), (sh, sw) = spec.padding, spec.stride
    xp = F.pad(x, (pw, pw, ph, ph))
    zd = _spread(z, spec.dilation)
    Bz, k = spec.templates, spec.k
    n = chunk_items(spec)
    if n >= spec.batch:
        y = _valid(xp, zd, spec.mode)
    elif Bz == 1:
        y = torch.cat([_valid(xc, zd, spec.mode) for xc in xp.split(n)])
    else:
        # Whole templates per chunk, each with all of its k search items.
        per = max(1, n // k)
        y = torch.cat(
            [_valid(xc, zc, spec.mode) for xc, zc in zip(xp.split(per * k), zd.split(per))]
        )
    return y[..., ::sh, ::sw].contiguous()
