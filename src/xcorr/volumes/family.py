"""Cost volumes and RAFT's correlation pyramids as the planning engine sees them: three families.

:class:`VolumeFamily` plans every cost volume (:func:`xcorr.volumes.correlate`): the options
its backends' rules allow, their cost terms, the bound call. :class:`PyramidFamily` plans
:class:`xcorr.CorrPyramid`: whether the all-pairs volumes fit in memory (then building them is the
model's choice, and measurement may find the lookups on demand faster), and per level whether it
is correlated whole or window by window. :class:`StereoPyramidFamily` plans RAFT-Stereo's 1-D
pyramid, :class:`xcorr.StereoCorrPyramid`, by the same rules.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Callable, NamedTuple

import torch

from .._compute import deterministic, itemsize
from .._tracing import exporting
from ..planning.cost import CPU_CAPABILITY, Constants, builtin_constants
from ..planning.engine import ENGINE, Engine
from ..planning.family import Registry
from .backends import VOLUME_BACKENDS, VolumeBackend
from .spec import PyramidSpec, StereoPyramidSpec, VolumeSpec, level_columns, level_widths


class VolumeKey(NamedTuple):
    """The key of a cost-volume problem in the engine's caches and in tuning files."""

    shape: tuple[int, ...]
    groups: int
    kernel: tuple[int, int]
    kernel_dilation: tuple[int, int]
    origin: tuple[int, int]
    stride: tuple[int, int]
    out_size: tuple[int, int]
    dy: tuple[int, int, int]
    dx: tuple[int, int, int]
    dtype: torch.dtype
    device_type: str
    device_index: int | None
    grad: bool


