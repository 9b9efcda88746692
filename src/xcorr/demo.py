"""``python -m xcorr demo``: the four correlations of Siamese trackers at their real sizes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import planner
from ._checks import check_xcorr
from .ops import xcorr


@dataclass
class SeedCase:
    title: str
    batch: int
    mode: str
    grouped: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # The grouped-conv formulation is timed on one item and scaled by the batch, because at
    # batch 8 it takes minutes (its cost is linear in the batch: one group per item).


def _grouped_naive(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    out = F.conv2d(x.reshape(1, B * C, H, W), z, groups=B)
    return out.reshape(B, 1, *out.shape[-2:])


def _grouped_depthwise(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    out = F.conv2d(x.reshape(1, B * C, H, W), z.reshape(B * C, 1, *z.shape[-2:]), groups=B * C)
    return out.reshape(B, C, *out.shape[-2:])


CASES = [
    SeedCase("SiamFC tracking   F.conv2d(x, z)", 1, "naive", _grouped_naive),
    SeedCase("SiamFC training   groups=B", 8, "naive", _grouped_naive),
    SeedCase("SiamRPN++ track   groups=C", 1, "depthwise", _grouped_depthwise),
    SeedCase("SiamRPN++ train   groups=B*C", 8, "depthwise", _grouped_depthwise),
]


def _seconds(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_seed_cases(channels: int = 256, search: int = 255, template: int = 127) -> None:
    """Run the seed's four correlations and compare with the grouped-conv formulation."""
    print(f"xcorr demo: search (B, {channels}, {search}, {search}), template (B, {channels}, {template}, {template})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    header = f"{'case':<32} {'output shape':<22} {'method':<7} {'xcorr':>9} {'grouped conv':>13} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    notes = []
    one_item: dict[str, float] = {}  # the grouped conv's time on one item, per mode
    for case in CASES:
        x = torch.rand(case.batch, channels, search, search, generator=gen)
        z = torch.rand(case.batch, channels, template, template, generator=gen)
        method = planner.select(check_xcorr(x, z, case.mode, 0, 1, 1))
        with torch.no_grad():
            out = xcorr(x, z, case.mode)  # warm-up
            ours = _seconds(lambda: xcorr(x, z, case.mode), repeats=3 if case.batch == 1 else 1)
            if case.mode not in one_item:
                one_item[case.mode] = _seconds(lambda: case.grouped(x[:1], z[:1]), repeats=1)
            peer = one_item[case.mode] * case.batch
        mark = ""
        if case.batch > 1:
            mark = "*"
            notes.append(f"* {case.title[:16].strip()}: the grouped conv's time on one item, x{case.batch}")
        print(f"{case.title:<32} {str(tuple(out.shape)):<22} {method:<7} {ours * 1e3:>7.0f}ms "
              f"{peer * 1e3:>10.0f}ms{mark:1} {peer / ours:>8.1f}x")
    print()
    for note in notes:
        print(note)
    print("\nxcorr times follow a warm-up: the median of 3 runs at batch 1, one run at batch 8;")
    print("the grouped-conv time is one run.")


def main() -> None:
    run_seed_cases()
