"""``python -m xcorr demo``: the four correlations of Siamese trackers beside the grouped-conv
formulation they replace, then template matching on a photograph, with a picture of the matches.

The correlations run at the seed's sizes (255x255 searches, 127x127 templates) with 16 channels
by default, seconds on two cores; ``--full`` runs the seed's 256 channels (minutes, most of them
in the grouped conv). The grouped conv's batch-8 calls are estimated from one item (its cost is
linear in the batch: one group per item), which is the batch-1 case's problem.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, Callable, NamedTuple

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


class Sizes(NamedTuple):
    """Channels, search side and template side of the seed cases."""

    channels: int
    search: int
    template: int


#: The default sizes: the seed's searches and templates, few channels.
QUICK = Sizes(16, 255, 127)
#: ``--full``: the seed's channels too (the grouped conv's batch-8 calls would take minutes each).
FULL = Sizes(256, 255, 127)

#: A call that takes longer is timed once: its one-time costs are then a small part of it.
ONE_CALL_SECONDS = 1.0
#: At most this many calls are timed after the warm-up, and no more once they took a second.
TIMED_CALLS = 5


def _seconds(fn: Callable[[], Any]) -> float:
    """The time of one call of ``fn``: the fastest of up to :data:`TIMED_CALLS` calls after a
    warm-up (the fastest, as ``timeit`` advises: the others were slowed by other work on the
    machine), or the first call where it takes over :data:`ONE_CALL_SECONDS`."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > ONE_CALL_SECONDS:
        return first
    times: list[float] = []
    while len(times) < TIMED_CALLS and sum(times) < ONE_CALL_SECONDS:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def significant(value: float, digits: int) -> str:
    """``value`` (positive) to ``digits`` significant figures, without an exponent: ``"570"``, ``"0.0123"``."""
    rounded = float(f"{value:.{digits}g}")
    decimals = max(0, digits - 1 - math.floor(math.log10(rounded))) if rounded > 0 else 0
    return f"{rounded:.{decimals}f}"


def format_seconds(seconds: float, digits: int = 3) -> str:
    """``seconds`` to ``digits`` significant figures, in ms below a second.

    Example:
        >>> from xcorr.demo import format_seconds
        >>> format_seconds(0.05234), format_seconds(1.7751), format_seconds(567.9, 2)
        ('52.3 ms', '1.78 s', '570 s')
    """
    if float(significant(seconds * 1e3, digits)) < 1000:
        return f"{significant(seconds * 1e3, digits)} ms"
    return f"{significant(seconds, digits)} s"


