"""Fit the cost-volume model's constants (each volume backend's ``CONSTANTS``) to measured times.

Random cost volumes (local correlations of FlowNetC's and PWC-Net's kinds, stereo volumes with
and without groups) are timed with every method, forward and forward+backward, by
:meth:`xcorr.planning.engine.Engine.measure`, and fitted by :func:`xcorr.planning.fit.fit` from
the terms each backend declares. :func:`accuracy` tells, on problems held out of the fit, how
often the model picks the measured-fastest method and what a wrong pick costs.

Fitting needs scipy (the ``bench`` and ``dev`` extras).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from ..planning import fit as fitting
from ..planning.cost import Constants
from ..planning.engine import ENGINE
from ..volumes.family import VOLUMES
from ..volumes.spec import VolumeSpec, check_local_correlation, check_stereo_correlation

Row = dict[str, Any]


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
        allowed = VOLUMES.options(spec)
        row: Row = {"spec": spec, "forward": ENGINE.measure(spec, False, allowed)}
        if i % backward_every == 0:
            row["backward"] = ENGINE.measure(spec, True, allowed)
        rows.append(row)
    return rows


def builtin() -> Constants:
    """The built-in CPU constants, whatever a profile says."""
    found = VOLUMES.builtin_constants("cpu")
    assert found is not None
    return found[0]


def fit(rows: Sequence[Row]) -> Constants:
    """Constants fitted to measured ``rows`` (see :func:`measure`)."""
    samples = [(r["spec"], r["forward"], r.get("backward", {})) for r in rows]
    return fitting.fit(VOLUMES.backends, samples, builtin())


def accuracy(rows: Sequence[Row], constants: Constants) -> dict[str, float]:
    """On ``rows``: the share of problems where the model picks the measured-fastest method
    (forward and forward+backward), the median and largest time lost by its pick (relative to
    the fastest), and the median |log(estimate / measured)| of each method's forward time."""
    picks, losses = [], []
    errors: dict[str, list[float]] = {m: [] for m in VOLUMES.backends}
    for r in rows:
        for grad, key in ((False, "forward"), (True, "backward")):
            if key not in r:
                continue
            estimate = VOLUMES.estimate(r["spec"], grad, constants)
            times = r[key]
            pick, best = min(times, key=estimate.__getitem__), min(times.values())
            picks.append(times[pick] == best)
            losses.append(times[pick] / best - 1)
            if not grad:
                for m in times:
                    errors[m].append(abs(math.log(estimate[m] / times[m])))
    result = {
        "picks_fastest": sum(picks) / len(picks),
        "median_loss": statistics.median(losses),
        "max_loss": max(losses),
    }
    result.update({f"{m}_log_error": statistics.median(e) for m, e in errors.items() if e})
    return result


def main(count: int = 20, held_out: int = 10, seed: int = 0) -> tuple[Constants, dict[str, float]]:
    """Measure, fit on ``count`` problems, report the accuracy on ``held_out`` others; returns
    the constants and that accuracy."""
    specs = problems(count + held_out, seed)
    rows = measure(specs)
    constants = fit(rows[:count])
    print(constants)
    held = accuracy(rows[count:], constants)
    for name, value in held.items():
        print(f"held out: {name} = {value:.3g}")
    return constants, held


if __name__ == "__main__":
    main()
