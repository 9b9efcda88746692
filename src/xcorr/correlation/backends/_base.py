"""The record each correlation backend module defines: how the method runs, and the rules the
planner applies to it (where it runs, what it can compute exactly, what it costs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import torch

from ...planning.cost import Terms
from ..spec import MODES

#: The problem a backend computes: :class:`~xcorr.correlation.spec.Spec` (images) or
#: :class:`~xcorr.correlation.spec.Spec3d` (volumes).
S = TypeVar("S")

#: ``run(x, z, spec)``: the correlation of validated inputs, differentiable in both.
Run = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
#: ``prepare(z, spec) -> run(x)``: the template's share of the work done once (template plans);
#: ``run`` accepts searches of any batch that is a multiple of the templates'.
Prepare = Callable[[torch.Tensor, Any], Callable[[torch.Tensor], torch.Tensor]]
#: ``bind(spec, grad) -> run(x, z)``: the method for eager calls of one signature, with what depends
#: on the shapes alone (and on whether a backward pass follows) worked out once.
Bind = Callable[[Any, bool], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Backend(Generic[S]):
    """One method of computing :func:`xcorr.xcorr`, with the rules the planner applies to it
    (``Backend[Spec]`` for images, ``Backend[Spec3d]`` for volumes).

    Attributes:
        name: the ``method=`` name.
        run: the plain form, also used while tracing (shapes may be symbolic there).
        prepare: the template plan form.
        bind: the bound form for eager calls of one signature.
        devices: the device types it runs on (None: every one).
        modes: the modes ``"auto"`` may choose it for (an explicit ``method=`` runs every mode).
        exportable: whether ``"auto"`` may choose it while a graph is exported (no convolution
            with a run-time weight, nothing that depends on the batch size).
        fits: the memory rule: whether ``"auto"`` may choose it for a problem.
        exact: the precision rule: whether it keeps the promised precision for a problem; where
            it does not and another allowed method does, ``"auto"`` drops it.
        terms: what its cost-model estimate counts (None: it wins only by measurement).
        constants: its built-in cost constants (nanoseconds) per CPU capability (``"AVX2"``,
            ``"AVX512"``), fitted by ``python -m xcorr fit``.
    """

    name: str
    run: Callable[[torch.Tensor, torch.Tensor, S], torch.Tensor]
    prepare: Callable[[torch.Tensor, S], Callable[[torch.Tensor], torch.Tensor]]
    bind: Callable[[S, bool], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    devices: tuple[str, ...] | None = None
    modes: tuple[str, ...] = MODES
    exportable: bool = False
    fits: Callable[[S], bool] = lambda spec: True
    exact: Callable[[S], bool] = lambda spec: True
    terms: Callable[[S], Terms] | None = None
    constants: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def allowed(self, spec: Any) -> bool:
        """Whether ``"auto"`` may choose it for ``spec`` (devices, modes and memory)."""
        return (
            (self.devices is None or spec.device.type in self.devices) and spec.mode in self.modes and self.fits(spec)
        )