def run_seed_cases(sizes: Sizes = QUICK, measure_batches: bool = False) -> list[dict[str, Any]]:
    """Time the four correlations and their grouped-conv formulation; print the table and return
    its rows (seconds per call). Unless ``measure_batches``, the grouped conv's batched calls are
    estimated: its time on one item times the batch."""
    C, S, T = sizes
    print(f"Siamese trackers' correlations: search (B, {C}, {S}, {S}), template (B, {C}, {T}, {T})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    header = (
        f"{'case':<31} {'B':>2}  {'output shape':<19} {'method':<6} {'xcorr/call':>11} {'xcorr/item':>11} "
        f"{'grouped conv/call':>19} {'speed-up':>10}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    rows = []
    one_item: dict[str, float] = {}  # the grouped conv's time on one item, per mode
    for case in CASES:
        x = torch.rand(case.batch, C, S, S, generator=gen)
        z = torch.rand(case.batch, C, T, T, generator=gen)
        method = ENGINE.decide(check_xcorr(x, z, case.mode, 0, 1, 1))
        estimated = case.batch > 1 and not measure_batches
        with torch.no_grad():
            out_shape = tuple(xcorr(x[:0], z[:0], case.mode).shape[1:])
            # The planner's pick by name: "auto" would try the other methods on repeated calls.
            ours = _seconds(partial(xcorr, x, z, case.mode, method=method))
            if estimated and case.mode not in one_item:
                one_item[case.mode] = _seconds(partial(case.grouped, x[:1], z[:1]))
            peer = one_item[case.mode] * case.batch if estimated else _seconds(partial(case.grouped, x, z))
        if case.batch == 1:
            one_item[case.mode] = peer
        speedup = peer / ours
        rows.append(
            dict(case=case.title, batch=case.batch, method=method, xcorr=ours, grouped=peer, estimated=estimated)
        )
        if estimated:
            peer_text, speedup_text = f"~{format_seconds(peer, 2)} est.", f"~{significant(speedup, 2)}x est."
        else:
            peer_text, speedup_text = format_seconds(peer), f"{significant(speedup, 3)}x"
        print(
            f"{case.title:<31} {case.batch:>2}  {str((case.batch, *out_shape)):<19} {method:<6} "
            f"{format_seconds(ours):>11} {format_seconds(ours / case.batch):>11} {peer_text:>19} {speedup_text:>10}"
        )
    print("\nB: the batch (search/template pairs). /call: one call on the whole batch; /item: per pair.")
    print(
        f"Measured: the fastest of up to {TIMED_CALLS} calls after a warm-up, or one call where it takes "
        f"over {ONE_CALL_SECONDS:g} s;\nno grad. method: the planner's choice."
    )
    if any(row["estimated"] for row in rows):
        print("est.: the grouped conv's time on one item (the B=1 row) times B, to 2 figures: its cost is")
        print("linear in the batch (one group per item), and at B=8 it would take 8 times as long to measure.")
    if C < FULL.channels:
        print(f"python -m xcorr demo --full: {FULL.channels} channels, as the seed's trackers have.")
    return rows


#: Where the matching part writes its picture.
MATCH_PNG = "xcorr-match-demo.png"


def load_sample() -> np.ndarray:
    """The photograph shipped with the package: (256, 256, 3) uint8 (see ``xcorr/data/README.md``)."""
    with resources.files("xcorr").joinpath("data/astronaut.npz").open("rb") as f:
        return np.load(f)["image"]


@dataclass
class MatchResult:
    """One method's result on every template: the best position ``(x, y)`` and the score map of each."""

    method: str
    found: list[tuple[int, int]]
    scores: list[np.ndarray]

    @property
    def largest(self) -> bool:
        """Whether the best score is the highest (every method but the squared differences)."""
        return not self.method.startswith("sqdiff")


def run_matching(out_png: str | None = MATCH_PNG, size: int = 24, seed: int = 0) -> dict[str, int]:
    """Cut templates from the shipped photograph (:func:`load_sample`), change the photo's
    brightness and contrast and add noise, then find each template with all six methods. Prints
    the table, writes a PNG to ``out_png`` (unless None); returns hits per method."""
    grey = load_sample().astype(np.float32).mean(2)
    rng = np.random.default_rng(seed)
    H, W = grey.shape
    corners: list[tuple[int, int]] = []
    while len(corners) < 6:  # textured places: a patch of plain wall matches anywhere along it
        y, x = int(rng.integers(0, H - size)), int(rng.integers(0, W - size))
        if grey[y : y + size, x : x + size].std() > 30:
            corners.append((y, x))
    templates = [grey[y : y + size, x : x + size].round().astype(np.uint8) for y, x in corners]
    # The scene under other light: darker, less contrast, sensor noise; 8-bit like a camera's.
    seen = np.clip(0.6 * grey + 40 + rng.normal(0, 6, grey.shape), 0, 255).astype(np.uint8)
    print(f"\nTemplate matching: {len(templates)} templates of {size}x{size} cut from a {H}x{W} photograph;")
    print("the image searched has 0.6x contrast, +40 brightness and noise (sigma 6)\n")
    cv2: Any
    try:
        import cv2
    except ImportError:
        cv2 = None
    header = f"{'method':<15} {'best':<7} {'found':>7} {'time/template':>14}" + ("  max |ours - OpenCV|" if cv2 else "")
    print(header)
    print("-" * len(header))
    results = []
    for method in MATCH_METHODS:
        result = MatchResult(method, [], [])
        seconds, gap = 0.0, 0.0
        match_template(seen, templates[0], method)  # warm-up: the first call plans the method
        for template in templates:
            start = time.perf_counter()
            scores = np.asarray(match_template(seen, template, method))
            seconds += time.perf_counter() - start
            ((px, py, _),) = find_peaks(scores, largest=result.largest)
            result.found.append((px, py))
            result.scores.append(scores)
            if cv2 is not None:
                expected = cv2.matchTemplate(seen, template, getattr(cv2, "TM_" + method.upper()))
                scale = 1.0 if method.endswith("normed") else float(np.abs(expected).max())
                gap = max(gap, float(np.abs(scores - expected).max()) / scale)
        results.append(result)
        hits = sum((x, y) == (cx, cy) for (x, y), (cy, cx) in zip(result.found, corners))
        best = "highest" if result.largest else "lowest"
        line = f"{method:<15} {best:<7} {hits:>3} / {len(templates)} {format_seconds(seconds / len(templates)):>14}"
        print(line + (f"  {gap:.1e}{'' if method.endswith('normed') else ' (relative)'}" if cv2 else ""))
    print("\nfound: the best score is at the template's true corner; time: per template, after a warm-up.")
    print("Unnormalised scores follow the brightness of the image rather than its pattern; the normed")
    print("ones do not.")
    if out_png is not None:
        _save_match_figure(out_png, grey, seen, templates, corners, results)
    return {r.method: sum(f == (x, y) for f, (y, x) in zip(r.found, corners)) for r in results}


def shown_template(corners: list[tuple[int, int]], results: list[MatchResult]) -> int:
    """The template whose score maps the picture shows: the one the methods disagree on most
    (found by as close to half of them as any), the first such."""
    found = [sum(r.found[i] == (x, y) for r in results) for i, (y, x) in enumerate(corners)]
    return max(range(len(corners)), key=lambda i: (min(found[i], len(results) - found[i]), -i))


def _median_norm(scores: np.ndarray) -> Any:
    """A colour scale from the lowest score to the highest with the median in the middle, so
    that no map is one colour where most scores sit near one end (``sqdiff_normed``'s near 1)."""
    from matplotlib.colors import Normalize, PowerNorm

    low, high, median = float(scores.min()), float(scores.max()), float(np.median(scores))
    if not low < median < high:
        return Normalize(low, high)
    return PowerNorm(math.log(0.5) / math.log((median - low) / (high - low)), low, high)


def match_figure(
    photo: np.ndarray,
    seen: np.ndarray,
    templates: list[np.ndarray],
    corners: list[tuple[int, int]],
    results: list[MatchResult],
) -> Any:
    """The picture of :func:`run_matching` (a matplotlib Figure). Top row: the photo the templates
    were cut from, then per method every template's found box beside its true box. Bottom row:
    one template (:func:`shown_template`) and its score map per method, the best end of each
    colour scale bright."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    h, w = templates[0].shape
    shown = shown_template(corners, results)
    fig, axes = plt.subplots(2, 1 + len(results), figsize=(3.4 * (1 + len(results)), 7.6))
    top, bottom = axes
    top[0].imshow(photo, cmap="gray")
    for i, (y, x) in enumerate(corners):
        top[0].add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="lime", lw=1.5))
        top[0].text(x, y - 2, str(i + 1), color="lime", fontsize=11, fontweight="bold")
    top[0].set_title(f"templates 1-{len(corners)} in the photo")
    for ax, result in zip(top[1:], results):
        ax.imshow(seen, cmap="gray")
        hits = 0
        for i, ((y, x), (fx, fy)) in enumerate(zip(corners, result.found)):
            right = (fx, fy) == (x, y)
            hits += right
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="lime", lw=1.5, ls="--"))
            ax.add_patch(Rectangle((fx - 0.5, fy - 0.5), w, h, fill=False, color="lime" if right else "red", lw=1.5))
            ax.text(fx, fy - 2, str(i + 1), color="lime" if right else "red", fontsize=11, fontweight="bold")
        ax.set_title(f"{result.method}: {hits}/{len(corners)} found")
    top[1].legend(
        handles=[
            Line2D([], [], color="lime", ls="--", label="true place"),
            Line2D([], [], color="lime", label="found: right"),
            Line2D([], [], color="red", label="found: wrong"),
        ],
        loc="lower left",
        fontsize=8,
        framealpha=0.8,
    )
    bottom[0].imshow(templates[shown], cmap="gray", vmin=0, vmax=255)
    bottom[0].set_title(f"template {shown + 1}, scored at right")
    y, x = corners[shown]
    for ax, result in zip(bottom[1:], results):
        scores = result.scores[shown]
        image = ax.imshow(scores, cmap="viridis" if result.largest else "viridis_r", norm=_median_norm(scores))
        fx, fy = result.found[shown]
        ax.plot([x], [y], "+", color="white", markersize=18, mew=2.5, label="true corner")
        ax.plot([fx], [fy], "o", color="red", mfc="none", markersize=12, mew=2, label="best score")
        best = "highest" if result.largest else "lowest"
        ax.set_title(f"{result.method}: best = {best}")
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        # Three ticks: the colour scale is not linear (the median sits in its middle).
        ticks = [float(scores.min()), float(np.median(scores)), float(scores.max())]
        bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
        bar.set_label(f"score: min, median, max (bright: {best})", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    bottom[1].legend(loc="lower left", fontsize=8, framealpha=0.8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Template matching: the image searched has 0.6x contrast, +40 brightness and noise; "
        "score maps are indexed by the template's top-left corner"
    )
    fig.tight_layout()
    return fig


def _save_match_figure(path: str, photo, seen, templates, corners, results) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no picture; pip install 'xcorr[match]')")
        return
    fig = match_figure(photo, seen, templates, corners, results)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def main(full: bool = False) -> None:
    """Run the demo: the seed cases (at :data:`FULL` sizes with ``full``, else :data:`QUICK`),
    then template matching."""
    run_seed_cases(FULL if full else QUICK)
    run_matching()
