"""Correlations as the planning engine sees them: one family (:class:`CorrelationFamily`).

The options of a problem come from the rules its backends declare on their records (devices,
modes, export, memory, precision); with a backward pass there is one more, :data:`PER_PASS`: the
forward, the search gradient and the template gradient each on the method chosen for its own
problem (:mod:`xcorr.correlation.adjoint`, :mod:`xcorr.correlation.passes`). The cost model sums
each backend's :class:`~xcorr.planning.cost.Terms` with the constants in force.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from .._tracing import exporting, tracing
from ..planning.cost import CPU_CAPABILITY, Constants, builtin_constants
from ..planning.engine import ENGINE
from ..planning.family import Registry
from . import adjoint, passes
from .backends import BACKENDS, BACKENDS_3D, Backend
from .passes import Passes
from .spec import Spec, Spec3d

#: The option of running each pass of a correlation with a backward pass on the method chosen
#: for that pass's own problem. It wins where one method's backward is slow for its shapes.
PER_PASS = "per-pass"

#: The cost model counts the per-pass option at this many times the sum of its passes' forward
#: estimates: those are the gradient problems' forward costs, without the backward ratios fitted
#: on whole steps, and they undercount (docs/performance.md has the measurement), so per-pass is
#: mostly found by measurement.
PER_PASS_ESTIMATE_FACTOR = 2.0


class CorrelationKey(NamedTuple):
    """The key of a correlation problem in the engine's caches and in tuning files."""

    mode: str
    x_shape: tuple[int, ...]
    z_shape: tuple[int, ...]
    padding: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    dtype: torch.dtype
    device_type: str
    device_index: int | None
    grad: bool


class Choice(str):
    """The method ``method="auto"`` uses: a string (the forward's method), with :attr:`passes`
    saying the method of each pass when a backward pass follows."""

    #: The method of each pass (forward, search gradient, template gradient).
    passes: Passes

    def __new__(cls, passes: Passes) -> Choice:
        self = super().__new__(cls, passes.forward)
        self.passes = passes
        return self


class Measured(tuple):
    """What :func:`xcorr.choose_method` returns with ``measure=True``.

    It unpacks as ``(method, timings)``; :attr:`passes` gives the method of each pass,
    :attr:`pass_timings` each pass's own timings, and :attr:`constants` says which cost-model
    constants are in force for the device (built-in, or a saved profile's).
    """

    #: Which cost-model constants are in force for the device, in words (the built-in set and
    #: where it was fitted, or the profile they were read from).
    constants: str
    #: With a backward pass, each pass's problem (``"forward"``, ``"search"``, ``"template"``)
    #: timed on its own: median seconds per option; empty without one.
    pass_timings: dict[str, dict[str, float]]

    def __new__(
        cls,
        passes: Passes,
        timings: dict[str, float],
        constants: str,
        pass_timings: dict[str, dict[str, float]] | None = None,
    ) -> Measured:
        self = super().__new__(cls, (Choice(passes), timings))
        self.constants = constants
        self.pass_timings = pass_timings or {}
        return self

    @property
    def method(self) -> Choice:
        """What ``method="auto"`` now uses for this problem's forward: the fastest (in
        deterministic mode, the model's or a loaded winner)."""
        return self[0]

    @property
    def passes(self) -> Passes:
        """The method of each pass (forward, search gradient, template gradient)."""
        return self[0].passes

    @property
    def timings(self) -> dict[str, float]:
        """Median seconds per allowed option (forward, plus backward when a backward pass is
        assumed; then :data:`PER_PASS` too)."""
        return self[1]

    def __repr__(self) -> str:
        return (
            f"Measured(method={str(self.method)!r}, passes={self.passes!r}, timings={self.timings!r}, "
            f"constants={self.constants!r})"
        )


def pass_problems(spec: Spec) -> tuple[Spec, Spec]:
    """The search- and template-gradient problems of ``spec``."""
    return adjoint.search_problem(spec), adjoint.template_problem(spec)


class _Backends(Registry[Backend]):
    """What the correlation families of images and of volumes share: their options come from
    their backends' records, the model from their terms, the built-in constants from their sets."""

    def candidates(self, spec: Any) -> list[str]:
        """The methods the hard constraints allow for ``spec``, in registry order."""
        if exporting():
            return [name for name, b in self.backends.items() if b.exportable]
        allowed = [name for name, b in self.backends.items() if b.allowed(spec)]
        exact = [name for name in allowed if self.backends[name].exact(spec)]
        return exact or allowed

    def serves(self, backend: Backend, spec: Any) -> bool:
        """The model estimates the methods of ``spec``'s mode."""
        return spec.mode in backend.modes

    def random_inputs(self, spec: Any) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator(device=spec.device).manual_seed(0)
        x = torch.randn(spec.x_shape, generator=gen, device=spec.device, dtype=spec.dtype)
        z = torch.randn(spec.z_shape, generator=gen, device=spec.device, dtype=spec.dtype)
        return x, z

    def builtin_constants(self, device_type: str, capability: str | None = None) -> tuple[Constants, str] | None:
        """The built-in CPU constants of every backend for this process's capability (or
        ``capability``'s); other device types have none (they are measured)."""
        if device_type != "cpu":
            return None
        capability = capability or CPU_CAPABILITY
        kind = capability if all(capability in b.constants for b in self.backends.values() if b.constants) else "AVX2"
        source = (
            f"built-in {kind} set (CPU capability {CPU_CAPABILITY}; fitted on a 2-core x86 CPU, torch 2.13, 2 threads)"
        )
        return builtin_constants(self.backends.values(), capability), source


