"""Where a match's time goes: a timer per stage, off unless :func:`timed` turns it on.

``python -m xcorr bench --suite match --profile`` prints, per case, the time in the numerator
(the correlation), the window statistics (sums and sums of squares), the exactness check (the
numerator's error bound, the windows correlated again in float64, the colour residue) and the
normalisation (OpenCV's rules and the ratio); what is left is the shifts, the template's sums
and the assembly of pieces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

STAGES = ("numerator", "window statistics", "exactness check", "normalisation")

_times: dict[str, float] | None = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the time inside the block toward stage ``name``, while :func:`timed` runs."""
    if _times is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _times[name] += time.perf_counter() - start


def timed(call: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``call()`` and the seconds it spent in each of :data:`STAGES`, plus ``"total"`` (CPU
    work; a CUDA device is synchronised at the end only)."""
    global _times
    _times = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    try:
        result = call()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    finally:
        times, _times = _times, None
    times["total"] = time.perf_counter() - start
    return result, times
