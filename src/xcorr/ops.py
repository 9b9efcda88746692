"""Public functionals: normalise the arguments, ask the planner, call a backend."""
from __future__ import annotations

import torch

from . import planner
from ._checks import check_choice, check_xcorr
from .backends import BACKENDS

METHODS = ("auto", *BACKENDS)

# Dtypes that some kernels (CPU convolutions, pocketfft) lack: computed in float32.
_UPCAST = (torch.float16, torch.bfloat16)


def _needs_grad(x: torch.Tensor, z: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or z.requires_grad)


def xcorr(
    x: torch.Tensor,
    z: torch.Tensor,
    mode: str = "naive",
    *,
    padding: int | tuple[int, int] = 0,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    method: str = "auto",
) -> torch.Tensor:
    r"""Cross-correlate search tensors ``x`` with templates ``z``.

    Cross-correlation as in ``F.conv2d`` (no kernel flip), with the template as data:
    ``out[b, j, i0, i1] = sum_{c,u,v} x_pad[b, c, s*i0 + d*u, s*i1 + d*v] * zt[c, u, v]``.
    Template ``i`` serves search items ``i*k ... i*k+k-1`` with ``k = B // Bz``.

    Args:
        x (Tensor[B, C, H, W]): search features.
        z (Tensor[Bz, Cz, h, w]): templates; ``B`` must be a multiple of ``Bz``.
        mode (str): ``"naive"`` (``Cz == C``, channels summed, out ``(B, 1, H', W')``; SiamFC),
            ``"depthwise"`` (``Cz == C``, channel by channel, out ``(B, C, H', W')``; SiamRPN++) or
            ``"upchannel"`` (``Cz == K*C``, out channel ``j`` uses ``z[:, j*C:(j+1)*C]``, out
            ``(B, K, H', W')``; SiamRPN).
        padding (int or pair): zero padding of the search, as in ``F.conv2d``.
        stride (int or pair): step between output positions.
        dilation (int or pair): spacing between template taps.
        method (str): ``"auto"`` (the planner decides), ``"direct"`` (convolution kernels) or
            ``"fft"`` (real FFTs; best once the template is larger than about 15x15).

    Returns:
        Tensor[B, K, H', W'] of ``x``'s dtype, with
        ``H' = (H + 2p - d(h-1) - 1) // s + 1``; differentiable in ``x`` and ``z``.

    Example:
        >>> x = torch.ones(2, 3, 8, 8)
        >>> z = torch.ones(1, 3, 3, 3)
        >>> xcorr(x, z).shape
        torch.Size([2, 1, 6, 6])
        >>> xcorr(x, z, "depthwise")[0, :, 0, 0]
        tensor([9., 9., 9.])
    """
    spec = check_xcorr(x, z, mode, padding, stride, dilation)
    method = check_choice(method, "method", METHODS)
    if method == "auto":
        method = planner.select(spec, grad=_needs_grad(x, z))
    backend = BACKENDS[method]
    if spec.batch == 0:
        # Keep the empty result attached to both inputs, so autograd sees the dependency.
        return x.new_zeros(spec.out_shape) + (x.sum() + z.sum()) * 0
    if x.dtype in _UPCAST:
        return backend(x.float(), z.float(), spec).to(x.dtype)
    return backend(x, z, spec)


def choose_method(
    x: torch.Tensor,
    z: torch.Tensor,
    mode: str = "naive",
    *,
    padding: int | tuple[int, int] = 0,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    measure: bool = False,
) -> str | tuple[str, dict[str, float]]:
    r"""The method ``xcorr.xcorr(x, z, ..., method="auto")`` would use, like scipy's ``choose_conv_method``.

    Hard constraints first (device, float32 precision, export), then the autotune cache, then the
    cost model (see :mod:`xcorr.planner`). A backward pass is assumed when ``x`` or ``z`` requires
    grad and grad mode is on.

    Args:
        x (Tensor[B, C, H, W]), z (Tensor[Bz, Cz, h, w]), mode, padding, stride, dilation: as in
            :func:`xcorr.xcorr`.
        measure (bool): time every allowed method on ``x`` and ``z`` instead (forward, plus
            backward when a backward pass is assumed), cache the winner for ``method="auto"``,
            and return the timings too.

    Returns:
        str: ``"direct"`` or ``"fft"``; with ``measure=True`` a pair ``(method, {method: seconds})``.

    Example:
        >>> x, z = torch.rand(1, 8, 64, 64), torch.rand(1, 8, 48, 48)
        >>> xcorr.choose_method(x, z, "depthwise")
        'fft'
    """
    spec = check_xcorr(x, z, mode, padding, stride, dilation)
    if not isinstance(measure, bool):
        raise TypeError(f"measure must be a bool, got {measure!r}")
    method, timings = planner.choose(spec, _needs_grad(x, z), measure, x, z)
    return (method, timings) if measure else method
