"""``python -m xcorr demo``: the four correlations of Siamese trackers at their real sizes, then template matching."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .correlation.api import xcorr
from .correlation.spec import check_xcorr
from .matching.api import find_peaks, match_template
from .matching.checks import MATCH_METHODS
from .planning.engine import ENGINE


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
        method = ENGINE.decide(check_xcorr(x, z, case.mode, 0, 1, 1))
        with torch.no_grad():
            out = xcorr(x, z, case.mode)  # warm-up
            ours = _seconds(partial(xcorr, x, z, case.mode), repeats=3 if case.batch == 1 else 1)
            if case.mode not in one_item:
                one_item[case.mode] = _seconds(partial(case.grouped, x[:1], z[:1]), repeats=1)
            peer = one_item[case.mode] * case.batch
        mark = ""
        if case.batch > 1:
            mark = "*"
            notes.append(f"* {case.title[:16].strip()}: the grouped conv's time on one item, x{case.batch}")
        print(
            f"{case.title:<32} {str(tuple(out.shape)):<22} {method:<7} {ours * 1e3:>7.0f}ms "
            f"{peer * 1e3:>10.0f}ms{mark:1} {peer / ours:>8.1f}x"
        )
    print()
    for note in notes:
        print(note)
    print("\nxcorr times follow a warm-up: the median of 3 runs at batch 1, one run at batch 8;")
    print("the grouped-conv time is one run.")


#: Where the matching part writes its picture.
MATCH_PNG = "xcorr-match-demo.png"


def load_sample() -> np.ndarray:
    """The photograph shipped with the package: (256, 256, 3) uint8 (see ``xcorr/data/README.md``)."""
    with resources.files("xcorr").joinpath("data/astronaut.npz").open("rb") as f:
        return np.load(f)["image"]


def demo_photo() -> tuple[np.ndarray, str]:
    """scikit-image's astronaut where installed, else the downscaled copy shipped with the package."""
    try:
        from skimage import data
    except ImportError:
        return load_sample(), "shipped sample (astronaut, 256x256)"
    return data.astronaut(), "scikit-image astronaut (512x512)"


def run_matching(out_png: str = MATCH_PNG, size: int = 40, seed: int = 0) -> dict[str, int]:
    """Cut templates from a photo, change the photo's brightness and contrast and add noise, then
    find each template with all six methods. Prints the table, writes a PNG; returns hits per method."""
    photo, source = demo_photo()
    grey = photo.astype(np.float32).mean(2)
    rng = np.random.default_rng(seed)
    H, W = grey.shape
    corners: list[tuple[int, int]] = []
    while len(corners) < 6:  # textured places: a patch of plain wall matches anywhere along it
        y, x = int(rng.integers(0, H - size)), int(rng.integers(0, W - size))
        if grey[y : y + size, x : x + size].std() > 30:
            corners.append((y, x))
    templates = [grey[y : y + size, x : x + size].copy() for y, x in corners]
    # The scene under other light: darker, less contrast, sensor noise; 8-bit like a camera's.
    seen = np.clip(0.6 * grey + 40 + rng.normal(0, 6, grey.shape), 0, 255).astype(np.uint8)
    print(f"\ntemplate matching: {len(templates)} templates of {size}x{size} cut from {source};")
    print("the image searched has 0.6x contrast, +40 brightness and noise (sigma 6)\n")
    cv2: Any
    try:
        import cv2
    except ImportError:
        cv2 = None
    header = f"{'method':<15} {'found':>7} {'best score':>11} {'time':>8}" + ("  max |ours - OpenCV|" if cv2 else "")
    print(header)
    print("-" * len(header))
    hits: dict[str, int] = {}
    maps = {}
    for method in MATCH_METHODS:
        largest = not method.startswith("sqdiff")
        found, best, seconds, gap = 0, [], 0.0, 0.0
        for (y, x), template in zip(corners, templates):
            tpl = template.round().astype(np.uint8)
            start = time.perf_counter()
            scores = match_template(seen, tpl, method)
            seconds += time.perf_counter() - start
            ((px, py, score),) = find_peaks(scores, largest=largest)
            found += (px, py) == (x, y)
            best.append(score)
            if cv2 is not None:
                code = getattr(cv2, "TM_" + method.upper())
                expected = cv2.matchTemplate(seen, tpl, code)
                scale = 1.0 if method.endswith("normed") else float(np.abs(expected).max())
                gap = max(gap, float(np.abs(scores - expected).max()) / scale)
        hits[method] = found
        maps[method] = scores
        line = f"{method:<15} {found:>3} / {len(templates)} {np.median(best):>11.4g} {seconds / len(templates) * 1e3:>6.1f}ms"
        print(line + (f"  {gap:.1e}{'' if method.endswith('normed') else ' (relative)'}" if cv2 else ""))
    print("\nfound: the best position is the template's true corner. Unnormalised scores follow the")
    print("brightness of the image rather than its pattern; the normed ones do not.")
    _match_figure(out_png, seen, corners, size, maps, corners[-1])
    return hits


def _match_figure(path, image, corners, size, maps, last) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        print("(matplotlib is not installed: no picture; pip install 'xcorr[match]')")
        return
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    axes = axes.ravel()
    axes[0].imshow(image, cmap="gray")
    for y, x in corners:
        axes[0].add_patch(Rectangle((x - 0.5, y - 0.5), size, size, fill=False, color="red", lw=1.5))
    axes[0].set_title("image searched, templates' true places")
    axes[1].imshow(image[last[0] : last[0] + size, last[1] : last[1] + size], cmap="gray")
    axes[1].set_title("last template's place")
    for ax, (method, scores) in zip(axes[2:], maps.items()):
        ax.imshow(scores, cmap="viridis")
        ax.plot([last[1]], [last[0]], "r+", markersize=14)
        ax.set_title(f"{method}: last template")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    run_seed_cases()
    run_matching()
