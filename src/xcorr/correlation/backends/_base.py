"""The record each backend module defines: what the planner and the ops need to know of a method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..spec import Spec

#: ``run(x, z, spec)``: the correlation of validated inputs, differentiable in both.
Run = Callable[[torch.Tensor, torch.Tensor, Spec], torch.Tensor]
#: ``prepare(z, spec) -> run(x)``: the template's share of the work done once (template plans);
#: ``run`` accepts searches of any batch that is a multiple of the templates'.
Prepare = Callable[[torch.Tensor, Spec], Callable[[torch.Tensor], torch.Tensor]]
#: ``bind(spec, grad) -> run(x, z)``: the method for eager calls of one signature, with what depends
#: on the shapes alone (and on whether a backward pass follows) worked out once.
Bind = Callable[[Spec, bool], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    """One method of computing :func:`xcorr.xcorr`.

    Attributes:
        name: the ``method=`` name.
        run: the plain form, also used while tracing (shapes may be symbolic there).
        prepare: the template plan form.
        bind: the bound form; by default the plain form with its spec filled in.
    """

    name: str
    run: Run
    prepare: Prepare
    bind: Bind | None = None

    def bound(self, spec: Spec, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``run(x, z)`` for eager calls of ``spec``'s signature."""
        if self.bind is not None:
            return self.bind(spec, grad)
        run = self.run
        return lambda x, z: run(x, z, spec)
