"""The Siamese trackers' correlations at their real sizes, forward and forward+backward.

Peers: the grouped-convolution formulation that trackers write by hand (``F.conv2d`` with the
batch folded into channels and ``groups=B`` or ``groups=B*C``) and the same formulation run by
``fft_conv_pytorch.fft_conv`` (package ``fft-conv-pytorch``). Inputs are uniform in [0, 1), as in
the founding example: all-positive sums are the hard case for float32 accuracy.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F

import xcorr

from . import OURS, Case

#: Import names of the peers' packages (the runner reports the suite unavailable without them).
PEERS = ("fft_conv_pytorch",)

Conv = Callable[..., torch.Tensor]


def grouped(conv: Conv, x: torch.Tensor, z: torch.Tensor, mode: str) -> torch.Tensor:
    """The hand-written formulation of each mode with ``conv`` (``F.conv2d`` or ``fft_conv``)."""
    B, C, H, W = x.shape
    Bz, Cz, h, w = z.shape
    if mode == "naive" and Bz == 1:
        return conv(x, z)
    if mode == "naive":
        out = conv(x.reshape(1, B * C, H, W), z, groups=B)
    elif mode == "depthwise" and Bz == 1:
        return conv(x, z.reshape(C, 1, h, w), groups=C)
    elif mode == "depthwise":
        out = conv(x.reshape(1, B * C, H, W), z.reshape(B * C, 1, h, w), groups=B * C)
    else:
        out = conv(x.reshape(1, B * C, H, W), z.reshape(B * (Cz // C), C, h, w), groups=B)
    return out.reshape(B, -1, *out.shape[-2:])


def _step(fn: Callable[[], torch.Tensor], tensors: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """Forward and backward of ``fn``, gradients reset so that they are not accumulated."""

    def run() -> None:
        for t in tensors:
            t.grad = None
        fn().sum().backward()

    return run


def _forward(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return fn()

    return run


def _device() -> torch.device:
    """The device factory functions use now (the runner's ``--device`` sets it)."""
    return torch.empty(0).device


def _inputs(x_shape, z_shape, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(x_shape, generator=gen).to(_device())
    z = torch.rand(z_shape, generator=gen).to(_device())
    return x.requires_grad_(grad), z.requires_grad_(grad)


def _info(x_shape, z_shape, mode: str, grad: bool) -> Callable[[], dict[str, Any]]:
    """The method ``auto`` picks and its float32 error relative to the largest float64 output."""

    def info() -> dict[str, Any]:
        x, z = _inputs(x_shape, z_shape, grad)
        method = xcorr.choose_method(x, z, mode)
        with torch.no_grad():
            ours = xcorr.xcorr(x, z, mode).double()
            exact = xcorr.xcorr(x.double(), z.double(), mode, method="fft")
        error = ((ours - exact).abs().max() / exact.abs().max()).item()
        return {"method": str(method.passes), "error": error}

    return info


def _case(name: str, x_shape, z_shape, mode: str, grad: bool, target: float, repeats: int = 0) -> Case:
    def setup() -> dict[str, Callable[[], Any]]:
        from fft_conv_pytorch import fft_conv

        # The peer indexes with a list, which torch deprecates: that warning is the peer's, not ours.
        warnings.filterwarnings("ignore", "Using a non-tuple sequence", UserWarning)
        x, z = _inputs(x_shape, z_shape, grad)
        contenders = {
            OURS: lambda: xcorr.xcorr(x, z, mode),
            "grouped conv": lambda: grouped(F.conv2d, x, z, mode),
            "fft-conv-pytorch": lambda: grouped(fft_conv, x, z, mode),
        }
        wrap = (lambda fn: _step(fn, (x, z))) if grad else _forward
        return {key: wrap(fn) for key, fn in contenders.items()}

    label = f"{name} {'fwd+bwd' if grad else 'fwd'}"
    return Case("siamese", label, setup, target, repeats, _info(x_shape, z_shape, mode, grad))


#: (name, x shape, z shape, mode, forward target, forward+backward target or None)
SHAPES = [
    ("SiamFC tracking", (3, 256, 22, 22), (1, 256, 6, 6), "naive", 0.25, 0.5),
    ("SiamFC training B8", (8, 256, 22, 22), (8, 256, 6, 6), "naive", 0.15, 0.25),
    ("SiamFC training B64", (64, 256, 22, 22), (64, 256, 6, 6), "naive", 0.2, 0.3),
    ("SiamRPN up-channel", (8, 256, 20, 20), (8, 2560, 4, 4), "upchannel", 1.0, 0.8),
    ("SiamRPN++ tracking", (1, 256, 31, 31), (1, 256, 7, 7), "depthwise", 1.2, 0.5),
    ("SiamRPN++ training B32", (32, 256, 31, 31), (32, 256, 7, 7), "depthwise", 1.0, 0.3),
    ("mid B8 C64 128/32", (8, 64, 128, 128), (8, 64, 32, 32), "depthwise", 0.6, 0.6),
    ("seed full size naive", (1, 256, 255, 255), (1, 256, 127, 127), "naive", 0.8, None),
    ("seed full size depthwise", (1, 256, 255, 255), (1, 256, 127, 127), "depthwise", 0.8, None),
]


def cases() -> list[Case]:
    out = []
    for name, xs, zs, mode, fwd, both in SHAPES:
        slow = xs[-1] > 200  # the grouped conv takes 10-20 s a call here
        out.append(_case(name, xs, zs, mode, False, fwd, repeats=2 if slow else 0))
        if both is not None:
            out.append(_case(name, xs, zs, mode, True, both))
    return out
