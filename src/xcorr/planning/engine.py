"""The planning engine: the only place that chooses a method, for every family of problems.

A *family* (correlations, cost volumes, RAFT's pyramid) is one object implementing
:class:`Family`: the key of a problem, the options its hard constraints allow, the cost model's
estimate, and how an option runs. The engine knows no family by name; it owns everything they
share, layered like scipy's ``choose_conv_method``:

1. **Hard constraints** (the family's :meth:`Family.options`, from the rules each backend
   declares on its record: devices, modes, export, memory, precision). One allowed option is it.
2. **Measured winners**, keyed by the family's named-tuple key (problem, dtype, device, grad).
3. **Measurement**: with :func:`~xcorr.planning.set_autotune` ``True``, and by default on devices
   without fitted constants (CUDA), every option is timed once per key on first use (:meth:`Engine.measure`,
   one routine for every family). On the CPU a call signature that repeats tries the other options
   on its own calls within a budget (:mod:`xcorr.planning.trials`) and keeps the fastest.
4. **The cost model**: the family's estimate from its backends' terms and the constants in force
   (built in per CPU capability, or a saved profile's: :mod:`xcorr.planning.profile`).

:meth:`Engine.bind` is the one entry of every call: it decides, then returns the bound call
(trials included) under the rules of :mod:`xcorr._compute` (half precision in float32, the empty
batch). :meth:`Engine.cached` keeps bound calls per call signature. All state lives in one
:class:`Engine`, :data:`ENGINE`; every change goes through :meth:`Engine.invalidate`, which bumps
:attr:`Engine.generation` and drops every answer derived from the old state.

Under ``torch.compile`` and while exporting, decisions come from shapes and the cache alone: no
timing, no lock, no file, nothing that would break a graph.

**Deterministic mode** (``torch.use_deterministic_algorithms(True)``,
:func:`xcorr._compute.deterministic`): identical calls give identical bits, in one process and
across processes, so no decision comes from a timing. Layers 1 and 4 decide, with the winners
of a loaded tuning file (:func:`xcorr.load_tuning`) in place of layer 2's; nothing is measured
(layer 3), and no winner measured in this process is used. A call signature keeps its bound
call per mode.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any, Callable

import torch

from .._compute import compute_spec, computed, deterministic
from .._tracing import compiling, exporting, tracing
from .cost import Constants
from .family import Family, Run
from .state import State
from .trials import Trials


def argmin(costs: dict[str, float]) -> str:
    """The key of the least value (the first among equals)."""
    # A plain loop: torch.compile cannot trace min() with a key function.
    best = ""
    for option, cost in costs.items():
        if not best or cost < costs[best]:
            best = option
    return best


def bench(fn: Callable[[], object], sync: Callable[[], None], budget: float = 0.2) -> float:
    """Median seconds of ``fn`` after one warm-up, over 3 to 10 runs within ``budget`` seconds."""
    fn()
    sync()
    times: list[float] = []
    while len(times) < 3 or (len(times) < 10 and sum(times) < budget):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def signature(name: str, tensors: Sequence[Any], settings: Sequence[Any]) -> tuple | None:
    """The cache key of a call of ``name`` (for :meth:`Engine.cached`), or None where the call
    cannot be cached: an argument in ``tensors`` that is not a tensor, a setting that is not
    plain (an int or a pair of ints, a str or None, by exact type: ``True`` and ``1.0`` hash like
    ``1``), or a tracer running (shapes may be symbolic there).

    Validation depends only on the tensors' types, shapes, dtypes and devices and on the plain
    settings' values, so a repeated call (a tracker's every frame, a training step) skips
    validation, planning and the backend's shape work. The key ends with whether a backward pass
    follows and whether torch is in deterministic mode (the engine decides differently there)."""
    # Every call of every API runs this first: plain loops and exact types, no helper calls.
    no_grad = True
    key: list[Any] = [name]
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            return None
        key.append((type(t), t.shape, t.dtype, t.device))
        no_grad = no_grad and not t.requires_grad
    for value in settings:
        kind = type(value)
        if kind is int or kind is str or value is None:
            continue
        if kind is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
            continue
        if isinstance(value, str):  # a str subclass (a Choice) keys as its text
            return signature(name, tensors, [str(v) if isinstance(v, str) else v for v in settings])
        return None
    if tracing():
        return None
    key += settings
    key.append(not no_grad and torch.is_grad_enabled())
    key.append(torch.are_deterministic_algorithms_enabled())  # _compute.deterministic, inlined
    return tuple(key)


class Bound:
    """A bound call: ``bound(*inputs)`` is the result; :meth:`call` also says which option ran
    (a repeated call signature may try several, see :mod:`xcorr.planning.trials`)."""

    __slots__ = ("option", "run", "shape", "spec")

    def __init__(self, run: Run, spec: Any, option: str) -> None:
        self.run, self.spec, self.option = run, spec, option
        self.shape = spec.out_shape

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return computed(self.run, self.shape, *inputs)

    def call(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The result and the option that computed it."""
        if not isinstance(self.run, Trials):
            return self(*inputs), self.option
        ran: list[str] = []
        trials = self.run
        out = computed(lambda *a: trials.call(ran, *a), self.shape, *inputs)
        return out, ran[0] if ran else self.option


