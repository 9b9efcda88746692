"""Fit the planner's cost-model constants to measured times: ``python -m xcorr fit``.

Random problems (mode, batch, channels, search and template sizes, shared or per-item
templates) are timed with every method the planner allows, forward and forward+backward, by
:func:`xcorr.planner.measure`. Every constant enters its method's estimate linearly, so each
method's forward constants are fitted by non-negative least squares on relative error, with
the feature of a constant read off :func:`xcorr.planner.estimate` itself (that constant set to
1, the others to 0): the fit and the model cannot drift apart. The backward ratios are then
fitted the same way against the fitted forward estimates. A held-out set of problems shows how
often the fitted model picks the measured-fastest method and what a wrong pick costs.

Fitting needs scipy (the ``bench`` and ``dev`` extras).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import numpy as np
import torch

from .. import planner
from ..correlation.spec import Spec, check_xcorr

Row = dict[str, Any]

#: Forward fits, in order: (method, constants fitted, constants taken from an earlier fit, which
#: problems). ``direct_call`` is fitted with the depthwise kernels (most problems); the dense
#: kernels' own fit only supplies ``dense_mac``.
FORWARD: list[tuple[str, tuple[str, ...], tuple[str, ...], Callable[[str], bool]]] = [
    ("direct", ("direct_call", "depthwise_mac", "direct_element"), (), lambda mode: mode != "upchannel"),
    ("direct", ("dense_mac",), ("direct_call",), lambda mode: mode == "upchannel"),
    ("fft", ("fft_call", "fft_chunk", "fft_point", "fft_product"), (), lambda mode: True),
    ("gather", ("gather_call", "gather_element", "gather_search", "gather_mac"), (), lambda mode: mode != "depthwise"),
]

#: Backward constants: (method, ratio constant, extra backward term or None, problems).
BACKWARD: list[tuple[str, str, str | None, Callable[[str], bool]]] = [
    ("direct", "direct_backward", "direct_backward_mac", lambda mode: mode != "upchannel"),
    ("direct", "dense_backward", None, lambda mode: mode == "upchannel"),
    ("fft", "fft_backward", None, lambda mode: True),
    ("gather", "gather_backward", None, lambda mode: mode != "depthwise"),
]

_FIELDS = [f.name for f in dataclasses.fields(planner.Constants)]

#: A pick within this factor of the fastest method's time counts as near.
NEAR = 1.1


def random_problems(n: int, seed: int = 0, max_macs: float = 4e8) -> list[tuple[str, list[int], list[int]]]:
    """``n`` random (mode, x shape, z shape) problems of at most ``max_macs`` direct multiply-adds."""
    rng = random.Random(seed)
    problems: list[tuple[str, list[int], list[int]]] = []
    while len(problems) < n:
        mode = rng.choice(["naive", "depthwise", "upchannel"])
        B, C = rng.choice([1, 2, 4, 8, 16, 32]), rng.choice([16, 32, 64, 128, 256])
        H = rng.randint(16, 128)
        h = rng.randint(3, min(64, H - 2))
        Bz = rng.choice([1, B])
        K = rng.choice([2, 4, 10]) if mode == "upchannel" else 1
        Ho = H - h + 1
        if B * Ho * Ho * C * h * h * K > max_macs or B * C * H * H > 4e6:
            continue
        problems.append((mode, [B, C, H, H], [Bz, K * C, h, h]))
    return problems


def _spec(row: Row, device: str | torch.device = "cpu") -> Spec:
    """The problem of ``row`` on ``device``, described without allocating it."""
    x, z = torch.empty(row["x"], device="meta"), torch.empty(row["z"], device="meta")
    return dataclasses.replace(check_xcorr(x, z, row["mode"], 0, 1, 1), device=torch.device(device))


def collect(
    problems: Iterable[tuple[str, Sequence[int], Sequence[int]]],
    device: str | torch.device = "cpu",
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Time every allowed method on each problem, forward and forward+backward (seconds; the
    latter also with each pass on the method the planner chooses for it, as ``"per-pass"``)."""
    rows: list[Row] = []
    for mode, x_shape, z_shape in problems:
        gen = torch.Generator().manual_seed(len(rows))
        x = torch.randn(list(x_shape), generator=gen).to(device)
        z = torch.randn(list(z_shape), generator=gen).to(device)
        spec = check_xcorr(x, z, mode, 0, 1, 1)
        allowed = planner.candidates(spec)
        row = {
            "mode": mode,
            "x": list(x_shape),
            "z": list(z_shape),
            "fwd": planner.measure(spec, False, allowed, x, z),
            "both": planner.measure(spec, True, planner.PLANNER.options(spec, True), x, z),
        }
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _unit(**values: float) -> planner.Constants:
    return planner.Constants(**{name: values.get(name, 0.0) for name in _FIELDS})


