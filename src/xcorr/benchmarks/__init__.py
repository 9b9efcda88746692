"""Benchmark suites, run by ``python -m xcorr bench``.

A suite is a list of :class:`Case`. A case's ``setup`` builds its inputs and returns the
contenders as zero-argument callables keyed by name: ``"xcorr"`` for ours and one entry per
peer that is installed (a peer whose package is missing is left out, not faked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

OURS = "xcorr"


@dataclass(frozen=True)
class Case:
    suite: str
    name: str
    setup: Callable[[], dict[str, Callable[[], Any]]]
    #: The largest acceptable ratio of our median time to the fastest peer's.
    target: float | None = None
    #: Timed calls per contender after the warm-up (0: the runner's default). Slow cases use few.
    repeats: int = 0
    #: Extra columns for the table, computed once after timing (e.g. the method ``auto`` picked
    #: and its float32 error); ``None`` for none.
    info: Callable[[], dict[str, Any]] | None = None
    #: CPU threads the case runs at, torch's and OpenCV's alike (``None``: as the run was started).
    threads: int | None = None
    #: Seconds of one call of ours per stage (``--profile``), measured after timing; ``None``: none.
    stages: Callable[[], dict[str, float]] | None = None
