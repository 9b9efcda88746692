"""The two rules every op applies around its computation, held in one place.

* **Half precision is computed in float32** and the result rounded back: pocketfft and cuFFT lack
  most half sizes, CPU convolutions in half are several times slower than in float32, and the
  depthwise shifted sums of ``"gather"`` would otherwise accumulate in half.
* **An empty batch** gives zeros of the output's shape, attached to the inputs so that autograd
  still sees the dependency (and gives zero gradients), without running a backend.

And one rule that the paths which mix all values of an input (transforms, window sums) apply:
:func:`finite_footprint`, so that NaN and infinity spoil exactly the outputs whose windows hold one;
and one that the planner and the kernels ask: :func:`deterministic`.

:func:`xcorr.xcorr`, template plans, :func:`xcorr.pixelwise` and :func:`xcorr.match_template` all
call :func:`computed`; the planner and the backends see float32 specs through
:func:`compute_spec`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, TypeVar

import torch

from ._tracing import tracing

HALF = (torch.float16, torch.bfloat16)

S = TypeVar("S", bound=Any)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a computation on ``dtype`` inputs runs in."""
    return torch.float32 if dtype in HALF else dtype


def compute_spec(spec: S) -> S:
    """``spec`` (any validated problem with a ``dtype``) as the backends see it: half precision
    becomes float32."""
    return replace(spec, dtype=torch.float32) if spec.dtype in HALF else spec


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of a computation on ``dtype`` inputs (half precision runs in float32)."""
    return 8 if compute_dtype(dtype) == torch.float64 else 4


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether a backward pass may follow: grad mode is on and one of ``tensors`` requires grad."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a plain loop: this runs on every call's hot path
        if t.requires_grad:
            return True
    return False


def deterministic() -> bool:
    """Whether torch runs deterministic algorithms only (``torch.use_deterministic_algorithms(True)``):
    then identical calls must give identical bits, so the planner takes no decision from a timing
    and no path runs a kernel without a deterministic form (docs/performance.md, reproducibility)."""
    return torch.are_deterministic_algorithms_enabled()


def empty_result(shape: tuple[int, ...], *inputs: torch.Tensor) -> torch.Tensor:
    """Zeros of ``shape`` (of the first input's dtype and device), attached to every input."""
    first = inputs[0]
    attached = sum((t.sum() for t in inputs[1:]), first.sum())
    return first.new_zeros(shape) + attached * 0


def finite_footprint(
    compute: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, windows: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``compute(x)``, NaN exactly at the outputs whose windows hold a non-finite value of ``x``.

    One reduction tells whether ``x`` holds one (its sum; a sum that overflows only takes the
    exact path needlessly). Where it does, ``compute`` runs on ``x`` with those values zeroed, and
    ``windows(mask)``, the count of the mask's ones in each output's window, marks the outputs
    that held one. Not while tracing, where the test would break the graph.
    """
    if tracing() or bool(torch.isfinite(x.detach().sum())):
        return compute(x)
    finite = torch.isfinite(x)
    out = compute(torch.where(finite, x, torch.zeros((), dtype=x.dtype)))
    with torch.no_grad():
        held = windows((~finite).to(x.dtype)) > 0.5
    return torch.where(held, torch.full((), math.nan, dtype=out.dtype), out)


def computed(
    run: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *inputs: torch.Tensor,
    attached: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """``run(*inputs)`` under both rules; ``shape`` is the output's, used for an empty batch.

    The first input decides: its batch (dim 0) and its dtype. ``attached`` are further tensors
    the result depends on without being passed to ``run`` (a template plan's template, whose
    share of the work is done): an empty result is attached to them too.
    """
    first = inputs[0]
    if first.shape[0] == 0:
        return empty_result(shape, *inputs, *attached)
    if first.dtype in HALF:
        return run(*(t.float() if t.dtype in HALF else t for t in inputs)).to(first.dtype)
    return run(*inputs)
