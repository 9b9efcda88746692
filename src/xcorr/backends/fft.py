"""Correlation by real FFTs.

Only the valid outputs are needed, so the transform length only has to cover the padded search
(not search + template - 1): circular wrap-around never reaches a kept output. Channels are
summed in the frequency domain where the mode sums them, dilation is applied by spreading the
template's taps, and stride by keeping every ``s``-th output, so every geometry is exact.
The cost hardly depends on the template size, which is why FFT wins for large templates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._spec import Spec


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


def _spread(z: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    dh, dw = dilation
    if dh == dw == 1:
        return z
    Bz, Cz, h, w = z.shape
    zd = z.new_zeros(Bz, Cz, dh * (h - 1) + 1, dw * (w - 1) + 1)
    zd[:, :, ::dh, ::dw] = z
    return zd


def xcorr(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    B, C, H, W = spec.x_shape
    Bz = spec.templates
    k, K = spec.k, spec.out_channels
    Hp, Wp = spec.padded_search
    hd, wd = spec.dilated_template
    (ph, pw), (sh, sw) = spec.padding, spec.stride
    L = (next_fast_len(Hp), next_fast_len(Wp))

    X = torch.fft.rfft2(F.pad(x, (pw, pw, ph, ph)), s=L)
    Zc = torch.fft.rfft2(_spread(z, spec.dilation), s=L).conj()
    X = X.reshape(Bz, k, C, *X.shape[-2:])
    if spec.mode == "depthwise":
        Y = X * Zc.unsqueeze(1)
    else:
        Zc = Zc.reshape(Bz, K, C, *Zc.shape[-2:])
        Y = torch.einsum("bkcuv,bjcuv->bkjuv", X, Zc)
    y = torch.fft.irfft2(Y.reshape(B, K, *Y.shape[-2:]), s=L)
    return y[:, :, : Hp - hd + 1 : sh, : Wp - wd + 1 : sw].contiguous()
