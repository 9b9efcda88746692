"""The compiled loops of :mod:`xcorr.volumes.backends.fused` (numba; imported only when that
backend first runs).

Every loop takes the grid of ``f1`` positions (``R0, Rs, nr`` rows, ``C0, Cs, nc`` columns) and
the displacements (``dy0, dys, Py``, ``dx0, dxs, Px``) of a
:class:`~xcorr.volumes.spec.VolumeSpec`'s product grid, reads the maps in their own
(B, C, H, W) layout, treats every position outside them as zero, and runs its outer loop in
parallel over rows whose outputs no other row writes. Channels go four at a time, so that a
row of the accumulator is read and written once per four products.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's own thread pool, unless the environment names one: GNU OpenMP's (numba's default
    # here) terminates a forked child that launches the loops, as a DataLoader worker or a
    # multiprocessing pool would; the backend's lock keeps launches to one thread at a time.
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

# Contraction into fused multiply-adds only: no reassociation, and NaN and infinity behave.
_serial = njit(cache=True, fastmath={"contract"}, boundscheck=False, error_model="numpy", nogil=True)
_parallel = njit(parallel=True, cache=True, fastmath={"contract"}, boundscheck=False, error_model="numpy", nogil=True)


@_serial
def _columns(dx, C0, Cs, nc, W):
    """The output columns ``c`` (``c0 <= c < c1``) whose ``f1`` column ``C0 + c*Cs`` and ``f2``
    column ``C0 + c*Cs + dx`` both lie in ``[0, W)``."""
    lo = max(0, -dx) - C0
    hi = min(W, W - dx) - C0
    c0 = max(0, -((-lo) // Cs))
    c1 = min(nc, -((-hi) // Cs))
    return c0, max(c0, c1)


@_parallel
def forward(f1, f2, out, R0, Rs, nr, C0, Cs, nc, dy0, dys, Py, dx0, dxs, Px, scale):
    """``out`` (B, G, Py*Px, nr, nc): the products of the grid's ``f1`` positions with ``f2``
    displaced, summed over each group's channels, times ``scale``."""
    B, C, H, W = f1.shape
    G = out.shape[1]
    Cg = C // G
    for task in prange(B * nr):
        b = task // nr
        r = task - b * nr
        y1 = R0 + r * Rs
        acc = np.empty((Px, nc), dtype=out.dtype)
        for g in range(G):
            for i in range(Py):
                y2 = y1 + dy0 + i * dys
                acc[:, :] = 0
                if 0 <= y1 < H and 0 <= y2 < H:
                    ch, end = g * Cg, (g + 1) * Cg
                    while ch < end:
                        if ch + 4 <= end:
                            a0, a1, a2, a3 = f1[b, ch, y1], f1[b, ch + 1, y1], f1[b, ch + 2, y1], f1[b, ch + 3, y1]
                            s0, s1, s2, s3 = f2[b, ch, y2], f2[b, ch + 1, y2], f2[b, ch + 2, y2], f2[b, ch + 3, y2]
                            for j in range(Px):
                                dx = dx0 + j * dxs
                                c0, c1 = _columns(dx, C0, Cs, nc, W)
                                row = acc[j]
                                if Cs == 1:
                                    p, n = C0 + c0, c1 - c0
                                    q = p + dx
                                    b0, b1, b2, b3 = a0[p : p + n], a1[p : p + n], a2[p : p + n], a3[p : p + n]
                                    t0, t1, t2, t3 = s0[q : q + n], s1[q : q + n], s2[q : q + n], s3[q : q + n]
                                    o = row[c0:c1]
                                    for c in range(n):
                                        o[c] += b0[c] * t0[c] + b1[c] * t1[c] + b2[c] * t2[c] + b3[c] * t3[c]
                                else:
                                    for c in range(c0, c1):
                                        x = C0 + c * Cs
                                        row[c] += (
                                            a0[x] * s0[x + dx]
                                            + a1[x] * s1[x + dx]
                                            + a2[x] * s2[x + dx]
                                            + a3[x] * s3[x + dx]
                                        )
                            ch += 4
                        else:
                            a, s = f1[b, ch, y1], f2[b, ch, y2]
                            for j in range(Px):
                                dx = dx0 + j * dxs
                                c0, c1 = _columns(dx, C0, Cs, nc, W)
                                row = acc[j]
                                for c in range(c0, c1):
                                    x = C0 + c * Cs
                                    row[c] += a[x] * s[x + dx]
                            ch += 1
                for j in range(Px):
                    dst = out[b, g, i * Px + j, r]
                    src = acc[j]
                    for c in range(nc):
                        dst[c] = src[c] * scale


