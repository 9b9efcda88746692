"""The definition of correctness: a slow, obvious float64 loop over output positions.

Both references are differentiable: autograd through the loop gives the reference gradients.
"""

from __future__ import annotations

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
