"""Algorithms. One module per method; each exposes ``xcorr(x, z, spec) -> Tensor``.

Each also exposes ``prepare(z, spec) -> run(x, spec)``, which does the template's share of
the work once (template plans); ``xcorr`` is ``prepare(z, spec)(x, spec)``. :data:`BIND` holds
each one's form for repeated eager calls of one signature. A backend
receives validated inputs (see :mod:`xcorr._checks`) and must return the exact result of
:func:`xcorr.xcorr` for every mode and geometry, differentiably. No backend imports another:
the planner is the only place that chooses between them.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._spec import Spec
from . import direct, fft, gather

Backend = Callable[[torch.Tensor, torch.Tensor, Spec], torch.Tensor]

Prepare = Callable[[torch.Tensor, Spec], Callable[[torch.Tensor, Spec], torch.Tensor]]

BACKENDS: dict[str, Backend] = {
    "direct": direct.xcorr,
    "fft": fft.xcorr,
    "gather": gather.xcorr,
}

Bind = Callable[[Spec], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

PREPARE: dict[str, Prepare] = {
    "direct": direct.prepare,
    "fft": fft.prepare,
    "gather": gather.prepare,
}

#: ``bind(spec) -> run(x, z)``: a backend for eager calls of one signature, with what depends on
#: the shapes alone worked out once (``xcorr.xcorr`` keeps one per call signature).
BIND: dict[str, Bind] = {
    "direct": direct.bind,
    "fft": lambda spec: lambda x, z: fft.xcorr(x, z, spec),
    "gather": gather.bind,
}
