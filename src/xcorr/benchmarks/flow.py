"""Suite "flow": the cost volumes of optical-flow and stereo networks at their real sizes.

Cases, forward and forward+backward (inputs standard normal, float32):

* FlowNetC: B8, C256, 48x64, max displacement 20, displacement stride 2 (441 displacements).
* PWC-Net's five levels for a 448x1024 image pair, B4, max displacement 4 (81 displacements):
  pyramid levels 6 to 2, 7x16 (C196), 14x32 (C128), 28x64 (C96), 56x128 (C64), 112x256 (C32),
  each ``448x1024 / 2**level``.
* RAFT: B2, C256, 46x62 (its 368x496 training crop at 1/8), 4 levels, radius 4, the pyramid
  built and looked up once around ``coords`` = each pixel plus a random flow; as RAFT trains, built
  once and looked up 12 times (once per refinement iteration, forward and backward through every
  lookup), with the volumes and on demand; as RAFT evaluates, B1, 55x128 (Sintel's 436x1024 at
  1/8), 32 lookups, forward; and RAFT at high resolution, B1, C256, 136x240,
  ``method="on_demand"``. Lookup ``k`` of ``n`` is around ``coords + k/n``.
* RAFT-Stereo: B2, C256, 80x184 (a 320x736 pair at 1/4), 4 levels, radius 4, its 1-D pyramid
  built once and looked up as RAFT-Stereo trains (12 lookups, forward and backward) and
  evaluates (32 lookups, forward), ``coords`` = every pixel less a disparity uniform in (0, 48);
  the lookups' sum times random weights (so that each lookup's gradient is a training step's,
  not a sum's constant one).
* DispNetC: B4, C256, 48x96, 40 disparities; GwcNet: B2, C320, 40 groups, 48 disparities, 64x128.

Peers, side by side in the same process:

* ``spatial-correlation-sampler``, for FlowNetC and PWC-Net, where it can be imported (a compiled
  extension whose PyPI sdist builds with CUDA only; ``make sampler`` builds its CPU version into
  the virtual environment with ``tools/build_sampler.py``);
* the shifted-product loop users write (one product of ``f1`` with a shifted ``f2`` per
  displacement, channel mean; for stereo, GwcNet's ``build_gwc_volume`` loop);
* the ``F.unfold`` formulation (every displaced patch of ``f2`` materialised, then one product);
* RAFT's ``CorrBlock`` formulation (all pairs by one matrix product, an average-pooled pyramid of
  volumes, ``grid_sample`` lookups), for the RAFT cases, and RAFT-Stereo's ``CorrBlock1D`` (its
  1-D form: one row against its row, pooled along the row), for the RAFT-Stereo cases.

A peer whose estimated peak memory exceeds :func:`memory_budget` is left out (and named in the
method column): the unfold formulation of FlowNetC needs about 22 GB, the high-resolution
``CorrBlock`` about 10 GB forward. The method column also shows each contender's peak memory:
the most tensor memory held at once during one call above what was held before it, from
``torch.profiler``'s allocation events (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA); ours
is measured on an extra call after the timing, each peer on its warm-up call.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

import xcorr
from xcorr.volumes.backends import fused

from . import OURS, Case

#: Packages every case needs (none: the sampler is optional, the other peers are plain PyTorch).
PEERS: tuple[str, ...] = ()

SAMPLER, LOOP, UNFOLD, CORR_BLOCK = "spatial-correlation-sampler", "shifted loop", "unfold", "CorrBlock"
CORR_BLOCK_1D = "CorrBlock1D"
SAMPLER_MODULE = "spatial_correlation_sampler"
FUSED_UNAVAILABLE = (
    "ours without the fused cost-volume loops: numba is not installed (pip install 'xcorr[fast]'), "
    "so the volumes run on the banded and shifted methods"
)
SAMPLER_UNAVAILABLE = (
    f"{SAMPLER} is unavailable: the module {SAMPLER_MODULE} cannot be imported (a compiled extension, "
    "not a dependency of xcorr; `make sampler` builds its CPU version into the virtual environment)"
)

#: Share of the memory available when a case starts that a peer may be estimated to need.
MEMORY_SHARE = 0.4


@dataclass(frozen=True)
class Problem:
    """One network's cost volume: ``kind`` "local" (FlowNetC, PWC-Net), "stereo", "raft" or
    "raft_stereo"."""

    name: str
    kind: str
    shape: tuple[int, int, int, int]
    #: Max displacement ("local"), disparities ("stereo") or the lookup radius ("raft", "raft_stereo").
    reach: int
    displacement_stride: int = 1
    groups: int | None = None
    levels: int = 4
    method: str = "auto"
    #: Targets of the forward and the forward+backward rows (our time / the fastest peer's).
    targets: tuple[float, float] = (0.5, 0.3)
    #: RAFT, RAFT-Stereo: lookups of one pyramid per call (its refinement iterations).
    lookups: int = 1
    #: Whether the rows are forward (False) and forward+backward (True).
    grads: tuple[bool, ...] = (False, True)

    def tiny(self) -> Problem:
        """The same problem at a size that runs in milliseconds (for tests)."""
        B, C, H, W = self.shape
        small = (min(B, 2), 8, min(H, 12), min(W, 16))
        return replace(
            self,
            shape=small,
            reach=min(self.reach, 3),
            groups=self.groups and 4,
            levels=min(self.levels, 3),
            lookups=min(self.lookups, 2),
        )


PWC_LEVELS = [(6, 196), (5, 128), (4, 96), (3, 64), (2, 32)]

PROBLEMS = [
    Problem("FlowNetC B8", "local", (8, 256, 48, 64), 20, displacement_stride=2, targets=(0.1, 0.1)),
    *(
        Problem(
            f"PWC-Net level {level} B4",
            "local",
            (4, C, 448 >> level, 1024 >> level),
            4,
            targets=(0.1, 0.1) if level == 2 else (0.5, 0.3),
        )
        for level, C in PWC_LEVELS
    ),
    Problem("RAFT B2", "raft", (2, 256, 46, 62), 4),
    Problem("RAFT B2, 12 lookups", "raft", (2, 256, 46, 62), 4, targets=(0.5, 0.5), lookups=12),
    Problem(
        "RAFT B2, 12 lookups on demand", "raft", (2, 256, 46, 62), 4, method="on_demand", targets=(1.0, 1.0), lookups=12
    ),
    Problem("RAFT 55x128 B1, 32 lookups", "raft", (1, 256, 55, 128), 4, targets=(0.5, 0.5), lookups=32, grads=(False,)),
    Problem("RAFT 136x240 B1", "raft", (1, 256, 136, 240), 4, method="on_demand"),
    Problem(
        "RAFT-Stereo B2, 12 lookups", "raft_stereo", (2, 256, 80, 184), 4, targets=(0.5, 0.5), lookups=12, grads=(True,)
    ),
    Problem(
        "RAFT-Stereo B2, 32 lookups",
        "raft_stereo",
        (2, 256, 80, 184),
        4,
        targets=(0.5, 0.5),
        lookups=32,
        grads=(False,),
    ),
    Problem("DispNetC B4", "stereo", (4, 256, 48, 96), 40),
    Problem("GwcNet B2", "stereo", (2, 320, 64, 128), 48, groups=40),
]


# --- the peers, written as their users write them ---------------------------------------------


def shifted_loop(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, stride: int = 1) -> torch.Tensor:
    """One shifted product per displacement, averaged over the channels (dy-major), in a Python loop."""
    _, _, H, W = f1.shape
    d = max_displacement
    padded = F.pad(f2, (d, d, d, d))
    R = d // stride
    planes = []
    for dy in range(-R * stride, R * stride + 1, stride):
        for dx in range(-R * stride, R * stride + 1, stride):
            shifted = padded[:, :, d + dy : d + dy + H, d + dx : d + dx + W]
            planes.append((f1 * shifted).mean(1, keepdim=True))
    return torch.cat(planes, 1)


def unfold_local(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, stride: int = 1) -> torch.Tensor:
    """Every displaced 1x1 patch of ``f2`` unfolded (B, C, P*P, H, W), times ``f1``, averaged over C."""
    B, C, H, W = f1.shape
    R = max_displacement // stride
    P = 2 * R + 1
    patches = F.unfold(f2, kernel_size=P, dilation=stride, padding=R * stride).view(B, C, P * P, H, W)
    return (f1.unsqueeze(2) * patches).mean(1)


def sampler_local(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, stride: int = 1) -> torch.Tensor:
    """FlowNetC with spatial-correlation-sampler: the sums over a patch of offsets, divided by C."""
    from spatial_correlation_sampler import spatial_correlation_sample

    B, C, H, W = f1.shape
    P = 2 * (max_displacement // stride) + 1
    out = spatial_correlation_sample(f1, f2, kernel_size=1, patch_size=P, stride=1, padding=0, dilation_patch=stride)
    return out.view(B, P * P, H, W) / C


def stereo_loop(left: torch.Tensor, right: torch.Tensor, disparities: int, groups: int | None) -> torch.Tensor:
    """GwcNet's ``build_gwc_volume`` (DispNetC's volume with one group): one slice per disparity."""
    B, C, H, W = left.shape
    G = groups or 1
    volume = left.new_zeros(B, G, disparities, H, W)
    for d in range(disparities):
        if d:
            product = left[:, :, :, d:] * right[:, :, :, :-d]
            volume[:, :, d, :, d:] = product.view(B, G, C // G, H, W - d).mean(2)
        else:
            volume[:, :, d] = (left * right).view(B, G, C // G, H, W).mean(2)
    return volume if groups else volume[:, 0]


def unfold_stereo(left: torch.Tensor, right: torch.Tensor, disparities: int, groups: int | None) -> torch.Tensor:
    """Every disparity's column of ``right`` unfolded (B, C, D, H, W), times ``left``, group means."""
    B, C, H, W = left.shape
    G, D = groups or 1, disparities
    windows = F.unfold(F.pad(right, (D - 1, 0)), (1, D)).view(B, C, D, H, W).flip(2)  # [.., d, y, x] = right[.., x-d]
    volume = (left.unsqueeze(2) * windows).view(B, G, C // G, D, H, W).mean(2)
    return volume if groups else volume[:, 0]


class CorrBlock:
    """RAFT's all-pairs correlation pyramid: one matrix product, pooled volumes, ``grid_sample`` lookups.

    ``f1`` may be a band of rows of the first map (the float64 reference of the large case).
    """

    def __init__(self, f1: torch.Tensor, f2: torch.Tensor, num_levels: int = 4, radius: int = 4) -> None:
        B, C, H1, W1 = f1.shape
        H2, W2 = f2.shape[-2:]
        corr = torch.matmul(f1.view(B, C, H1 * W1).transpose(1, 2), f2.view(B, C, H2 * W2))
        corr = (corr / math.sqrt(C)).view(B * H1 * W1, 1, H2, W2)
        self.radius = radius
        self.pyramid = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """The lookup as RAFT returns it: float32."""
        return self.lookup(coords).float()

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """The ``(2r+1)**2`` bilinear samples of every level around ``coords`` (B, 2, H, W), in
        the volume's dtype."""
        B, _, H, W = coords.shape
        r = self.radius
        offsets = torch.linspace(-r, r, 2 * r + 1, dtype=coords.dtype, device=coords.device)
        # Stacked (first, second) and added to (x, y): the x offset is the major index, as in RAFT.
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        centres = coords.permute(0, 2, 3, 1).reshape(B * H * W, 1, 1, 2)
        looked_up = []
        for level, corr in enumerate(self.pyramid):
            points = centres / 2**level + delta
            h, w = corr.shape[-2:]
            grid = torch.stack([2 * points[..., 0] / (w - 1) - 1, 2 * points[..., 1] / (h - 1) - 1], dim=-1)
            looked_up.append(F.grid_sample(corr, grid, align_corners=True).view(B, H, W, -1))
        return torch.cat(looked_up, dim=-1).permute(0, 3, 1, 2).contiguous()


class CorrBlock1D:
    """RAFT-Stereo's 1-D correlation pyramid as RAFT-Stereo writes it (``core/corr.py``): each row
    against its row by ``einsum``, divided by a float32 ``sqrt(C)``, ``avg_pool2d`` levels along
    the row (one more than it looks up), ``grid_sample`` lookups on one-pixel-high images."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor, num_levels: int = 4, radius: int = 4) -> None:
        B, C, H, W = left.shape
        corr = torch.einsum("aijk,aijh->ajkh", left, right).reshape(B, H, W, 1, W).contiguous()
        corr = (corr / torch.sqrt(torch.tensor(C).float())).reshape(B * H * W, 1, 1, W)
        self.num_levels, self.radius = num_levels, radius
        self.pyramid = [corr]
        for _ in range(num_levels):
            corr = F.avg_pool2d(corr, [1, 2], stride=[1, 2])
            self.pyramid.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """The lookup as RAFT-Stereo returns it: float32."""
        return self.lookup(coords).float()

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """The ``2r+1`` linear samples of every level around ``coords[:, 0]`` (B, 2, H, W), in the
        volume's dtype."""
        r = self.radius
        x = coords[:, :1].permute(0, 2, 3, 1)
        B, H, W, _ = x.shape
        looked_up = []
        for level in range(self.num_levels):
            corr = self.pyramid[level]
            dx = torch.linspace(-r, r, 2 * r + 1, device=coords.device).view(2 * r + 1, 1)
            x0 = dx + x.reshape(B * H * W, 1, 1, 1) / 2**level
            # RAFT-Stereo's bilinear_sampler: the x of the grid normalised, its y (0) not, for H = 1.
            grid = torch.cat([2 * x0 / (corr.shape[-1] - 1) - 1, torch.zeros_like(x0)], dim=-1)
            looked_up.append(F.grid_sample(corr, grid, align_corners=True).view(B, H, W, -1))
        return torch.cat(looked_up, dim=-1).permute(0, 3, 1, 2).contiguous()


# --- memory ------------------------------------------------------------------------------------


def memory_budget(device: torch.device) -> float:
    """Bytes a peer may be estimated to need: :data:`MEMORY_SHARE` of the memory available now."""
    if device.type == "cuda":
        return MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return MEMORY_SHARE * int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return math.inf


def _estimate(peer: str, p: Problem, grad: bool) -> float:
    """Rough peak bytes of a peer's call (float32), to leave out the ones that cannot fit."""
    B, C, H, W = p.shape
    feature = 4.0 * B * C * H * W
    if p.kind == "raft":
        volume = 4.0 * B * (H * W) ** 2
        return volume * (5.0 if grad else 2.4)
    if p.kind == "raft_stereo":  # the volumes, and with the backward pass their gradients
        return 4.0 * B * H * W * W * (6.0 if grad else 2.4)
    displacements = (2 * (p.reach // p.displacement_stride) + 1) ** 2 if p.kind == "local" else p.reach
    if peer == UNFOLD:
        return 2 * feature * displacements * (2.0 if grad else 1.0)
    out = 4.0 * B * (p.groups or 1) * displacements * H * W
    if grad and peer == LOOP:
        # Autograd runs every product's backward before their sum: one feature-sized gradient
        # per displacement at once (FlowNetC B8's 441: 11 GB).
        return 3 * out + displacements * feature
    return (3 * out + 6 * feature) if grad else (out + 3 * feature)


_PROFILER_READY = False


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """The most tensor memory held at once during ``fn()`` above what was held before (None where
    it cannot be measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    _ready_profiler()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    try:
        # The allocation records carry the allocator's running total: its maximum is the peak.
        events = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
        allocations = sorted(
            (e.start_time_ns, e.extra_fields.alloc_size, e.extra_fields.total_allocated)
            for e in events
            if hasattr(e.extra_fields, "total_allocated")
        )
    except AttributeError:  # a profiler without these records
        return None
    if not allocations:
        return 0
    base = allocations[0][2] - allocations[0][1]
    return max(0, max(total for _, _, total in allocations) - base)


def _walk(events: list[Any]):
    for event in events:
        yield event
        yield from _walk(event.children)


def _ready_profiler() -> None:
    """Start and stop the profiler once: its first start takes seconds, which no call should pay."""
    global _PROFILER_READY
    if not _PROFILER_READY:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True):
            torch.zeros(1)
        _PROFILER_READY = True


# --- cases -------------------------------------------------------------------------------------


def _device() -> torch.device:
    """The device factory functions use now (the runner's ``--device`` sets it)."""
    return torch.empty(0).device


#: RAFT-Stereo's disparities at 1/4 of a 320x736 pair: uniform in (0, MAX_DISPARITY) pixels.
MAX_DISPARITY = 48


def _inputs(p: Problem, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Both feature maps and, for RAFT, ``coords`` = every pixel plus a flow uniform in (-8, 8);
    for RAFT-Stereo, ``coords`` = every pixel less a disparity (its y the pixel's row) and the
    weights of the lookups' sum."""
    B, C, H, W = p.shape
    gen = torch.Generator().manual_seed(0)
    f1 = torch.randn(p.shape, generator=gen, dtype=dtype)
    f2 = torch.randn(p.shape, generator=gen, dtype=dtype)
    tensors: tuple[torch.Tensor, ...] = (f1, f2)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    if p.kind == "raft":
        flow = 16 * torch.rand(B, 2, H, W, generator=gen, dtype=dtype) - 8
        tensors += (torch.stack([xs, ys]).expand(B, 2, H, W) + flow,)
    if p.kind == "raft_stereo":
        disparity = MAX_DISPARITY * torch.rand(B, H, W, generator=gen, dtype=dtype)
        weights = torch.randn(B, p.levels * (2 * p.reach + 1), H, W, generator=gen, dtype=dtype)
        tensors += (torch.stack([xs - disparity, ys.expand(B, H, W)], dim=1), weights)
    return tuple(t.to(_device()) for t in tensors)


def _ours(p: Problem) -> Callable[..., torch.Tensor]:
    if p.kind == "local":
        return lambda f1, f2: xcorr.local_correlation(
            f1, f2, p.reach, displacement_stride=p.displacement_stride, normalize="mean"
        )
    if p.kind == "stereo":
        return lambda left, right: xcorr.stereo_correlation(left, right, p.reach, groups=p.groups)
    if p.kind == "raft_stereo":
        return _weighted(
            _looked_up(
                lambda left, right: xcorr.StereoCorrPyramid(left, right, p.levels, p.reach, method=p.method), p.lookups
            )
        )
    return _looked_up(lambda f1, f2: xcorr.CorrPyramid(f1, f2, p.levels, p.reach, method=p.method), p.lookups)


def _looked_up(
    build: Callable[..., Callable[[torch.Tensor], torch.Tensor]], lookups: int
) -> Callable[..., torch.Tensor]:
    """``run(f1, f2, coords)``: the pyramid built once and looked up ``lookups`` times, around
    ``coords + k / lookups`` at lookup ``k`` (the lookups summed, so that a backward pass goes
    through every one)."""

    def run(f1: torch.Tensor, f2: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        pyramid = build(f1, f2)
        out = pyramid(coords)
        for k in range(1, lookups):
            out = out + pyramid(coords + k / lookups)
        return out

    return run


def _weighted(run: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``run(f1, f2, coords) * weights``: a backward pass then gives every lookup the gradient of
    a loss that weighs its outputs, as training does (the sum alone gives a constant one)."""
    return lambda f1, f2, coords, weights: run(f1, f2, coords) * weights


def _peers(p: Problem) -> dict[str, Callable[..., torch.Tensor]]:
    if p.kind == "local":
        args = (p.reach, p.displacement_stride)
        peers = {
            LOOP: lambda f1, f2: shifted_loop(f1, f2, *args),
            UNFOLD: lambda f1, f2: unfold_local(f1, f2, *args),
        }
        if sampler_available():
            peers[SAMPLER] = lambda f1, f2: sampler_local(f1, f2, *args)
        return peers
    if p.kind == "stereo":
        return {
            LOOP: lambda left, right: stereo_loop(left, right, p.reach, p.groups),
            UNFOLD: lambda left, right: unfold_stereo(left, right, p.reach, p.groups),
        }
    if p.kind == "raft_stereo":
        return {
            CORR_BLOCK_1D: _weighted(
                _looked_up(lambda left, right: CorrBlock1D(left, right, p.levels, p.reach), p.lookups)
            )
        }
    return {CORR_BLOCK: _looked_up(lambda f1, f2: CorrBlock(f1, f2, p.levels, p.reach), p.lookups)}


def sampler_available() -> bool:
    """Whether spatial-correlation-sampler's compiled module can be imported here."""
    if importlib.util.find_spec(SAMPLER_MODULE) is None:
        return False
    try:
        import spatial_correlation_sampler  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


Index = tuple[slice, ...]


def _reference(p: Problem) -> tuple[Index, torch.Tensor]:
    """The float64 volume of the first batch item (RAFT at 136x240: of its first 8 rows), by the
    peer loop (local, stereo), ``CorrBlock`` (RAFT) or ``CorrBlock1D`` (RAFT-Stereo, times the
    weights), and the part of our output it is of."""
    tensors = tuple(t[:1].double() for t in _inputs(p))
    with torch.no_grad():
        if p.kind == "local":
            return (slice(0, 1),), shifted_loop(tensors[0], tensors[1], p.reach, p.displacement_stride)
        if p.kind == "stereo":
            return (slice(0, 1),), stereo_loop(tensors[0], tensors[1], p.reach, p.groups)
        if p.kind == "raft_stereo":
            left, right, coords, weights = tensors
            return (slice(0, 1),), CorrBlock1D(left, right, p.levels, p.reach).lookup(coords) * weights
        f1, f2, coords = tensors
        rows = min(8, f1.shape[2]) if p.method == "on_demand" else f1.shape[2]
        block = CorrBlock(f1[:, :, :rows], f2, p.levels, p.reach)
        return (slice(0, 1), slice(None), slice(0, rows)), block.lookup(coords[:, :, :rows])


def _method(p: Problem, grad: bool) -> str:
    """The method our call uses: the planner's choice for the volume, or the pyramid's."""
    from ..volumes import family as volumes_family
    from ..volumes import spec as volumes_spec

    if p.kind == "raft":
        return volumes_family.select_pyramid(p.shape, p.levels, torch.float32) if p.method == "auto" else p.method
    if p.kind == "raft_stereo":
        auto = volumes_family.select_stereo_pyramid(p.shape, p.levels, p.reach, torch.float32)
        return auto if p.method == "auto" else p.method
    f = torch.empty(p.shape, device="meta")
    if p.kind == "local":
        spec = volumes_spec.check_local_correlation(f, f, p.reach, p.displacement_stride, 1, 1, "mean", "flat")
    else:
        spec = volumes_spec.check_stereo_correlation(f, f, p.reach, p.groups, "mean")
    return volumes_family.select_volume(replace(spec, device=_device()), grad)


def _step(fn: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], grad: bool) -> Callable[[], Any]:
    """A forward call without autograd, or forward and backward (gradients reset first)."""
    if not grad:

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return fn(*tensors)

        return forward

    def both() -> None:
        for t in tensors[:2]:
            t.grad = None
        fn(*tensors).sum().backward()

    return both


def _measured_first(
    call: Callable[[], Any], name: str, peaks: dict[str, int | None], tensors: tuple[torch.Tensor, ...]
) -> Callable[[], Any]:
    """``call``, its peak memory measured on its first run (the runner's warm-up). The gradients
    an earlier contender left on ``tensors`` are freed first: freed inside the measured call, they
    would lower its peak by their size."""

    def run() -> Any:
        if name in peaks:
            return call()
        for t in tensors:
            t.grad = None
        peaks[name] = peak_bytes(call, _device())
        return None

    return run


def _mib(n: float | None) -> str:
    """Bytes in MiB, two significant digits below 10 MiB."""
    if n is None:
        return "n/a"
    mib = n / 2**20
    return f"{mib:.2g}" if mib < 10 else f"{mib:.0f}"


def _case(p: Problem, grad: bool, references: dict[Problem, tuple[Index, torch.Tensor]], repeats: int = 0) -> Case:
    peaks: dict[str, int | None] = {}
    left_out: dict[str, float] = {}

    def inputs() -> tuple[torch.Tensor, ...]:
        tensors = _inputs(p)
        for t in tensors[:2]:
            t.requires_grad_(grad)
        return tensors

    def setup() -> dict[str, Callable[[], Any]]:
        peaks.clear()
        left_out.clear()
        if _device().type == "cpu":
            _ready_profiler()
        tensors = inputs()
        budget = memory_budget(_device())
        contenders = {OURS: _step(_ours(p), tensors, grad)}
        for name, fn in _peers(p).items():
            need = _estimate(name, p, grad)
            if need > budget:
                left_out[name] = need
            else:
                contenders[name] = _measured_first(_step(fn, tensors, grad), name, peaks, tensors)
        return contenders

    def info() -> dict[str, Any]:
        tensors = inputs()
        peaks[OURS] = peak_bytes(_step(_ours(p), tensors, grad), _device())
        if p not in references:
            references[p] = _reference(p)
        index, exact = references[p]
        with torch.set_grad_enabled(grad):
            ours = _ours(replace(p, lookups=1))(*tensors).detach()[index].double().cpu()
        error = ((ours - exact).abs().max() / exact.abs().max()).item()
        method = _method(p, grad)
        memory = ", ".join(f"{name} {_mib(peaks[name])}" for name in dict.fromkeys((OURS, *peaks)))
        cell = f"{method} | peak MiB: {memory}"
        if p.kind in ("raft", "raft_stereo"):
            B, _, H, W = p.shape
            volume = 4.0 * B * H * W * (H * W if p.kind == "raft" else W)
            ours_peak = peaks.get(OURS)
            if ours_peak is not None:
                cell += f" (xcorr: {ours_peak / volume:.3f} of the all-pairs volume, {_mib(volume)})"
        if left_out:
            cell += " | left out, over the memory budget: " + ", ".join(f"{n} ~{_mib(b)}" for n, b in left_out.items())
        return {
            "method": cell,
            "error": error,
            "chosen": method,
            "peak_bytes": dict(peaks),
            "left_out_bytes": dict(left_out),
        }

    label = f"{p.name} {'fwd+bwd' if grad else 'fwd'}"
    return Case("flow", label, setup, p.targets[1] if grad else p.targets[0], repeats, info)


def notes() -> list[str]:
    """What the table does not say: unavailable peers and how slow peers and memory are measured."""
    lines = [] if sampler_available() else [SAMPLER_UNAVAILABLE]
    if not fused.available():
        lines.append(FUSED_UNAVAILABLE)
    lines.append(
        "contenders whose first call takes over a second are timed from it and stop after 3 s of calls "
        "(FlowNetC's shifted loop: one call); peak memory: the most tensor memory held at "
        "once during a call above what was held before it (torch.profiler allocation events on CPU, "
        "torch.cuda.max_memory_allocated on CUDA), ours on a call after the timing, each peer on its warm-up call"
    )
    return lines


def _compile_fused() -> None:
    """Compile (or load from numba's cache) the fused loops of both dtypes, forward and
    backward, before anything is timed: a first use's compilation is not a call's time."""
    if not fused.available():
        return
    for dtype in (torch.float32, torch.float64):
        f = torch.ones(1, 1, 2, 2, dtype=dtype, requires_grad=True)
        xcorr.volumes.correlate(
            f, f, xcorr.volumes.spec.check_local_correlation(f, f, 1, 1, 1, 1, "none", "flat"), "fused"
        ).sum().backward()


def cases(tiny: bool = False) -> list[Case]:
    """The flow suite: every problem forward and forward+backward (``tiny``: at toy sizes, each
    contender timed once)."""
    for line in notes():
        print(f"flow: {line}", file=sys.stdout)
    _compile_fused()
    references: dict[Problem, tuple[Index, torch.Tensor]] = {}
    problems = [p.tiny() for p in PROBLEMS] if tiny else PROBLEMS
    return [_case(p, grad, references, repeats=1 if tiny else 0) for p in problems for grad in p.grads]
