"""Public functionals: normalise the arguments, ask the planning engine for the bound call, run it."""

from __future__ import annotations

from typing import Any, Literal, overload

import torch

from .._checks import check_choice
from .._compute import computed, needs_grad
from ..planning.engine import ENGINE, Bound, signature
from .family import CORRELATION, CORRELATION_3D, Choice, Measured
from .spec import Spec, check_pixelwise, check_xcorr, check_xcorr3d


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

    Volumes correlate the same way over three axes: ``x`` (B, C, D, H, W) and ``z``
    (Bz, C, d, h, w) give (B, 1 or C, D-d+1, H-h+1, W-w+1) in modes ``"naive"`` and
    ``"depthwise"``, at the valid positions (padding 0, stride 1, dilation 1), by ``"direct"``
    (``F.conv3d``) or ``"fft"`` (real FFTs over the three axes).

    Args:
        x (Tensor[B, C, H, W]): search features.
        z (Tensor[Bz, Cz, h, w]): templates; ``B`` must be a multiple of ``Bz``.
        mode (str): ``"naive"`` (``Cz == C``, channels summed, out ``(B, 1, H', W')``; SiamFC),
            ``"depthwise"`` (``Cz == C``, channel by channel, out ``(B, C, H', W')``; SiamRPN++) or
            ``"upchannel"`` (``Cz == K*C``, out channel ``j`` uses ``z[:, j*C:(j+1)*C]``, out
            ``(B, K, H', W')``; SiamRPN).
        padding (int or tuple[int, int]): zero padding of the search, as in ``F.conv2d``.
        stride (int or tuple[int, int]): step between output positions.
        dilation (int or tuple[int, int]): spacing between template taps.
        method (str): ``"auto"`` (the planner decides), ``"direct"`` (convolution kernels;
            best for small depthwise templates), ``"fft"`` (real FFTs; best once the template is
            larger than about 15x15) or ``"gather"`` (one matrix product and a gather, no
            convolution; best for small templates in ``"naive"`` and ``"upchannel"``, and what
            ``"auto"`` picks while exporting to ONNX).

    Returns:
        Tensor[B, K, H', W'] of ``x``'s dtype, with
        ``H' = (H + 2p - d(h-1) - 1) // s + 1``; differentiable in ``x`` and ``z``.

    Example:
        >>> x = torch.ones(2, 3, 8, 8)
        >>> z = torch.ones(1, 3, 3, 3)
        >>> xcorr.xcorr(x, z).shape
        torch.Size([2, 1, 6, 6])
        >>> xcorr.xcorr(x, z, "depthwise")[0, :, 0, 0]
        tensor([9., 9., 9.])
        >>> xcorr.xcorr(torch.ones(1, 2, 5, 6, 7), torch.ones(1, 2, 2, 3, 4)).shape
        torch.Size([1, 1, 4, 4, 4])
    """
    # The bound call of a repeated signature: one dictionary lookup (see planning.engine.signature).
    call = signature("xcorr", (x, z), (mode, padding, stride, dilation, method))
    run = ENGINE.derived.get(call) if call is not None else None
    if run is None:
        run = ENGINE.cached(call, lambda: _bind(x, z, mode, padding, stride, dilation, method))
    return run(x, z)


def bound(
    x: torch.Tensor,
    z: torch.Tensor,
    mode: str = "naive",
    *,
    padding: Any = 0,
    stride: Any = 1,
    dilation: Any = 1,
    method: str = "auto",
) -> Bound:
    """The bound call of :func:`xcorr` for these arguments, kept per call signature: what
    :func:`xcorr` runs, and what callers that need to know which method ran use
    (:meth:`~xcorr.planning.engine.Bound.call`)."""

    settings = (mode, padding, stride, dilation, method)
    return ENGINE.cached(signature("xcorr", (x, z), settings), lambda: _bind(x, z, *settings))


def _bind(x: Any, z: Any, mode: Any, padding: Any, stride: Any, dilation: Any, method: Any) -> Bound:
    """The validated call of :func:`xcorr`, bound by the planning engine: of images, or of volumes
    where ``x`` is 5-D."""
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        volume = check_xcorr3d(x, z, mode, padding, stride, dilation)
        return ENGINE.bind(volume, needs_grad(x, z), check_choice(method, "method", CORRELATION_3D.methods()))
    spec = check_xcorr(x, z, mode, padding, stride, dilation)
    return ENGINE.bind(spec, needs_grad(x, z), check_choice(method, "method", CORRELATION.methods()))


def resolve(spec: Spec, method: Any, grad: bool) -> str:
    """The checked ``method`` argument, with ``"auto"`` resolved by the engine to one method
    for every pass (template plans keep one method; their forward's)."""
    method = check_choice(method, "method", CORRELATION.methods())
    return CORRELATION.passes(ENGINE.decide(spec, grad), spec).forward if method == "auto" else method


def pixelwise(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""Pixel-wise correlation: each template pixel's feature vector against every search pixel.

    ``out[b, i*w + j, p, q] = sum_c z[t, c, i, j] * x[b, c, p, q]``, where ``t`` is the template
    of search item ``b`` (template ``t`` serves items ``t*k ... t*k+k-1``, ``k = B // Bz``). Every
    template pixel acts as a 1x1 kernel, so the output keeps the search's size and the template's
    layout is kept in the channels, as Alpha-Refine and SiamGAT need. Computed as one batched
    matrix product (no convolution), so it also exports to ONNX with a dynamic batch.

    Args:
        x (Tensor[B, C, H, W]): search features.
        z (Tensor[Bz, C, h, w]): templates; ``B`` must be a multiple of ``Bz``.

    Returns:
        Tensor[B, h*w, H, W] of ``x``'s dtype; differentiable in ``x`` and ``z``.

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> z = torch.tensor([[[[1.0, -2.0]]]])
        >>> xcorr.pixelwise(x, z)
        tensor([[[[ 0.,  1.],
                  [ 2.,  3.]],
        <BLANKLINE>
                 [[ 0., -2.],
                  [-4., -6.]]]])
    """
    check_pixelwise(x, z)
    B, _, H, W = x.shape
    h, w = z.shape[-2:]
    return computed(_pixelwise, (B, h * w, H, W), x, z)


def _pixelwise(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    _, C, H, W = x.shape
    Bz, _, h, w = z.shape
    # -1 rather than B // Bz keeps the batch symbolic when the graph is exported.
    out = torch.matmul(z.reshape(Bz, 1, C, h * w).transpose(2, 3), x.reshape(Bz, -1, C, H * W))
    return out.reshape(-1, h * w, H, W)


@overload
def choose_method(
    x: torch.Tensor,
    z: torch.Tensor,
    mode: str = ...,
    *,
    padding: int | tuple[int, int] = ...,
    stride: int | tuple[int, int] = ...,
    dilation: int | tuple[int, int] = ...,
    measure: Literal[False] = ...,
) -> Choice: ...


@overload
def choose_method(
    x: torch.Tensor,
    z: torch.Tensor,
    mode: str = ...,
    *,
    padding: int | tuple[int, int] = ...,
    stride: int | tuple[int, int] = ...,
    dilation: int | tuple[int, int] = ...,
    measure: Literal[True],
) -> Measured: ...


def choose_method(
    x: torch.Tensor,
    z: torch.Tensor,
    mode: str = "naive",
    *,
    padding: int | tuple[int, int] = 0,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    measure: bool = False,
) -> Choice | Measured:
    r"""The method ``xcorr.xcorr(x, z, ..., method="auto")`` would use, like scipy's ``choose_conv_method``.

    Hard constraints first (device, float32 precision, export), then the measured winners, then
    the cost model (see :ref:`planning`). A backward pass is assumed when ``x`` or ``z``
    requires grad and grad mode is on; then each pass (the forward, the search gradient, the
    template gradient) may run on a method of its own, chosen for that pass's problem.

    Args:
        x (Tensor[B, C, H, W]): search features, as in :func:`xcorr.xcorr`.
        z (Tensor[Bz, Cz, h, w]): templates, as in :func:`xcorr.xcorr`.
        mode, padding, stride, dilation: as in :func:`xcorr.xcorr`.
        measure (bool): time every allowed option on ``x`` and ``z`` instead (forward, plus
            backward when a backward pass is assumed: then first each pass's problem on its own),
            cache the winners for ``method="auto"``, and return the timings too. In
            deterministic mode (``torch.use_deterministic_algorithms(True)``) ``"auto"`` takes
            no winner measured in this process, and the method returned is still its own.

    Returns:
        :class:`~xcorr.correlation.family.Choice`: a str, ``"direct"``, ``"fft"`` or ``"gather"`` (the
        forward's method), whose ``.passes`` gives each pass's; with ``measure=True`` a
        :class:`~xcorr.correlation.family.Measured`, which unpacks as ``(method, {option: seconds})``, gives
        ``.passes`` and ``.pass_timings``, and says in ``.constants`` which cost-model constants
        are in force.

    Example:
        >>> x, z = torch.rand(1, 8, 64, 64), torch.rand(1, 8, 48, 48)
        >>> xcorr.choose_method(x, z, "depthwise")
        'fft'
    """
    spec = check_xcorr(x, z, mode, padding, stride, dilation)
    if not isinstance(measure, bool):
        raise TypeError(f"measure must be a bool, got {measure!r}")
    choice = CORRELATION.choose(spec, needs_grad(x, z), measure, x, z)
    return choice if measure else choice.method
