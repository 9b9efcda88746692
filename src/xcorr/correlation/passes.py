"""A correlation whose forward and gradients may each run on a different method.

The planner chooses a method per pass (:class:`Passes`): the forward problem, and the search- and
template-gradient problems of :mod:`xcorr.correlation.adjoint`, each by its own constraints and costs. Where
one method wins every pass, that method runs alone (its own backward reuses what its forward
kept, such as the FFT's spectra); otherwise :func:`run` runs the forward on one method and each
gradient as a correlation on its own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import adjoint as _adjoint
from .backends import BACKENDS
from .spec import Spec


class Passes(NamedTuple):
    """The methods of the three passes of a correlation with a backward pass; written
    ``forward/search/template`` where they differ (``"direct/direct/fft"``)."""

    forward: str
    search: str
    template: str

    @property
    def uniform(self) -> bool:
        """Whether one method runs every pass (its own forward and backward)."""
        return self.forward == self.search == self.template

    def __str__(self) -> str:
        return self.forward if self.uniform else "/".join(self)


def search_gradient(g: torch.Tensor, z: torch.Tensor, spec: Spec, method: str) -> torch.Tensor:
    problem = _adjoint.search_problem(spec)
    full = BACKENDS[method].run(_adjoint.spread(g, spec.stride), _adjoint.flipped_template(z, spec), problem)
    return _adjoint.crop_to_search(full, spec.padded_search, spec.padding)


def template_gradient(x: torch.Tensor, g: torch.Tensor, spec: Spec, method: str) -> torch.Tensor:
    problem = _adjoint.template_problem(spec)
    t = BACKENDS[method].run(_adjoint.items_as_channels(x, spec), _adjoint.gradient_template(g, spec), problem)
    return _adjoint.template_gradient(t, spec)


class _Mixed(torch.autograd.Function):
    """The forward on ``passes.forward``; each gradient a correlation on its pass's method.

    The gradients are computed with differentiable operations, so a second derivative works."""

    @staticmethod
    def forward(ctx, x, z, spec, passes):
        ctx.save_for_backward(x, z)
        ctx.spec, ctx.passes = spec, passes
        with torch.no_grad():
            return BACKENDS[passes.forward].run(x, z, spec)

    @staticmethod
    def backward(ctx, g):
        x, z = ctx.saved_tensors
        spec, passes = ctx.spec, ctx.passes
        g = g.contiguous()
        gx = search_gradient(g, z, spec, passes.search) if ctx.needs_input_grad[0] else None
        gz = template_gradient(x, g, spec, passes.template) if ctx.needs_input_grad[1] else None
        return gx, gz, None, None


def run(x: torch.Tensor, z: torch.Tensor, spec: Spec, passes: Passes) -> torch.Tensor:
    """``xcorr`` of validated inputs with the methods of ``passes`` (not uniform)."""
    return _Mixed.apply(x, z, spec, passes)
