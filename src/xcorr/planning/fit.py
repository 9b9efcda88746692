"""Fitting a family's cost-model constants to measured times, for every backend that declares terms.

A sample is a problem and its measured seconds per option, forward and forward+backward. The fit
reads each backend's :class:`~xcorr.planning.cost.Terms` for the problem, so it knows no backend
by name: a backend added to a family is fitted like the built-in ones.

1. **Forward**: each backend's forward constants by non-negative least squares on relative error
   (every sample's equation divided by its measured time), over every sample that timed it.
2. **Backward**: with the forward constants fixed, each backend's backward ratios and extra
   backward counts, the same way, against ``(forward+backward - forward estimate) / forward+backward``.

The float64 ratios are not fitted (the samples are float32) and keep the base constants' values.
Fitting needs scipy (the ``bench`` and ``dev`` extras).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .cost import Constants, Terms, seconds

#: A sample: (problem, forward seconds per option, forward+backward seconds per option).
Sample = tuple[Any, Mapping[str, float], Mapping[str, float]]

#: A pick within this factor of the fastest option's time counts as near.
NEAR = 1.1


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(A, b)[0]


def _names(rows: Sequence[Mapping[str, float]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _solve(features: list[dict[str, float]], targets: list[float]) -> dict[str, float]:
    """Non-negative ``c`` minimising ``sum_i (sum_n c[n] * features[i][n] - targets[i])**2``."""
    names = _names(features)
    A = np.array([[f.get(n, 0.0) for n in names] for f in features])
    return dict(zip(names, map(float, _nnls(A, np.array(targets)))))


def fit(backends: Mapping[str, Any], samples: Sequence[Sample], base: Mapping[str, float]) -> Constants:
    """Constants fitted to ``samples`` for the records in ``backends`` (name -> record with
    ``terms``); those no sample informs keep ``base``'s."""
    values = dict(base)
    for name, backend in backends.items():
        if backend.terms is None:
            continue
        timed = [(backend.terms(spec), fwd[name] * 1e9) for spec, fwd, _ in samples if name in fwd]
        if timed:
            # Relative error: every equation divided by its measured time.
            values.update(
                _solve([{n: u / t for n, u in terms.forward.items()} for terms, t in timed], [1.0] * len(timed))
            )
    for name, backend in backends.items():
        if backend.terms is None:
            continue
        features, shares = [], []
        for spec, _, both in samples:
            if name not in both:
                continue
            terms: Terms = backend.terms(spec)
            if terms.backward_ratio is None:
                continue
            forward = seconds(terms, False, False, values) * 1e9
            total = both[name] * 1e9
            row = {terms.backward_ratio: forward / total, **{n: u / total for n, u in terms.backward.items()}}
            features.append(row)
            shares.append((total - forward) / total)
        if features:
            values.update(_solve(features, shares))
    return Constants(values)


def evaluate(family: Any, samples: Sequence[Sample], constants: Constants) -> dict[str, dict[str, Any]]:
    """How ``family``'s model with ``constants`` picks on ``samples``, forward and forward+backward.

    For each: ``problems``, ``best`` (picks of the measured-fastest option), ``near`` (picks
    within :data:`NEAR` of the fastest's time), ``mean_loss`` and ``worst_loss`` (time of the
    picked option / the fastest's) and ``worst`` (that problem, as ``describe`` gives it).
    """
    out = {}
    for label, grad, index in (("fwd", False, 1), ("both", True, 2)):
        losses, best, near, worst = [], 0, 0, None
        for sample in samples:
            spec, times = sample[0], sample[index]
            if not times:
                continue
            estimate = family.estimate(spec, grad, constants)
            known = [o for o in times if o in estimate] or list(times)
            pick = min(known, key=lambda o: estimate.get(o, math.inf))
            fastest = min(times, key=times.__getitem__)
            loss = times[pick] / times[fastest]
            best += pick == fastest
            near += loss <= NEAR
            losses.append(loss)
            if worst is None or loss > worst[0]:
                worst = (loss, {"problem": repr(spec), "picked": pick, "fastest": fastest})
        out[label] = {
            "problems": len(losses),
            "best": best,
            "near": near,
            "mean_loss": float(np.mean(losses)) if losses else math.nan,
            "worst_loss": worst[0] if worst else math.nan,
            "worst": worst[1] if worst else None,
        }
    return out
