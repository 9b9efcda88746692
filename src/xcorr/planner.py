"""The only place that chooses a method for :func:`xcorr.xcorr` (and for the cost volumes).

Layered like scipy's ``choose_conv_method``:

1. **Hard constraints** remove methods that cannot run or cannot be exact here: the device
   (FFT needs ``torch.fft`` kernels: CPU and CUDA), precision (float32 direct convolution
   summing more than :data:`DIRECT_MAX_TAPS_FLOAT32` template taps per output channel loses more
   than 2e-6 of the largest output), export (only the exportable ``"gather"`` while exporting) and
   memory (``"gather"`` only while its product maps fit :data:`GATHER_MAX_BYTES`).
   The memory rule is per search item: gather works in chunks of items.
2. **The cache** of measured winners, keyed by (mode, shapes, geometry, dtype, device, grad).
3. **Measurement**: on CPU, a call signature that repeats (a training loop, a tracker) tries the
   other options on its own calls within a budget of 5% of its first hundred calls' time and keeps
   the fastest (:mod:`xcorr.planning.trials`); with :func:`set_autotune` ``True``, and by default on
   devices without fitted constants (CUDA), every candidate is timed once per key on first use.
4. **The cost model**: estimated seconds per method from operation counts and per-device
   constants. The built-in CPU ones (:data:`CPU_CONSTANTS`) are fitted by ``python -m xcorr fit``
   for each CPU capability torch dispatches to (AVX2, AVX512), since oneDNN, MKL and pocketfft
   pick their kernels by it; ``python -m xcorr fit --save`` fits them on the machine at hand and
   saves them in a profile, which is used from then on (see :mod:`xcorr.planning.profile`).

With a backward pass, the options are each method for all three passes (its own forward and
backward), and :data:`PER_PASS`: the forward, the search gradient and the template gradient each on
the method chosen for its own problem (:mod:`xcorr.correlation.adjoint`, :mod:`xcorr.correlation.passes`).

All of this state (the constants in force, the measured winners, the model's answers, the
autotune setting) belongs to one :class:`Planner`, :data:`PLANNER`. Every change of it goes
through :meth:`Planner.invalidate`, which bumps :attr:`Planner.generation` and drops every answer
derived from the old state, including the bound calls that :func:`xcorr.xcorr` keeps per call
signature.

Under ``torch.compile`` and while exporting, the planner decides from shapes and the cache alone:
no timing, no lock, no file, nothing that would break a graph.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Callable

import torch

from ._compute import compute_dtype, compute_spec
from ._tracing import compiling as _compiling
from ._tracing import exporting, tracing
from .correlation import adjoint as _adjoint
from .correlation import passes as _passes
from .correlation.backends import BACKENDS
from .correlation.backends.fft import Layout, chunk_count
from .correlation.backends.gather import maps_bytes
from .correlation.passes import Passes
from .correlation.spec import MODES, Spec
from .planning import profile as _profile
from .volumes.backends import VOLUME_BACKENDS
from .volumes.backends.banded import chunking as banded_chunks
from .volumes.backends.banded import plan as banded_plan
from .volumes.spec import VolumeSpec

#: float32 direct convolution accumulates each output channel's taps in one running sum; from
#: about this many template taps its error exceeds 2e-6 of the largest output in every mode
#: (measured on uniform random data: ~5e-8 per tap side; naive C=1 96x96: 4.0e-6, up-channel
#: with one template, C=2 64x64: 3.3e-6), while FFT's stays near 3e-7.
DIRECT_MAX_TAPS_FLOAT32 = 32 * 32

#: Devices with ``torch.fft`` kernels that the FFT backend may use.
FFT_DEVICES = ("cpu", "cuda")

#: The method ``auto`` picks while a graph is exported: no convolution takes a run-time weight
#: (TensorRT and mobile runtimes refuse those) and nothing depends on the batch size.
EXPORT_METHOD = "gather"

#: Outside export, "gather" competes only where it can win: in modes that sum over channels (one
#: matrix product; SiamRPN's up-channel head runs several times faster than dense convolution),
#: and while its tap-by-pixel product maps fit in this many bytes. Its depthwise path is a loop
#: over the taps, never faster than "direct" in eager PyTorch.
GATHER_MAX_BYTES = 1 << 30


#: Channels a convolution kernel computes at once: a dense kernel's output channels, a depthwise
#: kernel's channels (16 float32 lanes; also on AVX2, where the kernels run two 8-lane vectors).
#: Fewer leave lanes idle: a one-channel depthwise 16x16 correlation of a 512x512 image takes
#: 19 ms, what 16 channels would (the model without this said 1.5 ms).
LANES = 16


def _lanes(n: int) -> int:
    """``n`` channels rounded up to whole kernels' worth of :data:`LANES`."""
    return -(-n // LANES) * LANES


@dataclass(frozen=True)
class Constants:
    """Per-device costs of the cost model, in nanoseconds.

    Attributes:
        depthwise_mac: one multiply-add of a depthwise convolution (modes naive, depthwise).
        direct_element: one element of the padded search and of the per-channel output of a
            depthwise convolution (memory traffic: layout reorders, the channel sum).
        dense_mac: one multiply-add of a dense grouped convolution (mode upchannel), counting
            each group's output channels rounded up to :data:`LANES`.
        direct_call: fixed cost of a direct call.
        direct_backward: backward / forward time ratio of the direct method (modes naive,
            depthwise: the backward made of forward correlations).
        dense_backward: backward / forward time ratio of the dense grouped convolution
            (mode upchannel: PyTorch's own backward).
        direct_backward_mac: one multiply-add of the search gradient's full convolution
            (``B*C*Hp*Wp*h*w``), which dwarfs the forward's when the template nearly fills the
            search.
        fft_point: one point of a real transform, per ``log2`` of its length.
        fft_product: one complex multiply-add of the frequency-domain product.
        fft_call: fixed cost of an FFT call.
        fft_chunk: fixed cost of each chunk an FFT call is cut into.
        fft_backward: backward / forward time ratio of the FFT method.
        gather_call: fixed cost of a gather call (modes naive, upchannel).
        gather_element: one element of the tap-by-pixel product maps, written then gathered.
        gather_search: one element of the padded search (padding, reshaping).
        gather_mac: one multiply-add of the tap-by-pixel matrix product.
        gather_backward: backward / forward time ratio of the gather method.
        float64_depthwise, float64_dense, float64_fft, float64_gather: float64 / float32 time
            ratios of the depthwise and dense direct kernels, of FFT and of gather (float64 direct
            convolution leaves oneDNN for a slower path). Not fitted by ``python -m xcorr fit``,
            whose problems are float32: medians of 5 to 8 problems each, measured side by side.
    """

    depthwise_mac: float
    direct_element: float
    dense_mac: float
    direct_call: float
    direct_backward: float
    dense_backward: float
    direct_backward_mac: float
    fft_point: float
    fft_product: float
    fft_call: float
    fft_chunk: float
    fft_backward: float
    gather_call: float
    gather_element: float
    gather_search: float
    gather_mac: float
    gather_backward: float
    float64_depthwise: float
    float64_dense: float
    float64_fft: float
    float64_gather: float


#: The vector instructions torch's CPU kernels use in this process (``ATEN_CPU_CAPABILITY`` can
#: lower it): ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, or another architecture's name. oneDNN, MKL
#: and pocketfft pick their kernels by it too, so the fastest method can differ by 2x between them.
CPU_CAPABILITY: str = torch.backends.cpu.get_cpu_capability()

#: Built-in CPU constants per capability, each fitted by ``python -m xcorr fit`` on a 2-core x86
#: CPU of that kind (torch 2.13, 2 threads). Read-only.
CPU_CONSTANTS: Mapping[str, Constants] = MappingProxyType(
    {
        "AVX512": Constants(
            depthwise_mac=0.0182,
            direct_element=0.321,
            dense_mac=0.0144,
            direct_call=149000.0,
            direct_backward=3.23,
            direct_backward_mac=0.0158,
            dense_backward=3.95,
            fft_point=0.133,
            fft_product=2.78,
            fft_call=393000.0,
            fft_chunk=0.0,
            fft_backward=1.8,
            gather_call=106000.0,
            gather_element=0.389,
            gather_search=0.225,
            gather_mac=0.00803,
            gather_backward=2.61,
            float64_depthwise=16.0,
            float64_dense=2.1,
            float64_fft=1.7,
            float64_gather=2.2,
        ),
        "AVX2": Constants(
            depthwise_mac=0.0295,
            direct_element=0.36,
            dense_mac=0.022,
            direct_call=148000.0,
            direct_backward=3.2,
            direct_backward_mac=0.0253,
            dense_backward=6.08,
            fft_point=0.186,
            fft_product=4.74,
            fft_call=264000.0,
            fft_chunk=60500.0,
            fft_backward=1.73,
            gather_call=121.0,
            gather_element=1.18,
            gather_search=0.705,
            gather_mac=0.0155,
            gather_backward=1.73,
            float64_depthwise=16.0,
            float64_dense=2.1,
            float64_fft=1.7,
            float64_gather=2.2,
        ),
    }
)


def builtin_cpu_set(capability: str) -> str:
    """The built-in CPU set for ``capability``: its own, else the AVX2 set (the nearest kind to
    CPUs without AVX2, and to other architectures, whose kernels are narrower than AVX-512's)."""
    return capability if capability in CPU_CONSTANTS else "AVX2"


#: Built-in cost constants per device type (the CPU's for this process's capability); a device
#: type without them is measured (see module doc). Read-only: :meth:`Planner.set_constants`
#: changes the constants in force.
CONSTANTS: Mapping[str, Constants] = MappingProxyType({"cpu": CPU_CONSTANTS[builtin_cpu_set(CPU_CAPABILITY)]})

#: The option of running each pass of a correlation with a backward pass (the forward, the search
#: gradient, the template gradient) on the method chosen for that pass's own problem
#: (:mod:`xcorr.correlation.adjoint`). It wins where one method's backward is slow for its shapes: on AVX2,
#: oneDNN's depthwise template gradient of SiamRPN++ (a 25x25 kernel, a 7x7 output) runs at a
#: tenth of its forward's speed, while FFT computes it in a fraction of the forward's time.
PER_PASS = "per-pass"

#: The cost model counts the per-pass option at this many times the sum of its passes' forward
#: estimates. Those are the gradient problems' forward costs, without the backward ratios fitted
#: on whole steps, and they undercount: on 40 held-out problems (2-core AVX2 CPU) per-pass was
#: the fastest step in 4, by at most 14%; counted at face value, the model's picks fell within
#: 1.1x of the fastest in 25 of 40, counted twice in 33 (34 without the option). So per-pass is
#: mostly found by measurement (repeated calls, autotune, ``choose_method(..., measure=True)``).
PER_PASS_ESTIMATE_FACTOR = 2.0


def _pass_problems(spec: Spec) -> tuple[Spec, Spec]:
    """The search- and template-gradient problems of ``spec``."""
    return _adjoint.search_problem(spec), _adjoint.template_problem(spec)


#: Bound calls :attr:`Planner.derived` holds at most (then it starts again).
DERIVED_ENTRIES = 1024

#: Built-in constants' provenance, as :meth:`Planner.constants_source` reports it.
BUILTIN_SOURCE = (
    f"built-in {builtin_cpu_set(CPU_CAPABILITY)} set (CPU capability {CPU_CAPABILITY}; fitted on a 2-core x86 CPU, "
    "torch 2.13, 2 threads)"
)

Key = tuple


def _key(spec: Spec, grad: bool) -> Key:
    return (
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


def _argmin(costs: dict[str, float]) -> str:
    # A plain loop: torch.compile cannot trace min() with a key function.
    best = ""
    for method, cost in costs.items():
        if not best or cost < costs[best]:
            best = method
    return best


def _bench(fn: Callable[[], object], sync: Callable[[], None], budget: float = 0.2) -> float:
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


def _loses_precision(spec: Spec) -> bool:
    """Whether float32 direct convolution would lose the promised precision: every mode sums a
    template's taps in one running sum per channel (naive then adds the channels; a single
    up-channel template's dense kernel sums its taps the same way)."""
    h, w = spec.z_shape[-2:]
    return compute_dtype(spec.dtype) == torch.float32 and h * w > DIRECT_MAX_TAPS_FLOAT32


class Choice(str):
    """The method ``method="auto"`` uses: a string (the forward's method), with :attr:`passes`
    saying the method of each pass when a backward pass follows."""

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

    constants: str
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
        """The fastest method (what ``method="auto"`` now uses for this problem's forward)."""
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


class Planner:
    """The planner's state and its decisions.

    Attributes:
        generation (int): changes whenever an answer of :meth:`select` may change; callers
            that remember answers keep them with the generation they were given in.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._autotune: bool | None = None
        self._constants: dict[str, Constants] = {}
        self._sources: dict[str, str] = {}
        self._profile_read = False
        self._measured: dict[Key, str] = {}
        self._modelled: dict[Key, str] = {}
        #: Answers that others derive from the planner's (``xcorr.xcorr``'s bound calls by
        #: signature), read directly on the hot path, written by :meth:`remember`.
        self.derived: dict[Any, Any] = {}
        #: Where the measured winners came from, as the bench reports it.
        self.tuning_source = "measured in this process only"
        self._lock = threading.RLock()
        self.reset_constants()

    # State and its one invalidation.

    def invalidate(self) -> None:
        """Drop every answer derived from the current state: the model's, and everyone's bound calls."""
        with self._lock:
            self.generation += 1
            self._modelled.clear()
            self.derived.clear()

    def remember(self, key: Any, answer: Any, generation: int) -> None:
        """Keep ``answer`` in :attr:`derived` unless the state changed since ``generation``, when
        it was worked out (another thread's measurement, say); at most :data:`DERIVED_ENTRIES`."""
        if generation != self.generation:
            return
        if len(self.derived) >= DERIVED_ENTRIES:
            self.derived.clear()
        self.derived[key] = answer

    def clear(self) -> None:
        """Forget every measured winner (and with :meth:`invalidate` whatever followed from them)."""
        with self._lock:
            self._measured.clear()
            self.invalidate()

    def set_autotune(self, enabled: bool | None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
        self._autotune = enabled
        self.invalidate()

    def set_constants(self, device_type: str, constants: Constants, source: str = "set at run time") -> None:
        """Use ``constants`` for ``device_type`` from now on (``source`` says where they came from)."""
        if not isinstance(constants, Constants):
            raise TypeError(f"constants must be a planner.Constants, got {type(constants).__name__}")
        self._read_profile()
        self._constants[device_type] = constants
        self._sources[device_type] = source
        self.invalidate()

    def reset_constants(self) -> None:
        """Back to the built-in constants; the profile is read again on next use."""
        self._constants = dict(CONSTANTS)
        self._sources = {device: BUILTIN_SOURCE for device in CONSTANTS}
        self._profile_read = False
        self.invalidate()

    def _read_profile(self) -> None:
        """Take the saved profile's constants for this machine, once (lazily: on first use)."""
        if self._profile_read or _compiling():
            return
        self._profile_read = True
        for device_type, (values, source) in _profile.load_constants([f.name for f in fields(Constants)]).items():
            self._constants[device_type] = Constants(**values)
            self._sources[device_type] = source

    def constants(self, device_type: str) -> Constants | None:
        """The constants in force for ``device_type``, or None where it has none (it is measured)."""
        self._read_profile()
        return self._constants.get(device_type)

    def model_constants(self, device_type: str) -> Constants:
        """The constants the cost model uses for ``device_type``: its own, or else the CPU's."""
        c = self.constants(device_type) or self.constants("cpu")
        assert c is not None  # the built-in constants include the CPU's
        return c

    def constants_source(self, device_type: str) -> str:
        """Where the constants in force for ``device_type`` come from."""
        self._read_profile()
        return self._sources.get(device_type, "none: every new problem is measured")

    def measured_winners(self) -> dict[Key, str]:
        """A copy of the measured winners of correlations (for :func:`xcorr.save_tuning`)."""
        with self._lock:
            return {k: m for k, m in self._measured.items() if k[0] in MODES}

    def add_winners(self, winners: dict[Key, str]) -> None:
        """Take measured winners (from :func:`xcorr.load_tuning`); unknown methods are skipped."""
        with self._lock:
            self._measured.update({k: m for k, m in winners.items() if m in BACKENDS or m == PER_PASS})
            self.invalidate()

    def record(self, spec: Spec, grad: bool, winner: str) -> None:
        """Keep a winner measured elsewhere (on real calls: :mod:`xcorr.planning.trials`); later decisions
        take it, the calls bound before keep theirs."""
        key = _key(spec, grad)
        with self._lock:
            self._measured[key] = winner
            self._modelled.pop(key, None)

    def is_measured(self, spec: Spec, grad: bool) -> bool:
        """Whether ``spec``'s problem has a measured winner."""
        return _key(spec, grad) in self._measured

    # Decisions.

    def candidates(self, spec: Spec) -> list[str]:
        """The methods the hard constraints allow for ``spec``, in registry order."""
        if exporting():
            return [EXPORT_METHOD]
        allowed = list(BACKENDS)
        if spec.device.type not in FFT_DEVICES:
            allowed.remove("fft")
        if spec.mode == "depthwise" or maps_bytes(spec) > GATHER_MAX_BYTES:
            allowed.remove("gather")
        if "fft" in allowed and len(allowed) > 1 and _loses_precision(spec):
            allowed.remove("direct")
        return allowed

    def options(self, spec: Spec, grad: bool) -> list[str]:
        """What :meth:`select` chooses among: the allowed methods, and with a backward pass
        :data:`PER_PASS` (not for an empty batch, where nothing runs, nor while tracing: a graph
        keeps one method per op)."""
        allowed = self.candidates(spec)
        return [*allowed, PER_PASS] if grad and spec.batch and not tracing() else allowed

    def estimate(self, spec: Spec, grad: bool = False, constants: Constants | None = None) -> dict[str, float]:
        """The cost model: estimated seconds per method (forward, plus backward when ``grad``).

        Args:
            spec: the validated problem.
            grad: whether a backward pass will follow.
            constants: costs to use; by default those in force for ``spec``'s device type (CPU's
                if it has none).

        Returns:
            seconds for ``"direct"`` and ``"fft"``, and for ``"gather"`` in the modes where it
            competes (not depthwise); with ``grad``, also for :data:`PER_PASS`: the sum of the
            three passes' estimates, each pass on the method chosen for it, times
            :data:`PER_PASS_ESTIMATE_FACTOR`.
        """
        c = constants or self.model_constants(spec.device.type)
        costs = _estimate(spec, grad, c)
        if grad and spec.batch:
            passes = (spec, *_pass_problems(spec))
            costs[PER_PASS] = PER_PASS_ESTIMATE_FACTOR * sum(_estimate(p, False, c)[self.select(p)] for p in passes)
        return costs

    def measure(
        self, spec: Spec, grad: bool, allowed: list[str], x: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Time each allowed option on ``x`` and ``z`` (random tensors of ``spec``'s shapes if
        None); :data:`PER_PASS` runs the passes on the methods :meth:`passes` gives."""
        if x is None or z is None:
            gen = torch.Generator(device=spec.device).manual_seed(0)
            x = torch.randn(spec.x_shape, generator=gen, device=spec.device, dtype=spec.dtype)
            z = torch.randn(spec.z_shape, generator=gen, device=spec.device, dtype=spec.dtype)
        spec = compute_spec(spec)
        x, z = x.detach().to(spec.dtype), z.detach().to(spec.dtype)
        if grad:
            x, z = x.requires_grad_(True), z.requires_grad_(True)
        sync = torch.cuda.synchronize if spec.device.type == "cuda" else (lambda: None)
        timings = {}
        for method in allowed:
            run = self.runner(spec, method, grad)
            if grad:

                def step(run=run):
                    run(x, z).sum().backward()
            else:

                def step(run=run):
                    with torch.no_grad():
                        run(x, z)

            timings[method] = _bench(step, sync)
        return timings

    def runner(self, spec: Spec, option: str, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``run(x, z)`` of a validated float32/float64 problem with ``option``: a method, or
        :data:`PER_PASS` (the methods of :meth:`passes`, which run alone where they agree)."""
        if option == PER_PASS:
            passes = self.pass_methods(spec)
            if not passes.uniform:
                return lambda x, z: _passes.run(x, z, spec, passes)
            option = passes.forward
        return BACKENDS[option].bound(spec, grad)

    def _measuring(self, spec: Any) -> bool:
        """Whether new problems on ``spec.device`` are measured: autotune's setting, or by default
        where the device type has no fitted constants."""
        if self._autotune is None:
            return self.constants(spec.device.type) is None
        return self._autotune

    def trials_enabled(self, spec: Any) -> bool:
        """Whether repeated calls of ``spec``'s signature try the other options on real calls
        (:mod:`xcorr.planning.trials`): by default, on devices with constants; never with autotune set."""
        return self._autotune is None and self.constants(spec.device.type) is not None

    def select(self, spec: Spec, grad: bool = False) -> str:
        """Pick the option for a validated problem: a method, or with ``grad`` :data:`PER_PASS`.

        Args:
            spec: the validated problem.
            grad: whether a backward pass will follow (it changes which method is fastest).
        """
        return self.decide(
            _key(spec, grad),
            self.options(spec, grad),
            lambda: self.estimate(spec, grad),
            lambda allowed: self.measure(spec, grad, allowed),
            measuring=bool(spec.batch) and self._measuring(spec),
        )

    def pass_methods(self, spec: Spec) -> Passes:
        """The method of each pass, each chosen for its own problem (:mod:`xcorr.correlation.adjoint`)."""
        forward, search, template = (self.select(problem) for problem in (spec, *_pass_problems(spec)))
        return Passes(forward, search, template)

    def passes(self, spec: Spec, grad: bool = False) -> Passes:
        """The methods ``method="auto"`` runs for ``spec``: one for every pass, or one per pass."""
        option = self.select(spec, grad)
        if option == PER_PASS:
            return self.pass_methods(spec)
        return Passes(option, option, option)

    def decide(
        self,
        key: Key,
        allowed: list[str],
        estimate: Callable[[], dict[str, float]],
        measure: Callable[[list[str]], dict[str, float]] | None,
        measuring: bool,
    ) -> str:
        """The layering every family of problems shares (correlations, cost volumes): one allowed
        method is it; else a measured winner; else, when ``measuring`` (and not tracing), every
        allowed method is timed by ``measure`` and the fastest kept; else the cheapest by
        ``estimate`` (seconds per method), remembered until :meth:`invalidate`.

        ``key`` must name the family, the problem and whether a backward pass follows.
        """
        if len(allowed) == 1:
            return allowed[0]
        hit = self._measured.get(key)
        if hit is not None:
            return hit
        if measure is not None and measuring and not _compiling() and not exporting():
            with self._lock:
                if key not in self._measured:
                    self._measured[key] = _argmin(measure(allowed))
                return self._measured[key]
        hit = self._modelled.get(key)
        if hit is not None:
            return hit
        costs = estimate()
        method = _argmin({m: costs[m] for m in allowed})
        if not _compiling():
            self._modelled[key] = method  # one dict store: atomic, so no lock
        return method

    def choose(
        self, spec: Spec, grad: bool, measure: bool, x: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> Measured:
        """What :func:`xcorr.choose_method` returns: the methods and, when measured, the timings
        (and the measured winners then serve ``method="auto"``). With a backward pass, each
        pass's problem is measured on its own first (forward only), then every option whole."""
        source = self.constants_source(spec.device.type)
        if not measure:
            return Measured(self.passes(spec, grad), {}, source)
        pass_timings: dict[str, dict[str, float]] = {}
        if grad and not tracing():
            search, template = _pass_problems(spec)
            for name, problem, inputs in (
                ("forward", spec, (x, z)),
                ("search", search, ()),
                ("template", template, ()),
            ):
                pass_timings[name] = self._measure_all(problem, False, self.candidates(problem), *inputs)
        timings = self._measure_all(spec, grad, self.options(spec, grad), x, z)
        with self._lock:
            self.invalidate()
        return Measured(self.passes(spec, grad), timings, source, pass_timings)

    def _measure_all(
        self, spec: Spec, grad: bool, allowed: list[str], x: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> dict[str, float]:
        """:meth:`measure`, keeping the winner (an empty batch measures nothing: all zeros)."""
        timings = self.measure(spec, grad, allowed, x, z) if spec.batch else {m: 0.0 for m in allowed}
        with self._lock:
            self._measured[_key(spec, grad)] = _argmin(timings)
        return timings


def _estimate(spec: Spec, grad: bool, c: Constants) -> dict[str, float]:
    B, C = spec.x_shape[:2]
    Bz, Cz, h, w = spec.z_shape
    K = spec.out_channels
    Ho, Wo = spec.out_size
    Hp, Wp = spec.padded_search
    out = B * Ho * Wo
    wide = spec.dtype == torch.float64
    if spec.mode == "upchannel":
        # Dense kernels vectorise over a group's output channels: K counts as _lanes(K).
        direct = c.direct_call + c.dense_mac * out * _lanes(K) * C * h * w
        if grad:
            direct *= 1 + c.dense_backward
        if wide:
            direct *= c.float64_dense
    else:
        # Depthwise kernels vectorise over the convolution's Bz*C channels (the k items that
        # share a template are its batch).
        channels = spec.k * _lanes(Bz * C)
        macs = Ho * Wo * channels * h * w
        # Per element of the search and of the per-channel output: oneDNN reorders both to and
        # from its blocked layout, which costs more than the arithmetic once they leave cache.
        elements = B * C * (Hp * Wp + Ho * Wo)
        direct = c.direct_call + c.depthwise_mac * macs + c.direct_element * elements
        if grad:
            direct *= 1 + c.direct_backward
            direct += c.direct_backward_mac * channels * Hp * Wp * h * w
        if wide:
            direct *= c.float64_depthwise

    layout = Layout.of(spec)
    (nh, nw), (Lh, Lw) = layout.n, layout.L
    points = Lh * Lw
    bins = Lh * (Lw // 2 + 1)
    transforms = (B * nh * nw * (C + K) + Bz * Cz) * points * math.log2(points)
    products = B * nh * nw * bins * (C * K if spec.mode == "upchannel" else C)
    fft = c.fft_call + c.fft_chunk * chunk_count(spec) + c.fft_point * transforms + c.fft_product * products
    if grad:
        fft *= 1 + c.fft_backward
    if wide:
        fft *= c.float64_fft
    costs = {"direct": direct * 1e-9, "fft": fft * 1e-9}

    if spec.mode != "depthwise":
        maps = B * K * h * w * (Hp * Wp + Ho * Wo)
        search = B * C * Hp * Wp
        gather = c.gather_call + c.gather_element * maps + c.gather_search * search + c.gather_mac * search * K * h * w
        if grad:
            gather *= 1 + c.gather_backward
        if wide:
            gather *= c.float64_gather
        costs["gather"] = gather * 1e-9
    return costs


#: The planner of this process.
PLANNER = Planner()

candidates = PLANNER.candidates
estimate = PLANNER.estimate
measure = PLANNER.measure
select = PLANNER.select


def set_autotune(enabled: bool | None) -> None:
    """Measure the methods once per problem and cache the winner, like ``torch.backends.cudnn.benchmark``.

    Args:
        enabled (bool or None): ``True`` times every candidate method the first time a
            (mode, shapes, geometry, dtype, device, grad) key is seen and reuses the winner;
            ``False`` always uses the cost model, and never measures; ``None`` (the default)
            measures every new key on devices without fitted constants (CUDA), and on the CPU
            tries the other options on the repeated calls of a signature, within 5% of its first
            hundred calls' time (:mod:`xcorr.planning.trials`).

    Example:
        >>> xcorr.set_autotune(True)
        >>> xcorr.set_autotune(None)
    """
    PLANNER.set_autotune(enabled)


def clear_cache() -> None:
    """Forget every measured winner and every remembered decision (they are made again on next use).

    Example:
        >>> xcorr.clear_cache()
    """
    PLANNER.clear()


def save_tuning(path: str | os.PathLike) -> None:
    """Save the measured winners of this process (autotune, ``choose_method(..., measure=True)``) to ``path``.

    Like FFTW's wisdom: :func:`load_tuning` in a later process skips their measurement. Each
    winner is saved with the machine it was measured on (device kind, threads, torch version).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tuning.json")
        >>> xcorr.save_tuning(path)
        >>> xcorr.load_tuning(path)
        0
    """
    _profile.save_tuning(path, PLANNER.measured_winners())


def load_tuning(path: str | os.PathLike) -> int:
    """Take the measured winners saved by :func:`save_tuning`; returns how many were taken.

    Winners measured on another machine are skipped; an unreadable or foreign file is ignored
    with one warning.
    """
    winners = _profile.load_tuning(path)
    PLANNER.add_winners(winners)
    PLANNER.tuning_source = f"{len(winners)} loaded from {os.fspath(path)}, and measured in this process"
    return len(winners)


# Cost volumes (local correlation, stereo, correlation pyramids): their candidates and cost model.
# They go through Planner.decide, so they share the cache, autotune and invalidation above.

#: The cost-volume method ``auto`` picks while a graph is exported: Pad, Slice, Mul, ReduceSum
#: and Concat nodes only, nothing that depends on the batch size.
VOLUME_EXPORT_METHOD = "shifted"


def volume_candidates(spec: VolumeSpec) -> list[str]:
    """The cost-volume methods the hard constraints allow for ``spec``, in registry order."""
    if exporting():
        return [VOLUME_EXPORT_METHOD]
    allowed = list(VOLUME_BACKENDS)
    # The band needs distinct displacements along each axis (a step of 0 repeats one).
    if (spec.dy[1] == 0 and spec.dy[2] > 1) or (spec.dx[1] == 0 and spec.dx[2] > 1):
        allowed.remove("banded")
    return allowed


def _volume_key(spec: VolumeSpec, grad: bool) -> Key:
    return (
        "volume",
        spec.shape,
        spec.groups,
        spec.kernel,
        spec.kernel_dilation,
        spec.origin,
        spec.stride,
        spec.out_size,
        spec.dy,
        spec.dx,
        spec.dtype,
        spec.device.type,
        spec.device.index,
        grad,
    )


@dataclass(frozen=True)
class VolumeConstants:
    """Per-device costs of the cost-volume model, in nanoseconds (fitted by
    :func:`xcorr.benchmarks.volume_costmodel.fit`).

    Attributes:
        shifted_call: fixed cost of each displacement of ``"shifted"`` (its few tensor operations).
        shifted_element: one element of one displacement's product map (``B*C`` times the
            product grid): read both maps, multiply, sum the channels.
        shifted_output: one output element, times the kernel's rows plus columns (window sums).
        shifted_backward: backward / forward time ratio of ``"shifted"``.
        banded_call: fixed cost of a ``"banded"`` call.
        banded_chunk: fixed cost of each chunk of tiles (a few operations each).
        banded_mac: one multiply-add of the tile products (the band's and the waste's; the
            copies of the tile operands grow with them).
        banded_band: one element of the volume copied out of the tile products.
        banded_backward: backward / forward time ratio of ``"banded"``.
        float64: float64 / float32 time ratio (both methods; not fitted, measured side by side).
    """

    shifted_call: float
    shifted_element: float
    shifted_output: float
    shifted_backward: float
    banded_call: float
    banded_chunk: float
    banded_mac: float
    banded_band: float
    banded_backward: float
    float64: float


#: Built-in cost-volume constants per device type (the CPU's serve devices without their own),
#: fitted by :func:`xcorr.benchmarks.volume_costmodel.main` on a 2-core x86 CPU (AVX2, torch
#: 2.13) with one thread (the machine was shared: one thread times steadily). On 10 held-out
#: problems the model picked the fastest method in 77% of the forward and forward+backward
#: cases, a wrong pick cost at most 0.83x more time, and its estimates were off by a median
#: factor of 1.6 (shifted) and 1.55 (banded).
VOLUME_CONSTANTS: Mapping[str, VolumeConstants] = MappingProxyType(
    {
        "cpu": VolumeConstants(
            shifted_call=30500.0,
            shifted_element=0.749,
            shifted_output=0.0,
            shifted_backward=3.03,
            banded_call=260000.0,
            banded_chunk=290000.0,
            banded_mac=0.104,
            banded_band=1.70,
            banded_backward=1.97,
            float64=2.0,
        ),
    }
)


def volume_features(spec: VolumeSpec) -> dict[str, dict[str, float]]:
    """The operation counts the cost model weighs, per method (see :class:`VolumeConstants`)."""
    B, C = spec.shape[:2]
    G, P = spec.groups, spec.displacements
    (_, _, nr), (_, _, nc) = spec.product_grid
    Ho, Wo = spec.out_size
    taps = 0 if spec.pointwise else spec.kernel[0] + spec.kernel[1]
    shifted = {
        "call": float(P),
        "element": float(B * C * nr * nc * P),
        "output": float(B * G * P * Ho * Wo * (1 + taps)),
    }
    plan, _ = banded_plan(spec)
    y, x = plan.y, plan.x
    classes = y.classes * x.classes
    tiles = B * G * classes * y.tiles * x.tiles
    M, N, K = y.tile * x.tile, y.halo * x.halo, C // G
    banded = {
        "chunk": float(classes * len(banded_chunks(plan, B, 4))),
        "mac": float(tiles * M * N * K),
        "band": float(B * G * P * y.padded * x.padded + B * G * P * Ho * Wo * (1 + taps)),
    }
    return {"shifted": shifted, "banded": banded}


def volume_estimate(spec: VolumeSpec, grad: bool = False, constants: VolumeConstants | None = None) -> dict[str, float]:
    """The cost model of cost volumes: estimated seconds per method (forward, plus backward when ``grad``).

    Each estimate is linear in the constants (``python -m xcorr fit`` reads the features off it).
    """
    c = constants or VOLUME_CONSTANTS.get(spec.device.type) or VOLUME_CONSTANTS["cpu"]
    f = volume_features(spec)
    s, b = f["shifted"], f["banded"]
    shifted = c.shifted_call * s["call"] + c.shifted_element * s["element"] + c.shifted_output * s["output"]
    banded = c.banded_call + c.banded_chunk * b["chunk"] + c.banded_mac * b["mac"] + c.banded_band * b["band"]
    if grad:
        shifted *= 1 + c.shifted_backward
        banded *= 1 + c.banded_backward
    if spec.dtype == torch.float64:
        shifted, banded = shifted * c.float64, banded * c.float64
    return {"shifted": shifted * 1e-9, "banded": banded * 1e-9}


def volume_measure(
    spec: VolumeSpec, grad: bool, allowed: list[str], f1: torch.Tensor | None = None, f2: torch.Tensor | None = None
) -> dict[str, float]:
    """Time each allowed cost-volume method on ``f1`` and ``f2`` (random tensors of ``spec``'s shape if None)."""
    if f1 is None or f2 is None:
        gen = torch.Generator(device=spec.device).manual_seed(0)
        f1 = torch.randn(spec.shape, generator=gen, device=spec.device, dtype=spec.dtype)
        f2 = torch.randn(spec.shape, generator=gen, device=spec.device, dtype=spec.dtype)
    spec = replace(spec, dtype=compute_dtype(spec.dtype))
    f1, f2 = f1.detach().to(spec.dtype), f2.detach().to(spec.dtype)
    if grad:
        f1, f2 = f1.requires_grad_(True), f2.requires_grad_(True)
    sync = torch.cuda.synchronize if spec.device.type == "cuda" else (lambda: None)
    timings = {}
    for method in allowed:
        run = VOLUME_BACKENDS[method].run
        if grad:

            def step(run=run):
                run(f1, f2, spec).sum().backward()
        else:

            def step(run=run):
                with torch.no_grad():
                    run(f1, f2, spec)

        timings[method] = _bench(step, sync)
    return timings


def select_volume(spec: VolumeSpec, grad: bool = False) -> str:
    """Pick the method of a validated cost volume (see :func:`xcorr.volumes.correlate`).

    Args:
        spec: the validated problem.
        grad: whether a backward pass will follow.
    """
    return PLANNER.decide(
        _volume_key(spec, grad),
        volume_candidates(spec),
        lambda: volume_estimate(spec, grad),
        lambda allowed: volume_measure(spec, grad, allowed),
        measuring=bool(spec.batch) and PLANNER._measuring(spec),
    )


# Correlation pyramids (xcorr.CorrPyramid): a memory rule, then a per-level choice of how windows are correlated.

#: ``"auto"`` builds a correlation pyramid's all-pairs volumes (every level) while they take at
#: most this many bytes, and correlates the looked-up windows on demand beyond: RAFT's standard
#: problem (B2, C256, 46x62, 4 levels) takes 87 MB, its high-resolution one (B1, 136x240) 5.7 GB
#: in float32. Within the budget the volumes win: they cost one matrix product per level, and
#: RAFT looks the pyramid up 12 to 32 times.
PYRAMID_VOLUME_BYTES = 1 << 30

#: A pyramid level is correlated whole (a chunk of f1's pixels against every pixel of the level:
#: one matrix product, then the windows picked from it) rather than window by window (a gather of
#: each window's feature vectors, then dot products) where it has at most this many pixels per
#: window tap. The matrix product does about that many times more multiply-adds per second: 28
#: against 3.5 GMAC/s on a 2-core AVX2 CPU (C=256, float32), forward and backward alike.
PYRAMID_DENSE_PIXELS_PER_TAP = 8


def pyramid_volume_bytes(shape: tuple[int, ...], num_levels: int, dtype: torch.dtype) -> int:
    """Bytes of the all-pairs volumes of every level for features of ``shape`` (B, C, H, W)."""
    B, _, H, W = shape
    # A batch that is a symbol (export with a dynamic batch) counts as one item: comparing it with
    # the budget would bound the batch the exported graph accepts.
    B = B if isinstance(B, int) else 1
    itemsize = 8 if dtype == torch.float64 else 4  # half precision is computed in float32
    return B * H * W * sum((H >> level) * (W >> level) for level in range(num_levels)) * itemsize


def select_pyramid(shape: tuple[int, ...], num_levels: int, dtype: torch.dtype) -> str:
    """The method of ``CorrPyramid(..., method="auto")``: ``"all_pairs"`` while the volumes fit
    :data:`PYRAMID_VOLUME_BYTES`, ``"on_demand"`` beyond.

    Example:
        >>> xcorr.planner.select_pyramid((2, 256, 46, 62), 4, torch.float32)
        'all_pairs'
        >>> xcorr.planner.select_pyramid((1, 256, 136, 240), 4, torch.float32)
        'on_demand'
    """
    return "all_pairs" if pyramid_volume_bytes(shape, num_levels, dtype) <= PYRAMID_VOLUME_BYTES else "on_demand"


def pyramid_level_dense(level_pixels: int, radius: int) -> bool:
    """Whether a pyramid level of ``level_pixels`` pixels is correlated whole rather than window
    by window (see :data:`PYRAMID_DENSE_PIXELS_PER_TAP`); a window reads ``(2r + 2)**2`` pixels."""
    return level_pixels <= PYRAMID_DENSE_PIXELS_PER_TAP * (2 * radius + 2) ** 2