class Engine(State):
    """The engine's decisions, on its state (:class:`~xcorr.planning.state.State`)."""

    def measuring(self, family: Family, device_type: str) -> bool:
        """Whether new problems on ``device_type`` are measured: autotune's setting, or by
        default where the family has no constants for the device type; never in deterministic mode."""
        if deterministic():
            return False
        if self._autotune is None:
            return self.constants(family, device_type) is None
        return self._autotune

    def trials_enabled(self, family: Family, device_type: str) -> bool:
        """Whether repeated calls try the other options on real calls (:mod:`xcorr.planning.trials`):
        by default, on devices with constants; never with autotune set, nor in deterministic mode."""
        return self._autotune is None and not deterministic() and self.constants(family, device_type) is not None

    def estimate(self, spec: Any, grad: bool = False, constants: Constants | None = None) -> dict[str, float]:
        """The cost model: estimated seconds per option (forward, plus backward when ``grad``)."""
        family = self.family_of(spec)
        return family.estimate(spec, grad, constants or self.model_constants(family, spec.device.type))

    def decide(self, spec: Any, grad: bool = False) -> str:
        """The option for a validated problem: one allowed option is it; else a measured
        winner; else, when measuring (and not tracing), every option timed and the fastest kept;
        else the cheapest by the cost model, remembered until :meth:`invalidate`. In
        deterministic mode only a loaded winner, else the model."""
        family = self.family_of(spec)
        allowed = family.options(spec, grad)
        if len(allowed) == 1:
            return allowed[0]
        key = family.key(spec, grad)
        fixed = deterministic()
        hit = self.winner(key, fixed)
        if hit is not None:
            return hit
        if spec.batch and self.measuring(family, spec.device.type) and not compiling() and not exporting():
            with self._lock:
                if key not in self._measured:
                    self._measured[key] = argmin(self.measure(spec, grad, allowed))
                return self._measured[key]
        hit = self._modelled.get((key, fixed))
        if hit is not None:
            return hit
        costs = self.estimate(spec, grad)
        option = argmin({o: costs.get(o, float("inf")) for o in allowed})
        if not compiling():
            self._modelled[key, fixed] = option  # one dict store: atomic, so no lock
        return option

    def measure(
        self, spec: Any, grad: bool, allowed: Sequence[str], inputs: Sequence[torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Median seconds of each allowed option on ``inputs`` (random ones of ``spec``'s shapes
        if None), forward, plus backward with ``grad``."""
        family = self.family_of(spec)
        if inputs is None or any(t is None for t in inputs):
            inputs = family.random_inputs(spec)
        inner = compute_spec(spec)
        tensors = [t.detach().to(inner.dtype) for t in inputs]
        if grad:
            tensors = [t.requires_grad_(True) for t in tensors]
        sync = torch.cuda.synchronize if spec.device.type == "cuda" else (lambda: None)
        timings = {}
        for option in allowed:
            run = family.runner(inner, option, grad, False)
            if grad:

                def step(run=run):
                    run(*tensors).sum().backward()
            else:

                def step(run=run):
                    with torch.no_grad():
                        run(*tensors)

            timings[option] = bench(step, sync)
        return timings

    def measure_all(self, spec: Any, grad: bool, inputs: Sequence[torch.Tensor] | None = None) -> dict[str, float]:
        """:meth:`measure` of every allowed option, keeping the winner (an empty batch measures
        nothing: all zeros)."""
        family = self.family_of(spec)
        allowed = family.options(spec, grad)
        timings = self.measure(spec, grad, allowed, inputs) if spec.batch else {o: 0.0 for o in allowed}
        with self._lock:
            self._measured[family.key(spec, grad)] = argmin(timings)
            self.invalidate()
        return timings

    def bind(self, spec: Any, grad: bool, method: str = "auto") -> Bound:
        """The bound call of a validated problem with ``method`` (``"auto"``: :meth:`decide`).

        While tracing, the plain form of the option. An ``"auto"`` call whose problem has no
        measured winner yet tries the options on its repeated calls
        (:mod:`xcorr.planning.trials`): the model's pick first, then the others by estimate
        (never in deterministic mode: see :meth:`trials_enabled`).
        """
        family = self.family_of(spec)
        inner = compute_spec(spec)
        option = self.decide(spec, grad) if method == "auto" else method
        if tracing():
            return Bound(family.runner(inner, option, grad, True), spec, option)
        if method == "auto" and spec.batch:
            key = family.key(spec, grad)
            options = family.options(spec, grad)
            if len(options) > 1 and self.trials_enabled(family, spec.device.type) and not self.is_measured(key):
                costs = self.estimate(spec, grad)
                others = sorted((o for o in options if o != option), key=lambda o: costs.get(o, float("inf")))
                trials = Trials(
                    [option, *others],
                    costs,
                    lambda o: family.runner(inner, o, grad, False),
                    grad,
                    lambda winner: self.record(key, winner),
                )
                return Bound(trials, spec, option)
        return Bound(family.runner(inner, option, grad, False), spec, option)


#: The engine of this process.
ENGINE = Engine()
