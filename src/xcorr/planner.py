"""The only place that chooses a method for :func:`xcorr.xcorr`.

Layered like scipy's ``choose_conv_method``:

1. **Hard constraints** remove methods that cannot run or cannot be exact here: the device
   (FFT needs ``torch.fft`` kernels: CPU and CUDA), precision (float32 direct convolution
   summing more than :data:`DIRECT_MAX_TAPS_FLOAT32` products per output channel loses more than
   2e-6 of the largest output), export (only the exportable ``"gather"`` while exporting) and
   memory (``"gather"`` only while its product maps fit :data:`GATHER_MAX_BYTES`).
2. **The cache** of measured winners, keyed by (mode, shapes, geometry, dtype, device, grad).
3. **Measurement** (autotune), when :func:`set_autotune` turned it on, or by default on devices
   without fitted constants (CUDA): every candidate is timed once per key and the winner cached.
4. **The cost model**: estimated seconds per method from operation counts and per-device
   constants (:data:`CONSTANTS`), fitted by ``python -m xcorr fit`` on a 2-core x86 CPU with
   torch 2.13, MKL and 2 threads.

Under ``torch.compile`` and while exporting, the planner decides from shapes and the cache alone:
no timing, no lock, nothing that would break a graph.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ._spec import Spec
from ._tracing import compiling as _compiling
from ._tracing import exporting
from .backends import BACKENDS
from .backends.fft import axis_plan, chunk_count
from .backends.gather import maps_bytes

#: float32 direct convolution accumulates each depthwise output in one running sum; from about
#: this many template taps its error exceeds 2e-6 of the largest output (measured on uniform
#: random data: ~5e-8 per tap side), while FFT's stays near 3e-7.
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


#: Output channels a dense convolution kernel computes at once (AVX-512: 16 float32 lanes).
DENSE_LANES = 16


@dataclass(frozen=True)
class Constants:
    """Per-device costs of the cost model, in nanoseconds.

    Attributes:
        depthwise_mac: one multiply-add of a depthwise convolution (modes naive, depthwise).
        direct_element: one element of the padded search and of the per-channel output of a
            depthwise convolution (memory traffic: layout reorders, the channel sum).
        dense_mac: one multiply-add of a dense grouped convolution (mode upchannel), counting
            each group's output channels rounded up to :data:`DENSE_LANES`.
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


#: Cost constants per device type; a device type without them is measured (see module doc).
CONSTANTS: dict[str, Constants] = {
    "cpu": Constants(
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
    ),
}

_autotune: bool | None = None
_cache: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float]] = {}
_modelled: dict[tuple, str] = {}  # the cost model's answers, which depend on the key alone
#: Bumped whenever a setting or the cache of measured winners changes: callers that remember
#: :func:`select`'s answers (``xcorr.xcorr`` does, per call signature) drop those of older ones.
_generation = 0
_lock = threading.Lock()


def set_autotune(enabled: bool | None) -> None:
    """Measure the methods once per problem and cache the winner, like ``torch.backends.cudnn.benchmark``.

    Args:
        enabled (bool or None): ``True`` times every candidate method the first time a
            (mode, shapes, geometry, dtype, device, grad) key is seen and reuses the winner;
            ``False`` always uses the cost model; ``None`` (the default) measures only on devices
            without fitted constants (CUDA).

    Example:
        >>> xcorr.set_autotune(True)   # doctest: +SKIP
    """
    global _autotune
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _autotune = enabled
    _bump()


def clear_cache() -> None:
    """Forget every measured winner."""
    with _lock:
        _cache.clear()
        _timings.clear()
        _modelled.clear()
        _bump()


def _key(spec: Spec, grad: bool) -> tuple:
    return (spec.mode, spec.x_shape, spec.z_shape, spec.padding, spec.stride, spec.dilation,
            spec.dtype, spec.device.type, spec.device.index, grad)


def candidates(spec: Spec) -> list[str]:
    """The methods the hard constraints allow for ``spec``, in registry order."""
    if exporting():
        return [EXPORT_METHOD]
    allowed = list(BACKENDS)
    if spec.device.type not in FFT_DEVICES:
        allowed.remove("fft")
    if spec.mode == "depthwise" or spec.batch * maps_bytes(spec) > GATHER_MAX_BYTES:
        allowed.remove("gather")
    if "fft" in allowed and len(allowed) > 1 and _loses_precision(spec):
        allowed.remove("direct")
    return allowed


def _loses_precision(spec: Spec) -> bool:
    h, w = spec.z_shape[-2:]
    low = spec.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return low and spec.mode == "depthwise" and h * w > DIRECT_MAX_TAPS_FLOAT32


