"""Algorithms of correlations. One module per method, each defining one
:class:`~xcorr.correlation.backends._base.Backend` record.

A backend receives validated inputs (see :mod:`xcorr.correlation.spec`), in float32 or float64
(half precision is computed in float32 by :mod:`xcorr._compute`), and must return the exact result
of :func:`xcorr.xcorr` for every mode and geometry, differentiably. No backend imports another: the
planner is the only place that chooses between them. Adding a method is one module and one entry
of :data:`BACKENDS` (of :data:`BACKENDS_3D` for volumes).
"""

from __future__ import annotations

from . import direct, fft, gather
from ._base import Backend

#: Every method, in the planner's order of preference among equals.
BACKENDS: dict[str, Backend] = {b.name: b for b in (direct.BACKEND, fft.BACKEND, gather.BACKEND)}

#: Every method of volume correlations (5-D, :class:`~xcorr.correlation.spec.Spec3d`), likewise.
BACKENDS_3D: dict[str, Backend] = {b.name: b for b in (direct.BACKEND_3D, fft.BACKEND_3D)}

__all__ = ["BACKENDS", "BACKENDS_3D", "Backend"]
