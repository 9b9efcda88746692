"""The definition of correctness: a slow, obvious float64 loop over output positions.

Both references are differentiable: autograd through the loop gives the reference gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def xcorr_reference(x, z, mode="naive", padding=0, stride=1, dilation=1, positions=None):
    """``xcorr(x, z, ...)`` in float64, one output position at a time.

    With ``positions`` (a list of (i, j)), returns only those outputs, shape (B, K, len(positions)).
    """
    (ph, pw), (sh, sw), (dh, dw) = _pair(padding), _pair(stride), _pair(dilation)
    x, z = x.double(), z.double()
    B, C, H, W = x.shape
    Bz, Cz, h, w = z.shape
    k = B // Bz if Bz else 0
    zb = z.repeat_interleave(k, dim=0)  # template of each search item
    xp = F.pad(x, (pw, pw, ph, ph))
    Ho = (H + 2 * ph - dh * (h - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (w - 1) - 1) // sw + 1
    K = {"naive": 1, "depthwise": C, "upchannel": Cz // max(C, 1)}[mode]
    wanted = positions if positions is not None else [(i, j) for i in range(Ho) for j in range(Wo)]
    out = torch.zeros(B, K, len(wanted), dtype=torch.float64)
    for n, (i, j) in enumerate(wanted):
        win = xp[:, :, i * sh : i * sh + dh * (h - 1) + 1 : dh, j * sw : j * sw + dw * (w - 1) + 1 : dw]
        if mode == "naive":
            out[:, 0, n] = (win * zb).sum((1, 2, 3))
        elif mode == "depthwise":
            out[:, :, n] = (win * zb).sum((2, 3))
        else:
            out[:, :, n] = (win.unsqueeze(1) * zb.reshape(B, K, C, h, w)).sum((2, 3, 4))
    return out if positions is not None else out.reshape(B, K, Ho, Wo)


def xcorr_reference_grads(x, z, mode, weight, **kwargs):
    """Gradients of ``(xcorr(x, z, mode, **kwargs) * weight).sum()`` wrt ``x`` and ``z``, in float64.

    A random ``weight`` makes every output's gradient differ, so that a misplaced one shows.
    """
    x, z = x.detach().double().requires_grad_(True), z.detach().double().requires_grad_(True)
    return torch.autograd.grad((xcorr_reference(x, z, mode, **kwargs) * weight.double()).sum(), (x, z))


def pixelwise_reference(x, z):
    """``pixelwise(x, z)`` in float64, one template pixel at a time."""
    x, z = x.double(), z.double()
    B, C, H, W = x.shape
    Bz, _, h, w = z.shape
    k = B // Bz if Bz else 0
    zb = z.repeat_interleave(k, dim=0)
    out = torch.zeros(B, h * w, H, W, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            out[:, i * w + j] = (x * zb[:, :, i, j, None, None]).sum(1)
    return out


def _at(t, rows, cols):
    """``t[..., rows[:, None], cols[None, :]]`` with zeros where an index falls outside ``t``."""
    H, W = t.shape[-2:]
    inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
    picked = t[..., rows.clamp(0, H - 1)[:, None], cols.clamp(0, W - 1)[None, :]]
    return picked * inside


def volume_reference(f1, f2, spec):
    """``correlate(f1, f2, spec)`` in float64, from the definition: one (displacement, tap) at a time."""
    f1, f2 = f1.double(), f2.double()
    B, C, H, W = f1.shape
    G = spec.groups
    (oy, ox), (sy, sx), (Ho, Wo) = spec.origin, spec.stride, spec.out_size
    (kh, kw), (dh, dw) = spec.kernel, spec.kernel_dilation
    (dy0, dys, Py), (dx0, dxs, Px) = spec.dy, spec.dx
    out = torch.zeros(B, G, Py * Px, Ho, Wo, dtype=torch.float64)
    for i in range(Py):
        for j in range(Px):
            for u in range(kh):
                for v in range(kw):
                    Y = oy + torch.arange(Ho) * sy + u * dh
                    X = ox + torch.arange(Wo) * sx + v * dw
                    prod = _at(f1, Y, X) * _at(f2, Y + dy0 + i * dys, X + dx0 + j * dxs)
                    out[:, :, i * Px + j] += prod.reshape(B, G, C // G, Ho, Wo).sum(2)
    return out * spec.scale


def local_correlation_reference(
    f1, f2, max_displacement, displacement_stride=1, stride=1, kernel_size=1, normalize="none", layout="flat"
):
    """``local_correlation`` in float64, one output position and displacement at a time."""
    f1, f2 = f1.double(), f2.double()
    B, C, H, W = f1.shape
    ds, s, k = displacement_stride, stride, kernel_size
    R, kr = max_displacement // ds, (k - 1) // 2
    P = 2 * R + 1
    Ho, Wo = -(-H // s), -(-W // s)
    pad = kr + R * ds + k  # every tap of every displacement lands inside
    g1, g2 = F.pad(f1, (pad,) * 4), F.pad(f2, (pad,) * 4)
    out = torch.zeros(B, P, P, Ho, Wo, dtype=torch.float64)
    for y in range(Ho):
        for x in range(Wo):
            Y, X = y * s + pad - kr, x * s + pad - kr
            patch = g1[:, :, Y : Y + k, X : X + k]
            for i in range(P):
                for j in range(P):
                    Yd, Xd = Y + (i - R) * ds, X + (j - R) * ds
                    out[:, i, j, y, x] = (patch * g2[:, :, Yd : Yd + k, Xd : Xd + k]).sum((1, 2, 3))
    out = out / {"none": 1.0, "mean": k * k * C, "sqrt": math.sqrt(C)}[normalize]
    return out if layout == "grid" else out.reshape(B, P * P, Ho, Wo)


def stereo_reference(left, right, max_disparity, groups=None, normalize="mean"):
    """``stereo_correlation`` in float64, one disparity and column at a time (DispNetC, GwcNet)."""
    left, right = left.double(), right.double()
    B, C, H, W = left.shape
    G = groups or 1
    Cg = C // G
    out = torch.zeros(B, G, max_disparity, H, W, dtype=torch.float64)
    for d in range(max_disparity):
        for x in range(d, W):
            prod = (left[:, :, :, x] * right[:, :, :, x - d]).reshape(B, G, Cg, H)
            out[:, :, d, :, x] = prod.sum(2)
    out = out / {"none": 1.0, "mean": Cg, "sqrt": math.sqrt(Cg)}[normalize]
    return out if groups is not None else out[:, 0]


def _bilinear(img, px, py):
    """Bilinear samples of ``img`` (B, H, W) at pixel positions ``px``, ``py`` (n,), zero outside: (B, n)."""
    H, W = img.shape[-2:]
    out = torch.zeros(img.shape[0], px.numel(), dtype=torch.float64)
    x0, y0 = px.floor(), py.floor()
    for cx in (x0, x0 + 1):
        for cy in (y0, y0 + 1):
            weight = (1 - (px - cx).abs()) * (1 - (py - cy).abs())
            inside = (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H)
            value = img[:, cy.long().clamp(0, H - 1), cx.long().clamp(0, W - 1)]
            out = out + value * (weight * inside)
    return out


def corr_pyramid_reference(f1, f2, coords, num_levels, radius):
    """RAFT's ``CorrBlock(f1, f2, num_levels, radius)(coords)`` in float64, from its definition.

    The all-pairs volume ``f1[:, :, y, x] . f2 / sqrt(C)`` per pixel of f1, average-pooled 2x2
    (sizes rounded down) ``l`` times, sampled bilinearly at ``coords / 2**l + (i - r, j - r)``
    with zeros outside; channel ``l*K*K + i*K + j`` (x offset ``i - r`` major), ``K = 2r + 1``.
    """
    f1, f2, coords = f1.double(), f2.double(), coords.double()
    B, C, H, W = f1.shape
    K = 2 * radius + 1
    offsets = torch.arange(K, dtype=torch.float64) - radius
    di = offsets.repeat_interleave(K)  # x offset of channel i*K + j
    dj = offsets.repeat(K)  # y offset
    out = torch.zeros(B, num_levels * K * K, H, W, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            level = (f1[:, :, y, x, None, None] * f2).sum(1) / math.sqrt(C)  # (B, H, W)
            for lv in range(num_levels):
                if lv:
                    h, w = level.shape[-2] // 2, level.shape[-1] // 2
                    level = level[:, : 2 * h, : 2 * w].reshape(B, h, 2, w, 2).mean((2, 4))
                for b in range(B):
                    X, Y = coords[b, 0, y, x] / 2**lv, coords[b, 1, y, x] / 2**lv
                    samples = _bilinear(level[b : b + 1], X + di, Y + dj)
                    out[b, lv * K * K : (lv + 1) * K * K, y, x] = samples[0]
    return out


def _linear(row, px):
    """Linear samples of ``row`` (W,) at pixel positions ``px`` (n,), zero outside: (n,)."""
    W = row.shape[-1]
    out = torch.zeros(px.numel(), dtype=torch.float64)
    x0 = px.floor()
    for cx in (x0, x0 + 1):
        inside = (cx >= 0) & (cx < W)
        out = out + row[cx.long().clamp(0, W - 1)] * ((1 - (px - cx).abs()) * inside)
    return out


def stereo_pyramid_reference(left, right, coords, num_levels, radius):
    """RAFT-Stereo's ``CorrBlock1D(left, right, num_levels, radius)(coords)`` in float64, from its
    definition.

    Per row ``h``, the all-pairs volume ``left[:, :, h, w1] . right[:, :, h, w2] / sqrt(C)``,
    average-pooled along ``w2`` in pairs (widths rounded down) ``l`` times, sampled linearly at
    ``coords[:, 0] / 2**l + d``, ``d = -r ... r``, with zeros outside; channel ``l*(2r+1) + d + r``.
    """
    left, right, x = left.double(), right.double(), coords[:, 0].double()
    B, C, H, W = left.shape
    K = 2 * radius + 1
    offsets = torch.arange(K, dtype=torch.float64) - radius
    out = torch.zeros(B, num_levels * K, H, W, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            level = left[b, :, h, :].t() @ right[b, :, h, :] / math.sqrt(C)  # (w1, w2)
            for lv in range(num_levels):
                if lv:
                    w = level.shape[-1] // 2
                    level = level[:, : 2 * w].reshape(W, w, 2).mean(-1)
                for w1 in range(W):
                    out[b, lv * K : (lv + 1) * K, h, w1] = _linear(level[w1], x[b, h, w1] / 2**lv + offsets)
    return out