def _feature(spec: Spec, method: str, name: str, grad: bool = False) -> float:
    """What constant ``name`` multiplies in ``method``'s estimate, in nanoseconds."""
    return planner.estimate(spec, grad, _unit(**{name: 1.0}))[method] * 1e9


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(A, b)[0]


def fit(rows: Sequence[Row], base: planner.Constants | None = None) -> planner.Constants:
    """Constants fitted to ``rows`` (from :func:`collect`); those no row informs keep ``base``'s."""
    values = dataclasses.asdict(base or planner.CONSTANTS["cpu"])  # built-in, whatever a profile says
    for method, names, fixed, picks in FORWARD:
        used = [r for r in rows if method in r["fwd"] and picks(r["mode"])]
        if not used:
            continue
        specs = [_spec(r) for r in used]
        A = np.array([[_feature(s, method, n) for n in names] for s in specs])
        offset = np.array([sum(values[n] * _feature(s, method, n) for n in fixed) for s in specs])
        t = np.array([r["fwd"][method] * 1e9 for r in used])
        # Relative error: every row divided by its measured time.
        values.update(zip(names, _nnls(A / t[:, None], 1 - offset / t)))
    forward = planner.Constants(**values)
    for method, ratio, extra, picks in BACKWARD:
        used = [r for r in rows if method in r["both"] and picks(r["mode"])]
        if not used:
            continue
        features, shares = [], []
        for r in used:
            spec = _spec(r)
            f = planner.estimate(spec, False, forward)[method] * 1e9
            both = r["both"][method] * 1e9
            features.append([f / both] + ([_feature(spec, method, extra, grad=True) / both] if extra else []))
            shares.append((both - f) / both)
        solution = _nnls(np.array(features), np.array(shares))
        values[ratio] = float(solution[0])
        if extra:
            values[extra] = float(solution[1])
    return planner.Constants(**{k: float(v) for k, v in values.items()})


def evaluate(rows: Sequence[Row], constants: planner.Constants) -> dict[str, dict[str, Any]]:
    """How the model with ``constants`` picks on ``rows``, forward and forward+backward.

    For each: ``problems``, ``best`` (picks of the measured-fastest method), ``near`` (picks
    within :data:`NEAR` of the fastest's time), ``mean_loss`` and ``worst_loss`` (time of the
    picked method / the fastest's) and ``worst`` (that problem). Forward+backward includes the
    per-pass option where the rows measured it.
    """
    out = {}
    for key, grad in (("fwd", False), ("both", True)):
        losses, best, near, worst = [], 0, 0, None
        for r in rows:
            times = r[key]
            estimate = planner.estimate(_spec(r), grad, constants)
            pick = min(times, key=lambda m: estimate[m])
            fastest = min(times, key=times.get)
            loss = times[pick] / times[fastest]
            best += pick == fastest
            near += loss <= NEAR
            losses.append(loss)
            if worst is None or loss > worst[0]:
                worst = (loss, {"mode": r["mode"], "x": r["x"], "z": r["z"], "picked": pick, "fastest": fastest})
        out[key] = {
            "problems": len(rows),
            "best": best,
            "near": near,
            "mean_loss": float(np.mean(losses)) if losses else math.nan,
            "worst_loss": worst[0] if worst else math.nan,
            "worst": worst[1] if worst else None,
        }
    return out


def constants_source(constants: planner.Constants) -> str:
    """``constants`` as Python source for :data:`xcorr.planner.CONSTANTS`, three significant digits."""
    lines = [f"        {name}={float(f'{value:.3g}')!r}," for name, value in dataclasses.asdict(constants).items()]
    return "Constants(\n" + "\n".join(lines) + "\n    )"
