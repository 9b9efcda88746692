"""Algorithms of cost volumes. One module per method, each defining one
:class:`~xcorr.volumes.backends._base.VolumeBackend` record; no backend imports another.
"""

from __future__ import annotations

from . import banded, fused, shifted
from ._base import VolumeBackend

#: Every cost-volume method (:func:`xcorr.volumes.correlate`), in the planner's order of preference among equals.
VOLUME_BACKENDS: dict[str, VolumeBackend] = {
    b.name: b for b in (shifted.VOLUME_BACKEND, banded.VOLUME_BACKEND, fused.VOLUME_BACKEND)
}

__all__ = ["VOLUME_BACKENDS", "VolumeBackend"]
