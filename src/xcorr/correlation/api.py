"""Public functionals: normalise the arguments, ask the planner, call a backend."""

from __future__ import annotations

from typing import Any, Callable, Literal, overload

import torch

from .._checks import check_choice, plain
from .._compute import compute_spec, computed, needs_grad
from .._tracing import tracing
from ..correlation.spec import check_pixelwise, check_xcorr
from ..planner import PLANNER, Choice, Measured
from ..planning.trials import Trials
from .backends import BACKENDS
from .spec import Spec

METHODS = ("auto", *BACKENDS)

Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _signature(x: Any, z: Any, mode: Any, padding: Any, stride: Any, dilation: Any, method: Any) -> tuple | None:
    """The cache key of an :func:`xcorr` call, or None where the call cannot be cached (arguments
    that are not plain, or a tracer running: shapes may be symbolic there).

    Validation depends only on the tensors' types, shapes, dtypes and devices and on the other
    arguments' values when these are plain ints (or pairs) and strings, so a repeated call (a
    tracker's every frame) skips validation, planning and the backend's shape work: the bound
    call is kept in the planner's :attr:`~xcorr.planner.Planner.derived`, dropped with its decisions."""
    if (
        not (
            isinstance(x, torch.Tensor)
            and isinstance(z, torch.Tensor)
            and type(mode) is str
            and type(method) is str
            and plain(padding)
            and plain(stride)
            and plain(dilation)
        )
        or tracing()
    ):
        return None
    return (
        "xcorr",
        type(x),
        type(z),
        x.shape,
        z.shape,
        x.dtype,
        z.dtype,
        x.device,
        z.device,
        mode,
        padding,
        stride,
        dilation,
        method,
        needs_grad(x, z),
    )


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
    """
    call = _signature(x, z, mode, padding, stride, dilation, method)
    run = PLANNER.derived.get(call) if call is not None else None
    if run is None:
        generation = PLANNER.generation
        spec = check_xcorr(x, z, mode, padding, stride, dilation)
        grad = needs_grad(x, z)
        run = _runner(spec, check_choice(method, "method", METHODS), grad, bound=call is not None)
        if call is not None:
            PLANNER.remember(call, run, generation)
    return run(x, z)


def resolve(spec: Spec, method: Any, grad: bool) -> str:
    """The checked ``method`` argument, with ``"auto"`` resolved by the planner to one method
    for every pass (template plans keep one method; their forward's)."""
    method = check_choice(method, "method", METHODS)
    return PLANNER.passes(spec, grad).forward if method == "auto" else method


def _runner(spec: Spec, method: str, grad: bool, bound: bool) -> Run:
    """``run(x, z)`` for ``spec`` with ``method`` (checked; ``"auto"`` asks the planner): the bound
    form for a cached eager call signature (``bound``), the backend's plain form otherwise
    (tracing: shapes may be symbolic, and the planner offers one method for every pass). A bound
    ``"auto"`` call whose problem has no measured winner yet tries the options on its repeated
    calls (:mod:`xcorr.planning.trials`)."""
    inner, shape = compute_spec(spec), spec.out_shape
    option = PLANNER.select(spec, grad) if method == "auto" else method
    if not bound:
        backend = BACKENDS[option]
        return lambda x, z: computed(lambda x, z: backend.run(x, z, inner), shape, x, z)
    run: Run
    options = PLANNER.options(spec, grad) if method == "auto" and spec.batch else []
    if len(options) > 1 and PLANNER.trials_enabled(spec) and not PLANNER.is_measured(spec, grad):
        costs = PLANNER.estimate(spec, grad)
        ordered = [option, *sorted((o for o in options if o != option), key=costs.__getitem__)]
        run = Trials(
            ordered, costs, lambda o: PLANNER.runner(inner, o, grad), grad, lambda w: PLANNER.record(spec, grad, w)
        )
    else:
        run = PLANNER.runner(inner, option, grad)
    return lambda x, z: computed(run, shape, x, z)


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
    the cost model (see :mod:`xcorr.planner`). A backward pass is assumed when ``x`` or ``z``
    requires grad and grad mode is on; then each pass (the forward, the search gradient, the
    template gradient) may run on a method of its own, chosen for that pass's problem.

    Args:
        x (Tensor[B, C, H, W]): search features, as in :func:`xcorr.xcorr`.
        z (Tensor[Bz, Cz, h, w]): templates, as in :func:`xcorr.xcorr`.
        mode, padding, stride, dilation: as in :func:`xcorr.xcorr`.
        measure (bool): time every allowed option on ``x`` and ``z`` instead (forward, plus
            backward when a backward pass is assumed: then first each pass's problem on its own),
            cache the winners for ``method="auto"``, and return the timings too.

    Returns:
        :class:`~xcorr.planner.Choice`: a str, ``"direct"``, ``"fft"`` or ``"gather"`` (the
        forward's method), whose ``.passes`` gives each pass's; with ``measure=True`` a
        :class:`~xcorr.planner.Measured`, which unpacks as ``(method, {option: seconds})``, gives
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
    choice = PLANNER.choose(spec, needs_grad(x, z), measure, x, z)
    return choice if measure else choice.method
