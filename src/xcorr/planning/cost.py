"""The cost model's vocabulary: what a backend counts (:class:`Terms`) and what a unit of each
count costs (:class:`Constants`), and the one rule that turns them into seconds (:func:`seconds`).

A backend declares its own terms on its record, so the engine, the families and the fit
(:mod:`xcorr.planning.fit`) know no backend by name: every estimate is

``(sum_n c[n] * forward[n]) * (1 + c[backward_ratio]) + sum_n c[n] * backward[n]``

(the backward parts only with a backward pass), times ``c[wide]`` for float64, in nanoseconds.
The forward part is linear in the constants and the backward part linear in the ratio and its
extra counts, which is what lets the fit solve for them by least squares.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: The vector instructions torch's CPU kernels use in this process (``ATEN_CPU_CAPABILITY`` can
#: lower it): ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, or another architecture's name. oneDNN, MKL
#: and pocketfft pick their kernels by it too, so the fastest method can differ by 2x between them,
#: and backends keep built-in constants per capability.
CPU_CAPABILITY: str = torch.backends.cpu.get_cpu_capability()


class Constants(Mapping[str, float]):
    """Costs of the cost model in nanoseconds, by name; read-only (:meth:`replace` makes a changed copy).

    Names are read as attributes too: ``c.fft_call``.

    Example:
        >>> c = Constants(fft_call=2.0, fft_point=0.5)
        >>> c.fft_call, c.replace(fft_call=1.0)["fft_call"], len(c)
        (2.0, 1.0, 2)
    """

    __slots__ = ("_values",)
    _values: dict[str, float]

    def __init__(self, values: Mapping[str, float] | None = None, **named: float) -> None:
        object.__setattr__(self, "_values", {k: float(v) for k, v in {**(values or {}), **named}.items()})

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):  # not a constant (copy and pickle look for such names first)
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Constants are read-only: use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return "Constants(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def replace(self, **changes: float) -> Constants:
        """A copy with ``changes``; every name must be one of these constants'."""
        unknown = set(changes) - set(self._values)
        if unknown:
            raise KeyError(f"no such constants: {', '.join(sorted(unknown))}")
        return Constants({**self._values, **changes})


@dataclass(frozen=True)
class Terms:
    """What one method's estimate counts for one problem.

    Attributes:
        forward: constant name -> how many units of it the forward pass costs.
        backward_ratio: the constant that is the backward / forward time ratio (None: the
            method is not differentiable through its own backward, or has none).
        backward: constant name -> units the backward pass costs beyond the ratio.
        wide: the constant that is the float64 / float32 time ratio, for float64 problems.
    """

    forward: Mapping[str, float]
    backward_ratio: str | None = None
    backward: Mapping[str, float] = field(default_factory=dict)
    wide: str | None = None


def seconds(terms: Terms, grad: bool, wide: bool, c: Mapping[str, float]) -> float:
    """The estimate of ``terms`` with constants ``c``, in seconds (see the module's formula)."""
    ns = sum(c[name] * units for name, units in terms.forward.items())
    if grad:
        if terms.backward_ratio is not None:
            ns *= 1 + c[terms.backward_ratio]
        ns += sum(c[name] * units for name, units in terms.backward.items())
    if wide and terms.wide is not None:
        ns *= c[terms.wide]
    return ns * 1e-9


def is_wide(dtype: torch.dtype) -> bool:
    """Whether a problem of ``dtype`` pays the float64 ratio."""
    return dtype == torch.float64


def builtin_set(sets: Mapping[str, Mapping[str, float]], capability: str) -> Mapping[str, float]:
    """A backend's built-in CPU constants for ``capability``: its own set, else its AVX2 set (the
    nearest kind to CPUs without AVX2, and to other architectures, whose kernels are narrower
    than AVX-512's)."""
    if capability in sets:
        return sets[capability]
    return sets.get("AVX2", {})


def builtin_constants(backends: Iterable[Any], capability: str) -> Constants:
    """The built-in CPU constants of ``backends`` (records with a ``constants`` set per
    capability) for ``capability``, each backend's by :func:`builtin_set`."""
    values: dict[str, float] = {}
    for backend in backends:
        values.update(builtin_set(backend.constants, capability))
    return Constants(values)


def constant_names(backends: Iterable[Any]) -> list[str]:
    """The names of the constants of ``backends``, in order of first appearance."""
    names: dict[str, None] = {}
    for backend in backends:
        for values in backend.constants.values():
            names.update(dict.fromkeys(values))
    return list(names)