def estimate(spec: Spec, grad: bool = False, constants: Constants | None = None) -> dict[str, float]:
    """The cost model: estimated seconds per method (forward, plus backward when ``grad``).

    Args:
        spec: the validated problem.
        grad: whether a backward pass will follow.
        constants: costs to use; by default those of ``spec``'s device type (CPU's if it has none).
    """
    c = constants or CONSTANTS.get(spec.device.type, CONSTANTS["cpu"])
    B, C = spec.x_shape[:2]
    Bz, Cz, h, w = spec.z_shape
    K = spec.out_channels
    Ho, Wo = spec.out_size
    out = B * Ho * Wo
    if spec.mode == "upchannel":
        # Dense kernels vectorise over a group's output channels, DENSE_LANES at a time: fewer
        # channels leave lanes idle, so K is counted rounded up to a multiple of DENSE_LANES.
        lanes = -(-K // DENSE_LANES) * DENSE_LANES
        direct = c.direct_call + c.dense_mac * out * lanes * C * h * w
        if grad:
            direct *= 1 + c.dense_backward
    else:
        macs = out * C * h * w
        # Per element of the search and of the per-channel output: oneDNN reorders both to and
        # from its blocked layout, which costs more than the arithmetic once they leave cache.
        elements = B * C * (spec.padded_search[0] * spec.padded_search[1] + Ho * Wo)
        direct = c.direct_call + c.depthwise_mac * macs + c.direct_element * elements
        if grad:
            direct *= 1 + c.direct_backward
            Hp, Wp = spec.padded_search
            direct += c.direct_backward_mac * B * C * Hp * Wp * h * w

    (nh, _, Lh), (nw, _, Lw) = (axis_plan(p, s) for p, s in zip(spec.padded_search, spec.dilated_template))
    tiles = nh * nw
    L = (Lh, Lw)
    points = L[0] * L[1]
    bins = L[0] * (L[1] // 2 + 1)
    transforms = (B * tiles * (C + K) + Bz * Cz) * points * math.log2(points)
    products = B * tiles * bins * (C * K if spec.mode == "upchannel" else C)
    fft = c.fft_call + c.fft_chunk * chunk_count(spec) + c.fft_point * transforms + c.fft_product * products
    if grad:
        fft *= 1 + c.fft_backward

    Hp, Wp = spec.padded_search
    maps = B * K * h * w * (Hp * Wp + Ho * Wo)
    search = B * C * Hp * Wp
    gather = c.gather_call + c.gather_element * maps + c.gather_search * search + c.gather_mac * search * K * h * w
    if spec.mode == "depthwise":  # one shifted multiply-add per tap over the whole output
        gather = c.gather_call * h * w + c.gather_element * out * C * h * w
    if grad:
        gather *= 1 + c.gather_backward
    return {"direct": direct * 1e-9, "fft": fft * 1e-9, "gather": gather * 1e-9}


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


def measure(spec: Spec, grad: bool, allowed: list[str], x=None, z=None) -> dict[str, float]:
    """Time each allowed method on ``x`` and ``z`` (random tensors of ``spec``'s shapes if None)."""
    if x is None or z is None:
        gen = torch.Generator(device=spec.device).manual_seed(0)
        x = torch.randn(spec.x_shape, generator=gen, device=spec.device, dtype=spec.dtype)
        z = torch.randn(spec.z_shape, generator=gen, device=spec.device, dtype=spec.dtype)
    x, z = x.detach(), z.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x, z = x.float(), z.float()
        spec = replace(spec, dtype=torch.float32)
    if grad:
        x, z = x.requires_grad_(True), z.requires_grad_(True)
    sync = torch.cuda.synchronize if spec.device.type == "cuda" else (lambda: None)
    timings = {}
    for method in allowed:
        backend = BACKENDS[method]
        if grad:
            def run(backend=backend):
                backend(x, z, spec).sum().backward()
        else:
            def run(backend=backend):
                with torch.no_grad():
                    backend(x, z, spec)
        timings[method] = _bench(run, sync)
    return timings


def _argmin(costs: dict[str, float]) -> str:
    # A plain loop: torch.compile cannot trace min() with a key function.
    best = None
    for method, cost in costs.items():
        if best is None or cost < costs[best]:
            best = method
    return best


def _measuring(spec: Spec) -> bool:
    if _autotune is None:
        return spec.device.type not in CONSTANTS
    return _autotune


def generation() -> int:
    """Changes whenever an answer of :func:`select` may change (settings, measured winners)."""
    return _generation


def _bump() -> None:
    global _generation
    _generation += 1


def select(spec: Spec, grad: bool = False) -> str:
    """Pick the method for a validated problem.

    Args:
        spec: the validated problem.
        grad: whether a backward pass will follow (it changes which method is fastest).
    """
    allowed = candidates(spec)
    if len(allowed) == 1:
        return allowed[0]
    key = _key(spec, grad)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    if spec.batch and _measuring(spec) and not _compiling() and not exporting():
        with _lock:
            if key not in _cache:
                timings = measure(spec, grad, allowed)
                _timings[key] = timings
                _cache[key] = _argmin(timings)
            return _cache[key]
    hit = _modelled.get(key)
    if hit is not None:
        return hit
    costs = estimate(spec, grad)
    method = _argmin({m: costs[m] for m in allowed})
    if not _compiling():
        _modelled[key] = method  # one dict store: atomic, so no lock
    return method


def choose(spec: Spec, grad: bool, measure_it: bool, x=None, z=None) -> tuple[str, dict[str, float]]:
    """What :func:`xcorr.choose_method` returns: the method and, when measured, the timings."""
    allowed = candidates(spec)
    if not measure_it:
        return select(spec, grad), {}
    timings = measure(spec, grad, allowed, x, z) if spec.batch else {m: 0.0 for m in allowed}
    best = _argmin(timings)
    with _lock:
        _cache[_key(spec, grad)] = best
        _timings[_key(spec, grad)] = timings
        _bump()
    return best, timings
