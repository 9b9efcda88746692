"""Fit the cost-volume model's constants (:class:`xcorr.planner.VolumeConstants`) to measured times.

Random cost volumes (local correlations of FlowNetC's and PWC-Net's kinds, stereo volumes with
and without groups) are timed with every method, forward and forward+backward, by
:func:`xcorr.planner.volume_measure`. Every constant enters its method's estimate linearly, so
each method's forward constants are fitted by non-negative least squares on relative error, with
the feature of a constant read off :func:`xcorr.planner.volume_estimate` itself (that constant
set to 1, the others to 0): the fit and the model cannot drift apart. The backward ratio of a
method is the median of its measured (forward+backward) / forward - 1. :func:`accuracy` tells,
on problems held out of the fit, how often the model picks the measured-fastest method and what
a wrong pick costs.

Fitting needs scipy (the ``bench`` and ``dev`` extras).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import planner
from ..volumes.spec import VolumeSpec, check_local_correlation, check_stereo_correlation

Row = dict[str, Any]

#: The constants each method's forward estimate is fitted with.
FORWARD = {
    "shifted": ("shifted_call", "shifted_element", "shifted_output"),
    "banded": ("banded_call", "banded_chunk", "banded_mac", "banded_band"),
}


def problems(count: int, seed: int = 0) -> list[VolumeSpec]:
    """``count`` random float32 cost volumes of the sizes networks use, small enough to time in
    well under a second each."""
    rng = random.Random(seed)
    specs = []
    for _ in range(count):
        B = rng.choice([1, 2, 4])
        C = rng.choice([16, 32, 64, 128, 256])
        H, W = rng.choice([8, 16, 32, 48]), rng.choice([16, 32, 64, 96])
        f = torch.empty(B, C, H, W)
        if rng.random() < 0.7:
            ds = rng.choice([1, 1, 2])
            d = ds * rng.choice([0, 1, 2, 3, 4, 6])
            k = rng.choice([1, 1, 1, 3])
            specs.append(check_local_correlation(f, f, d, ds, rng.choice([1, 1, 2]), k, "mean", "flat"))
        else:
            groups = rng.choice([None, None, 4, 8])
            specs.append(check_stereo_correlation(f, f, rng.choice([8, 16, 24, 40]), groups, "mean"))
    return specs


def measure(specs: Sequence[VolumeSpec], backward_every: int = 3) -> list[Row]:
    """One row per problem: the seconds of every method, forward, and forward+backward for
    every ``backward_every``-th problem (the backward ratios vary little)."""
    rows = []
    for i, spec in enumerate(specs):
        allowed = list(planner.VOLUME_BACKENDS)
        row: Row = {"spec": spec, "forward": planner.volume_measure(spec, False, allowed)}
        if i % backward_every == 0:
            row["backward"] = planner.volume_measure(spec, True, allowed)
        rows.append(row)
    return rows


def _unit(name: str) -> planner.VolumeConstants:
    """Constants with ``name`` at 1 and every other cost at 0 (float64's ratio at 1)."""
    values = {f.name: 0.0 for f in dataclasses.fields(planner.VolumeConstants)}
    values.update({name: 1.0, "float64": 1.0})
    return planner.VolumeConstants(**values)


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(A, b)[0]


def fit(rows: Sequence[Row]) -> planner.VolumeConstants:
    """Constants fitted to measured ``rows`` (see :func:`measure`)."""
    values = dataclasses.asdict(planner.VOLUME_CONSTANTS["cpu"])
    for method, names in FORWARD.items():
        A = np.array([[planner.volume_estimate(r["spec"], False, _unit(n))[method] for n in names] for r in rows])
        t = np.array([r["forward"][method] for r in rows])
        # Relative error: each problem's row divided by its time.
        values.update(zip(names, map(float, _nnls(A / t[:, None], np.ones(len(rows))))))
    for method in FORWARD:
        ratios = [r["backward"][method] / r["forward"][method] - 1 for r in rows if "backward" in r]
        values[f"{method}_backward"] = max(0.0, statistics.median(ratios))
    return planner.VolumeConstants(**values)


def accuracy(rows: Sequence[Row], constants: planner.VolumeConstants) -> dict[str, float]:
    """On ``rows``: the share of problems where the model picks the measured-fastest method
    (forward and forward+backward), the median and largest time lost by its pick (relative to
    the fastest), and the median |log(estimate / measured)| of each method's forward time."""
    picks, losses = [], []
    errors: dict[str, list[float]] = {m: [] for m in FORWARD}
    for r in rows:
        for grad, key in ((False, "forward"), (True, "backward")):
            if key not in r:
                continue
            estimate = planner.volume_estimate(r["spec"], grad, constants)
            times = r[key]
            pick, best = min(estimate, key=estimate.__getitem__), min(times.values())
            picks.append(times[pick] == best)
            losses.append(times[pick] / best - 1)
            if not grad:
                for m in FORWARD:
                    errors[m].append(abs(math.log(estimate[m] / times[m])))
    result = {
        "picks_fastest": sum(picks) / len(picks),
        "median_loss": statistics.median(losses),
        "max_loss": max(losses),
    }
    result.update({f"{m}_log_error": statistics.median(e) for m, e in errors.items()})
    return result


def main(count: int = 20, held_out: int = 10, seed: int = 0) -> planner.VolumeConstants:
    """Measure, fit on ``count`` problems, report the accuracy on ``held_out`` others; returns the constants."""
    specs = problems(count + held_out, seed)
    rows = measure(specs)
    constants = fit(rows[:count])
    print(constants)
    for name, value in accuracy(rows[count:], constants).items():
        print(f"held out: {name} = {value:.3g}")
    return constants


if __name__ == "__main__":
    main()
