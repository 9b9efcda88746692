"""The planning engine: the one place that chooses a method, for every family of problems.

:mod:`.engine` holds the state and the decisions (:data:`ENGINE`), :mod:`.cost` the cost model's
vocabulary, :mod:`.trials` the measurement of repeated calls, :mod:`.fit` the fit of the
constants and :mod:`.profile` the files. The families live with their problems
(:mod:`xcorr.correlation.family`, :mod:`xcorr.volumes.family`) and register with the engine.
"""

from __future__ import annotations

import os

from .._spares import OUTPUTS, SPARES
from . import profile
from .cost import CPU_CAPABILITY, Constants, Terms
from .engine import ENGINE, Bound, Engine
from .family import Family

__all__ = [
    "CPU_CAPABILITY",
    "ENGINE",
    "Bound",
    "Constants",
    "Engine",
    "Family",
    "Terms",
    "clear_cache",
    "load_tuning",
    "save_tuning",
    "set_autotune",
]


def set_autotune(enabled: bool | None) -> None:
    """Measure the methods once per problem and cache the winner, like ``torch.backends.cudnn.benchmark``.

    Args:
        enabled (bool or None): ``True`` times every candidate method the first time a problem
            (shapes, geometry, dtype, device, grad) is seen and reuses the winner; ``False``
            always uses the cost model, and never measures; ``None`` (the default) measures every
            new problem on devices without fitted constants (CUDA), and on the CPU tries the other
            options on the repeated calls of a signature, within 5% of its first hundred calls'
            time (see :ref:`planning`). In deterministic mode
            (``torch.use_deterministic_algorithms(True)``) nothing is measured, whatever the
            setting: the cost model and loaded tuning files decide (see :ref:`reproducibility`).

    Example:
        >>> xcorr.set_autotune(True)
        >>> xcorr.set_autotune(None)
    """
    ENGINE.set_autotune(enabled)


def clear_cache() -> None:
    """Forget every measured winner and every remembered decision (they are made again on next
    use), and free the buffers kept for a next call of the same shape (RAFT's pyramid volumes, and
    the memory of large cost volumes that were returned and since dropped).

    Example:
        >>> xcorr.clear_cache()
    """
    ENGINE.clear()
    SPARES.clear()
    OUTPUTS.clear()


def _key_types() -> dict[str, type]:
    return {family.name: family.key_type for family in ENGINE.families()}


def save_tuning(path: str | os.PathLike) -> None:
    """Save the measured winners of this process (autotune, ``choose_method(..., measure=True)``,
    repeated calls) and those it loaded to ``path``: of correlations, cost volumes and
    correlation pyramids alike.

    Like FFTW's wisdom: :func:`load_tuning` in a later process skips their measurement. Each
    winner is saved with the machine it was measured on (device kind, threads, torch version).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tuning.json")
        >>> xcorr.save_tuning(path)
        >>> xcorr.load_tuning(path)
        0
    """
    families = {family.key_type: family.name for family in ENGINE.families()}
    profile.save_tuning(path, ENGINE.measured_winners(), families)


def load_tuning(path: str | os.PathLike) -> int:
    """Take the measured winners saved by :func:`save_tuning`; returns how many were taken.

    Winners measured on another machine are skipped; an unreadable or foreign file is ignored
    with one warning. Loaded winners serve deterministic mode too, where those measured in this
    process do not: a run that loads the same file makes the same decisions.
    """
    winners = profile.load_tuning(path, _key_types())
    ENGINE.add_winners(winners)
    ENGINE.tuning_source = f"{len(winners)} loaded from {os.fspath(path)}, and measured in this process"
    return len(winners)