class CorrelationFamily(_Backends):
    """The correlations of :func:`xcorr.xcorr`, template plans and matching's numerators.

    Args:
        engine: the engine that plans them.
        backends: the registry of methods (name -> record), in order of preference among equals.
    """

    name = "correlation"
    spec_type = Spec
    key_type = CorrelationKey

    def option_names(self) -> tuple[str, ...]:
        return (*self.backends, PER_PASS)

    def key(self, spec: Spec, grad: bool) -> CorrelationKey:
        return CorrelationKey(
            spec.mode,
            spec.x_shape,
            spec.z_shape,
            spec.padding,
            spec.stride,
            spec.dilation,
            spec.dtype,
            spec.device.type,
            spec.device.index,
            grad,
        )

    def options(self, spec: Spec, grad: bool) -> list[str]:
        """The candidates, and with a backward pass :data:`PER_PASS` (not for an empty batch,
        where nothing runs, nor while tracing: a graph keeps one method per op)."""
        allowed = self.candidates(spec)
        return [*allowed, PER_PASS] if grad and spec.batch and not tracing() else allowed

    def estimate(self, spec: Spec, grad: bool, constants: Constants) -> dict[str, float]:
        """:meth:`method_estimates`; with a backward pass also :data:`PER_PASS`: the sum of the
        three passes' forward estimates, each on the method chosen for it, times
        :data:`PER_PASS_ESTIMATE_FACTOR`."""
        costs = self.method_estimates(spec, grad, constants)
        if grad and spec.batch:
            total = 0.0
            for problem in (spec, *pass_problems(spec)):
                total += self.method_estimates(problem, False, constants).get(self.engine.decide(problem), 0.0)
            costs[PER_PASS] = PER_PASS_ESTIMATE_FACTOR * total
        return costs

    def pass_methods(self, spec: Spec) -> Passes:
        """The method of each pass, each chosen for its own problem."""
        forward, search, template = (self.engine.decide(p) for p in (spec, *pass_problems(spec)))
        return Passes(forward, search, template)

    def passes(self, option: str, spec: Spec) -> Passes:
        """The methods an option runs: one for every pass, or one per pass."""
        return self.pass_methods(spec) if option == PER_PASS else Passes(option, option, option)

    def runner(self, spec: Spec, option: str, grad: bool, plain: bool) -> Callable[..., torch.Tensor]:
        if plain:
            run = self.backends[option].run
            return lambda x, z: run(x, z, spec)
        if option == PER_PASS:
            methods = self.pass_methods(spec)
            if not methods.uniform:
                return lambda x, z: passes.run(x, z, spec, methods)
            option = methods.forward
        return self.backends[option].bind(spec, grad)

    def choose(self, spec: Spec, grad: bool, measure: bool, x: Any = None, z: Any = None) -> Measured:
        """What :func:`xcorr.choose_method` returns: the methods and, when measured, the timings
        (the measured winners then serve ``method="auto"``). With a backward pass, each pass's
        problem is measured on its own first (forward only), then every option whole."""
        engine = self.engine
        source = engine.constants_source(self, spec.device.type)
        if not measure:
            return Measured(self.passes(engine.decide(spec, grad), spec), {}, source)
        pass_timings: dict[str, dict[str, float]] = {}
        if grad and not tracing():
            search, template = pass_problems(spec)
            for name, problem, inputs in (
                ("forward", spec, (x, z)),
                ("search", search, None),
                ("template", template, None),
            ):
                pass_timings[name] = engine.measure_all(problem, False, inputs)
        timings = engine.measure_all(spec, grad, (x, z))
        return Measured(self.passes(engine.decide(spec, grad), spec), timings, source, pass_timings)


class CorrelationKey3d(NamedTuple):
    """The key of a volume correlation problem in the engine's caches and in tuning files."""

    mode: str
    x_shape: tuple[int, ...]
    z_shape: tuple[int, ...]
    dtype: torch.dtype
    device_type: str
    device_index: int | None
    grad: bool


class Correlation3dFamily(_Backends):
    """The volume correlations of :func:`xcorr.xcorr` (5-D searches and templates) and of volume
    matching's numerators: valid positions, modes ``"naive"`` and ``"depthwise"``. Each method
    runs every pass with its own backward (no per-pass option).

    Args:
        engine: the engine that plans them.
        backends: the registry of methods (name -> record), in order of preference among equals.
    """

    name = "correlation3d"
    spec_type = Spec3d
    key_type = CorrelationKey3d

    def option_names(self) -> tuple[str, ...]:
        return tuple(self.backends)

    def key(self, spec: Spec3d, grad: bool) -> CorrelationKey3d:
        return CorrelationKey3d(
            spec.mode, spec.x_shape, spec.z_shape, spec.dtype, spec.device.type, spec.device.index, grad
        )

    def options(self, spec: Spec3d, grad: bool) -> list[str]:
        return self.candidates(spec)

    def estimate(self, spec: Spec3d, grad: bool, constants: Constants) -> dict[str, float]:
        return self.method_estimates(spec, grad, constants)

    def runner(self, spec: Spec3d, option: str, grad: bool, plain: bool) -> Callable[..., torch.Tensor]:
        if plain:
            run = self.backends[option].run
            return lambda x, z: run(x, z, spec)
        return self.backends[option].bind(spec, grad)


#: The correlation family of this process, with the registry of :mod:`xcorr.correlation.backends`.
CORRELATION = CorrelationFamily(ENGINE, BACKENDS)
ENGINE.register(CORRELATION)

#: The volume correlation family of this process (:data:`~xcorr.correlation.backends.BACKENDS_3D`).
CORRELATION_3D = Correlation3dFamily(ENGINE, BACKENDS_3D)
ENGINE.register(CORRELATION_3D)
