"""Fit the planner's cost-model constants to measured times: ``python -m xcorr fit``.

Random problems (mode, batch, channels, search and template sizes, shared or per-item
templates) are timed with every option the planning engine allows, forward and
forward+backward, by :meth:`xcorr.planning.engine.Engine.measure`, and fitted by
:func:`xcorr.planning.fit.fit` from the terms each backend declares: the fit and the model read
the same terms, so they cannot drift apart. A held-out set of problems shows how often the
fitted model picks the measured-fastest method and what a wrong pick costs.

Fitting needs scipy (the ``bench`` and ``dev`` extras).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import torch

from ..correlation.family import CORRELATION
from ..correlation.spec import Spec, check_xcorr
from ..planning import fit as fitting
from ..planning.cost import Constants
from ..planning.engine import ENGINE

Row = dict[str, Any]

#: A pick within this factor of the fastest method's time counts as near.
NEAR = fitting.NEAR


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
        row = {
            "mode": mode,
            "x": list(x_shape),
            "z": list(z_shape),
            "fwd": ENGINE.measure(spec, False, CORRELATION.options(spec, False), (x, z)),
            "both": ENGINE.measure(spec, True, CORRELATION.options(spec, True), (x, z)),
        }
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _samples(rows: Sequence[Row]) -> list[fitting.Sample]:
    return [(_spec(r), r["fwd"], r["both"]) for r in rows]


def builtin() -> Constants:
    """The built-in CPU constants of this process's capability, whatever a profile says."""
    found = CORRELATION.builtin_constants("cpu")
    assert found is not None
    return found[0]


def fit(rows: Sequence[Row], base: Constants | None = None) -> Constants:
    """Constants fitted to ``rows`` (from :func:`collect`); those no row informs keep ``base``'s
    (by default the built-in ones)."""
    return fitting.fit(CORRELATION.backends, _samples(rows), base or builtin())


def evaluate(rows: Sequence[Row], constants: Constants) -> dict[str, dict[str, Any]]:
    """How the model with ``constants`` picks on ``rows`` (see :func:`xcorr.planning.fit.evaluate`);
    forward+backward includes the per-pass option where the rows measured it."""
    return fitting.evaluate(CORRELATION, _samples(rows), constants)


def constants_source(constants: Constants) -> str:
    """``constants`` as Python source, three significant digits, one backend's ``CONSTANTS`` set
    after another (see each backend module)."""
    lines = []
    for name, backend in CORRELATION.backends.items():
        own = [n for n in constants if any(n in values for values in backend.constants.values())]
        if own:
            lines.append(f"    # {name}")
            lines += [f'    "{n}": {float(f"{constants[n]:.3g}")!r},' for n in own]
    return "{\n" + "\n".join(lines) + "\n}"