@_parallel
def grad_f1(grad, f2, g1, R0, Rs, nr, C0, Cs, nc, dy0, dys, Py, dx0, dxs, Px, scale):
    """``g1`` (B, C, H, W, zero off the grid) from the output gradient ``grad`` (B, G, Py*Px,
    nr, nc): each grid row of ``f1`` gets the gradient rows of its displacements times the
    displaced rows of ``f2``."""
    B, C, H, W = f2.shape
    G = grad.shape[1]
    Cg = C // G
    for task in prange(B * nr):
        b = task // nr
        r = task - b * nr
        y1 = R0 + r * Rs
        if y1 < 0 or y1 >= H:
            continue
        acc = np.empty((4, nc), dtype=g1.dtype)
        for g in range(G):
            ch, end = g * Cg, (g + 1) * Cg
            while ch < end:
                k = min(4, end - ch)
                acc[:, :] = 0
                for i in range(Py):
                    y2 = y1 + dy0 + i * dys
                    if y2 < 0 or y2 >= H:
                        continue
                    for j in range(Px):
                        dx = dx0 + j * dxs
                        c0, c1 = _columns(dx, C0, Cs, nc, W)
                        gr = grad[b, g, i * Px + j, r]
                        if k == 4 and Cs == 1:
                            q, n = C0 + c0 + dx, c1 - c0
                            t0, t1, t2, t3 = (
                                f2[b, ch, y2, q : q + n],
                                f2[b, ch + 1, y2, q : q + n],
                                f2[b, ch + 2, y2, q : q + n],
                                f2[b, ch + 3, y2, q : q + n],
                            )
                            gv = gr[c0:c1]
                            o0, o1, o2, o3 = acc[0, c0:c1], acc[1, c0:c1], acc[2, c0:c1], acc[3, c0:c1]
                            for c in range(n):
                                v = gv[c]
                                o0[c] += v * t0[c]
                                o1[c] += v * t1[c]
                                o2[c] += v * t2[c]
                                o3[c] += v * t3[c]
                        else:
                            for u in range(k):
                                s = f2[b, ch + u, y2]
                                o = acc[u]
                                for c in range(c0, c1):
                                    o[c] += gr[c] * s[C0 + c * Cs + dx]
                for u in range(k):
                    dst = g1[b, ch + u, y1]
                    for c in range(nc):
                        x = C0 + c * Cs
                        if 0 <= x < W:
                            dst[x] = acc[u, c] * scale
                ch += k


@_parallel
def grad_f2(grad, f1, g2, R0, Rs, nr, C0, Cs, nc, dy0, dys, Py, dx0, dxs, Px, scale):
    """``g2`` (B, C, H, W) from the output gradient ``grad`` (B, G, Py*Px, nr, nc): each row of
    ``f2`` gets the gradient rows of the grid rows and displacements that reach it times those
    grid rows of ``f1``."""
    B, C, H, W = f1.shape
    G = grad.shape[1]
    Cg = C // G
    for task in prange(B * H):
        b = task // H
        y2 = task - b * H
        acc = np.empty((4, W), dtype=g2.dtype)
        for g in range(G):
            ch, end = g * Cg, (g + 1) * Cg
            while ch < end:
                k = min(4, end - ch)
                acc[:, :] = 0
                for i in range(Py):
                    y1 = y2 - dy0 - i * dys
                    t = y1 - R0
                    if y1 < 0 or y1 >= H or t % Rs != 0:
                        continue
                    r = t // Rs
                    if r < 0 or r >= nr:
                        continue
                    for j in range(Px):
                        dx = dx0 + j * dxs
                        c0, c1 = _columns(dx, C0, Cs, nc, W)
                        gr = grad[b, g, i * Px + j, r]
                        if k == 4 and Cs == 1:
                            p, n = C0 + c0, c1 - c0
                            a0, a1, a2, a3 = (
                                f1[b, ch, y1, p : p + n],
                                f1[b, ch + 1, y1, p : p + n],
                                f1[b, ch + 2, y1, p : p + n],
                                f1[b, ch + 3, y1, p : p + n],
                            )
                            gv = gr[c0:c1]
                            q = p + dx
                            o0, o1, o2, o3 = acc[0, q : q + n], acc[1, q : q + n], acc[2, q : q + n], acc[3, q : q + n]
                            for c in range(n):
                                v = gv[c]
                                o0[c] += v * a0[c]
                                o1[c] += v * a1[c]
                                o2[c] += v * a2[c]
                                o3[c] += v * a3[c]
                        else:
                            for u in range(k):
                                a = f1[b, ch + u, y1]
                                o = acc[u]
                                for c in range(c0, c1):
                                    x = C0 + c * Cs
                                    o[x + dx] += gr[c] * a[x]
                for u in range(k):
                    dst = g2[b, ch + u, y2]
                    src = acc[u]
                    for x in range(W):
                        dst[x] = src[x] * scale
                ch += k