class VolumeFamily(Registry[VolumeBackend]):
    """Every cost volume: local correlation, stereo, the drop-ins of other packages."""

    name = "volume"
    spec_type = VolumeSpec
    key_type = VolumeKey

    def option_names(self) -> tuple[str, ...]:
        return tuple(self.backends)

    def key(self, spec: VolumeSpec, grad: bool) -> VolumeKey:
        return VolumeKey(
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

    def options(self, spec: VolumeSpec, grad: bool = False) -> list[str]:
        """The methods the hard constraints allow for ``spec``, in registry order."""
        if exporting():
            return [name for name, b in self.backends.items() if b.exportable]
        return [name for name, b in self.backends.items() if b.fits(spec)]

    def serves(self, backend: VolumeBackend, spec: VolumeSpec) -> bool:
        """The methods whose rules allow ``spec`` (a method's terms need not make sense elsewhere)."""
        return backend.fits(spec)

    def estimate(self, spec: VolumeSpec, grad: bool, constants: Constants) -> dict[str, float]:
        return self.method_estimates(spec, grad, constants)

    def runner(self, spec: VolumeSpec, option: str, grad: bool, plain: bool) -> Callable[..., torch.Tensor]:
        backend = self.backends[option]
        if plain:
            return lambda f1, f2: backend.run(f1, f2, spec)
        return backend.bind(spec, grad)

    def random_inputs(self, spec: VolumeSpec) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator(device=spec.device).manual_seed(0)
        f1 = torch.randn(spec.shape, generator=gen, device=spec.device, dtype=spec.dtype)
        f2 = torch.randn(spec.shape, generator=gen, device=spec.device, dtype=spec.dtype)
        return f1, f2

    def builtin_constants(self, device_type: str) -> tuple[Constants, str] | None:
        if device_type != "cpu":
            return None
        source = "built-in cost-volume set (fitted on a 2-core x86 CPU, AVX2, torch 2.13, 1 thread)"
        return builtin_constants(self.backends.values(), CPU_CAPABILITY), source


#: ``"auto"`` builds a correlation pyramid's all-pairs volumes (every level) while they take at
#: most this many bytes, and correlates the looked-up windows on demand beyond: RAFT's standard
#: problem (B2, C256, 46x62, 4 levels) takes 87 MB, its high-resolution one (B1, 136x240) 5.7 GB
#: in float32. Within the budget the volumes win: they cost one matrix product per level, and
#: RAFT looks the pyramid up 12 to 32 times.
PYRAMID_VOLUME_BYTES = 1 << 30

#: A pyramid level is correlated whole (a chunk of f1's pixels against every pixel of the level:
#: one matrix product, then the windows picked from it) rather than window by window (a gather of
#: each window's feature vectors, then dot products) where it has at most this many pixels per
#: window tap: the matrix product does about that many times more multiply-adds per second
#: (docs/performance.md).
PYRAMID_DENSE_PIXELS_PER_TAP = 4

#: A backward pass sums a level's taps' gradient over its lookups into one dense gradient of the
#: level's scores (then two matrix products, once) where that gradient takes at most this many
#: bytes; beyond, each lookup's gradient is correlated window by window. The levels whose volume
#: is built, or that are correlated whole, always take the dense way. RAFT's level 1 at 46x62 (16
#: MB): 12 lookups' windowed backward passes took 10 times the dense one.
PYRAMID_GRADIENT_BYTES = 32 << 20

#: An on-demand pyramid keeps the volumes of its coarse levels, made at their first lookup without
#: a graph, while they take at most this many bytes in all (coarsest first; level 0 never): a
#: small level's windows are read from its volume in a fraction of the time of correlating them
#: again at every lookup (RAFT's 46x62, B2: levels 1 to 3 take 21 MB, and their products were
#: 10 of the 21 ms of a lookup). At high resolution no level fits (136x240: level 3 alone takes
#: 66 MB), so the memory stays that of the chunks.
PYRAMID_KEPT_BYTES = 32 << 20

#: Lookups of one pyramid when its options are measured (autotune): a pyramid is built once and
#: looked up once per refinement iteration, 12 in RAFT's training (24 to 32 at evaluation), so
#: one lookup would weigh the volumes' one-time cost 12 times too heavily.
PYRAMID_LOOKUPS = 12


class PyramidKey(NamedTuple):
    """The key of a pyramid problem."""

    shape: tuple[int, ...]
    num_levels: int
    radius: int
    dtype: torch.dtype
    device_type: str
    device_index: int | None
    grad: bool
    once: bool = False


def pyramid_volume_bytes(shape: tuple[int, ...], num_levels: int, dtype: torch.dtype) -> int:
    """Bytes of the all-pairs volumes of every level for features of ``shape`` (B, C, H, W)."""
    B, _, H, W = shape
    # A batch that is a symbol (export with a dynamic batch) counts as one item: comparing it with
    # the budget would bound the batch the exported graph accepts.
    B = B if isinstance(B, int) else 1
    return B * H * W * sum((H >> level) * (W >> level) for level in range(num_levels)) * itemsize(dtype)


class StereoPyramidKey(NamedTuple):
    """The key of a 1-D (stereo) pyramid problem."""

    shape: tuple[int, ...]
    num_levels: int
    radius: int
    dtype: torch.dtype
    device_type: str
    device_index: int | None
    grad: bool
    once: bool = False


def stereo_pyramid_volume_bytes(shape: tuple[int, ...], num_levels: int, radius: int, dtype: torch.dtype) -> int:
    """Bytes of the 1-D all-pairs volumes of every level for features of ``shape`` (B, C, H, W):
    each pixel of ``left`` against every pixel of its row of each level, in one table with its
    columns of zeros (:func:`~xcorr.volumes.spec.level_columns`)."""
    B, _, H, W = shape
    B = B if isinstance(B, int) else 1  # a symbolic batch counts as one item (see pyramid_volume_bytes)
    return B * H * W * level_columns(level_widths(W, num_levels), radius)[1] * itemsize(dtype)


AnyPyramidSpec = PyramidSpec | StereoPyramidSpec


class _MemoryRule:
    """What the families of RAFT's and RAFT-Stereo's pyramids share: all pairs while the volumes
    fit :data:`PYRAMID_VOLUME_BYTES` (unless a measured winner says on demand), else on demand;
    on demand first for a spec looked up ``once`` (:meth:`PyramidFamily.looked_up_once`); no cost
    model, no constants."""

    name: str
    spec_type: type
    key_type: type

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def methods(self) -> tuple[str, ...]:
        return ("auto", "all_pairs", "on_demand")

    def option_names(self) -> tuple[str, ...]:
        return self.methods()[1:]

    def key(self, spec: AnyPyramidSpec, grad: bool) -> tuple:
        return self.key_type(
            spec.shape, spec.num_levels, spec.radius, spec.dtype, spec.device.type, spec.device.index, grad, spec.once
        )

    def volume_bytes(self, spec: AnyPyramidSpec) -> int:
        """Bytes of the problem's all-pairs volumes."""
        raise NotImplementedError

    def pyramid(self) -> type:
        """The pyramid's class (imported on use: it imports this module)."""
        raise NotImplementedError

    def options(self, spec: AnyPyramidSpec, grad: bool = False) -> list[str]:
        """The memory rule: the all-pairs volumes only while they fit :data:`PYRAMID_VOLUME_BYTES`
        (first: the model's choice there)."""
        fits = self.volume_bytes(spec) <= PYRAMID_VOLUME_BYTES
        if not fits:
            return ["on_demand"]
        return ["on_demand", "all_pairs"] if spec.once else ["all_pairs", "on_demand"]

    def estimate(self, spec: AnyPyramidSpec, grad: bool, constants: Constants) -> dict[str, float]:
        return {}  # no cost model: the first allowed option, unless measured

    def runner(self, spec: AnyPyramidSpec, option: str, grad: bool, plain: bool) -> Callable[..., torch.Tensor]:
        """``run(f1, f2, coords)``: the pyramid built with ``option`` and looked up
        :data:`PYRAMID_LOOKUPS` times around ``coords`` (once where ``spec.once``), the lookups summed."""
        pyramid_type = self.pyramid()
        lookups = 1 if spec.once else PYRAMID_LOOKUPS

        def run(f1: torch.Tensor, f2: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
            pyramid = pyramid_type(f1, f2, spec.num_levels, spec.radius, method=option)
            out = pyramid(coords)
            for step in range(1, lookups):
                out = out + pyramid(coords + step / lookups)
            return out

        return run

    def random_inputs(self, spec: AnyPyramidSpec) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator(device=spec.device).manual_seed(0)
        B, _, H, W = spec.shape
        f1 = torch.randn(spec.shape, generator=gen, device=spec.device, dtype=spec.dtype)
        f2 = torch.randn(spec.shape, generator=gen, device=spec.device, dtype=spec.dtype)
        coords = torch.rand((B, 2, H, W), generator=gen, device=spec.device, dtype=spec.dtype) * (min(H, W) - 1)
        return f1, f2, coords

    def builtin_constants(self, device_type: str) -> tuple[Constants, str] | None:
        """None needed on any device: the memory rule decides, then the first option (so a
        pyramid is measured only with autotune)."""
        return Constants(), "none needed: the memory rule decides"

    def constant_names(self) -> list[str]:
        return []


class PyramidFamily(_MemoryRule):
    """RAFT's correlation pyramid: all pairs while the volumes fit the memory rule (unless a
    measured winner says on demand), else on demand; on demand first where the last pyramid of
    the call signature was looked up once (:meth:`looked_up_once`)."""

    name = "pyramid"
    spec_type = PyramidSpec
    key_type = PyramidKey

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # Lookups of the last pyramid of each call signature, so far (see looked_up_once).
        self._lookups: dict[Hashable, int] = {}

    def looked_up(self, signature: Hashable, lookups: int) -> None:
        """Note that the pyramid of call ``signature`` has now been looked up ``lookups`` times."""
        self._lookups[signature] = lookups

    def looked_up_once(self, signature: Hashable | None) -> bool:
        """Whether the last pyramid of call ``signature`` was looked up once, no more (so far):
        then its next one is planned for one lookup, where correlating the windows on demand
        does a fraction of the volumes' multiply-adds (RAFT's 46x62 level 0: 400 taps' windows
        against 2852 pixels). Never in deterministic mode, whose choices depend on nothing seen."""
        return signature is not None and not deterministic() and self._lookups.get(signature) == 1

    def forget_seen(self) -> None:
        """Forget the lookups seen (:func:`xcorr.clear_cache`)."""
        self._lookups.clear()

    def volume_bytes(self, spec: AnyPyramidSpec) -> int:
        return pyramid_volume_bytes(spec.shape, spec.num_levels, spec.dtype)

    def pyramid(self) -> type:
        from .pyramid import CorrPyramid

        return CorrPyramid

    def level_dense(self, level_pixels: int, radius: int) -> bool:
        """Whether a level of ``level_pixels`` pixels is correlated whole rather than window by
        window (see :data:`PYRAMID_DENSE_PIXELS_PER_TAP`); a window reads ``(2r + 2)**2`` pixels."""
        return level_pixels <= PYRAMID_DENSE_PIXELS_PER_TAP * (2 * radius + 2) ** 2

    def gradient_dense(self, pixels: int, level_pixels: int, itemsize: int) -> bool:
        """Whether the lookups' backward pass of a level sums into a dense gradient of its
        scores, ``pixels`` (all items') by ``level_pixels`` (see :data:`PYRAMID_GRADIENT_BYTES`)."""
        return pixels * level_pixels * itemsize <= PYRAMID_GRADIENT_BYTES


class StereoPyramidFamily(_MemoryRule):
    """RAFT-Stereo's 1-D pyramid: all pairs while its volumes (each row against its row, every
    level) fit the memory rule (unless a measured winner says on demand), else on demand."""

    name = "stereo_pyramid"
    spec_type = StereoPyramidSpec
    key_type = StereoPyramidKey

    def volume_bytes(self, spec: AnyPyramidSpec) -> int:
        return stereo_pyramid_volume_bytes(spec.shape, spec.num_levels, spec.radius, spec.dtype)

    def pyramid(self) -> type:
        from .stereo_pyramid import StereoCorrPyramid

        return StereoCorrPyramid


#: The families of this process, with the registry of :mod:`xcorr.volumes.backends`.
VOLUMES = VolumeFamily(ENGINE, VOLUME_BACKENDS)
PYRAMIDS = PyramidFamily(ENGINE)
STEREO_PYRAMIDS = StereoPyramidFamily(ENGINE)
ENGINE.register(VOLUMES)
ENGINE.register(PYRAMIDS)
ENGINE.register(STEREO_PYRAMIDS)


def select_volume(spec: VolumeSpec, grad: bool = False) -> str:
    """The method ``"auto"`` uses for a validated cost volume (see :func:`xcorr.volumes.correlate`).

    Args:
        spec: the validated problem.
        grad: whether a backward pass will follow.
    """
    return ENGINE.decide(spec, grad)


def select_pyramid(shape: tuple[int, ...], num_levels: int, dtype: torch.dtype) -> str:
    """The method of ``CorrPyramid(..., method="auto")``: ``"all_pairs"`` while the volumes fit
    :data:`~xcorr.volumes.family.PYRAMID_VOLUME_BYTES` (unless a measured winner says otherwise),
    ``"on_demand"`` beyond.

    Example:
        >>> from xcorr.volumes.family import select_pyramid
        >>> select_pyramid((2, 256, 46, 62), 4, torch.float32)
        'all_pairs'
        >>> select_pyramid((1, 256, 136, 240), 4, torch.float32)
        'on_demand'
    """
    return ENGINE.decide(PyramidSpec(tuple(shape), num_levels, 1, dtype, torch.device("cpu")))


def pyramid_level_dense(level_pixels: int, radius: int) -> bool:
    """See :meth:`PyramidFamily.level_dense`."""
    return PYRAMIDS.level_dense(level_pixels, radius)


def pyramid_gradient_dense(pixels: int, level_pixels: int, itemsize: int) -> bool:
    """See :meth:`PyramidFamily.gradient_dense`."""
    return PYRAMIDS.gradient_dense(pixels, level_pixels, itemsize)


def select_stereo_pyramid(shape: tuple[int, ...], num_levels: int, radius: int, dtype: torch.dtype) -> str:
    """The method of ``StereoCorrPyramid(..., method="auto")``: ``"all_pairs"`` while the 1-D
    volumes fit :data:`PYRAMID_VOLUME_BYTES` (unless a measured winner says otherwise),
    ``"on_demand"`` beyond.

    Example:
        >>> from xcorr.volumes.family import select_stereo_pyramid
        >>> select_stereo_pyramid((2, 256, 80, 184), 4, 4, torch.float32)  # RAFT-Stereo, 320x736 at 1/4
        'all_pairs'
        >>> select_stereo_pyramid((1, 256, 496, 718), 4, 4, torch.float32)  # 1984x2872 at 1/4
        'on_demand'
    """
    return ENGINE.decide(StereoPyramidSpec(tuple(shape), num_levels, radius, dtype, torch.device("cpu")))
