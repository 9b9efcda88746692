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
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
    """``irfft2(Y, s=L)[..., rows, cols]``; where at most half the rows are kept, only those are
    transformed along the last axis (the column pass then costs an extra copy, so it only pays
    when it saves half of the row transforms)."""
    if rows.stop - rows.start > L[0] // 2 + 1:
        return torch.fft.irfft2(Y, s=L)[..., rows, cols]
    y = torch.fft.ifft(Y, dim=-2)[..., rows, :]
    return torch.fft.irfft(y, n=L[1], dim=-1)[..., cols]


# Conjugates are taken with conj_physical: a lazily conjugated operand sends the products
# below through a copy-and-multiply path about 2x slower than a plain complex multiply.


class _Valid(torch.autograd.Function):
    """Valid, stride-1 correlation of searches ``x`` (B, C, H, W), zero-padded by ``padding``,
    with dilated templates ``zd`` (Bz, Cz, hd, wd) at transform length ``L``; ``Zc``, the
    conjugate template spectrum, may come precomputed (template plans)."""

    @staticmethod
    def forward(ctx, x, zd, Zc, mode, L, padding):
        B, Bz = x.shape[0], zd.shape[0]
        (ph, pw), (H, W), (hd, wd) = padding, x.shape[-2:], zd.shape[-2:]
        X = torch.fft.rfft2(_place(x, L, padding))
        if Zc is None:
            Zc = torch.fft.rfft2(_place(zd, L)).conj_physical()
        Hv, Wv = H + 2 * ph - hd + 1, W + 2 * pw - wd + 1
        ctx.save_for_backward(X, Zc)
        ctx.mode, ctx.L, ctx.padding, ctx.sizes = mode, L, padding, (x.shape, zd.shape)
        return _irfft2(_combine(X, Zc, mode, B // Bz), L, slice(0, Hv), slice(0, Wv))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        # The saved spectra carry no graph: second derivatives need method="direct".
        X, Zc = ctx.saved_tensors
        (B, C, H, W), (Bz, Cz, hd, wd) = ctx.sizes
        (ph, pw), L, k = ctx.padding, ctx.L, B // Bz
        G = torch.fft.rfft2(_place(g, L))
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
                Gz = (X * G.conj_physical()).sum(1)
            gz = _irfft2(Gz.reshape(Bz, Cz, *Gz.shape[-2:]), L, slice(0, hd), slice(0, wd))
        return gx, gz, None, None, None, None


def axis_plan(padded: int, span: int) -> tuple[int, int, int]:
    """How one axis is transformed: (tiles, tile extent, transform length).

    Without tiling that is one tile of the whole padded search at its fast length.
    """
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


def chunk_items(spec: Spec) -> int:
    """How many search items one chunk may hold so that its spectra fit :data:`MEMORY_BUDGET`.

    Counted per item: its search spectrum and its output spectrum (kept for the backward pass)
    and as much again for the gradients' spectra, plus its share of the template spectra.
    """
    C, Cz, k, K = spec.channels, spec.z_shape[1], spec.k, spec.out_channels
    (nh, _, Lh), (nw, _, Lw) = (axis_plan(p, s) for p, s in zip(spec.padded_search, spec.dilated_template))
    bins = nh * nw * Lh * (Lw // 2 + 1) * 2 * spec.dtype.itemsize
    shared = spec.templates == 1
    per_item = bins * (2 * (C + K) + (0 if shared else Cz / max(k, 1)))
    budget = MEMORY_BUDGET - (bins * Cz if shared else 0)
    return max(1, int(budget // per_item))


def prepare(z: torch.Tensor, spec: Spec) -> Callable[[torch.Tensor, Spec], torch.Tensor]:
    """Precompute what depends on the template alone (its spectrum); return ``run(x, spec)``.

    The spectrum is taken from ``z``'s values now; gradients still flow to ``z``.
    """
    (ph, pw), (sh, sw) = spec.padding, spec.stride
    (hd, wd) = spec.dilated_template
    (nh, Th, Lh), (nw, Tw, Lw) = (axis_plan(p, s) for p, s in zip(spec.padded_search, spec.dilated_template))
    L, T, n = (Lh, Lw), (Th, Tw), (nh, nw)
    step = (Th - hd + 1, Tw - wd + 1)
    zd = _spread(z, spec.dilation)
    with torch.no_grad():
        Zc = torch.fft.rfft2(_place(zd, L)).conj_physical()

    def valid(x: torch.Tensor, zd: torch.Tensor, Zc: torch.Tensor) -> torch.Tensor:
        if n == (1, 1):
            return _Valid.apply(x, zd, Zc, spec.mode, L, spec.padding)
        xp = F.pad(x, (pw, pw, ph, ph))
        B, (Hp, Wp) = xp.shape[0], xp.shape[-2:]
        # Tiles of one item are consecutive, so they keep sharing that item's template.
        y = _Valid.apply(_tiles(xp, T, step, n), zd, Zc, spec.mode, L, (0, 0))
        K = y.shape[1]
        y = y.reshape(B, nh, nw, K, *step).permute(0, 3, 1, 4, 2, 5).reshape(B, K, nh * step[0], nw * step[1])
        return y[..., : Hp - hd + 1, : Wp - wd + 1]

    def run(x: torch.Tensor, spec: Spec) -> torch.Tensor:
        per = chunk_items(spec)
        if per >= spec.batch:
            y = valid(x, zd, Zc)
        elif spec.templates == 1:
            y = torch.cat([valid(xc, zd, Zc) for xc in x.split(per)])
        else:
            # Whole templates per chunk, each with all of its k search items.
            t = max(1, per // spec.k)
            y = torch.cat([valid(*c) for c in zip(x.split(t * spec.k), zd.split(t), Zc.split(t))])
        return y[..., ::sh, ::sw].contiguous()

    return run


def xcorr(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    return prepare(z, spec)(x, spec)
