"""Template plans: one template against a new search region every frame (tracking)."""
from __future__ import annotations

from dataclasses import replace

import torch

from . import planner
from ._checks import check_choice, check_planned_search, check_search_shape, check_tensor, check_xcorr
from .backends import PREPARE
from .ops import HALF, METHODS, empty_result


class Plan:
    """A correlation with a fixed template, prepared once: what depends on ``z`` alone (its
    spectrum for ``"fft"``, its convolution weight for ``"direct"``) is computed when the plan
    is made. Build it with :func:`xcorr.plan`; call it with the search.

    Attributes:
        method (str): the method the plan runs.
        search_shape (tuple): the planned ``(B, C, H, W)``; calls may change ``B`` (a multiple
            of the number of templates) but not ``(C, H, W)``.
    """

    def __init__(self, z, search_shape, mode, padding, stride, dilation, method):
        search_shape = check_search_shape(search_shape)
        check_tensor(z, "z", "Bz Cz h w")
        # A zero-stride view has the search's shape without its memory.
        probe = z.new_empty(()).expand(search_shape)
        self._spec = check_xcorr(probe, z, mode, padding, stride, dilation)
        method = check_choice(method, "method", METHODS)
        if method == "auto":
            method = planner.select(self._spec, grad=torch.is_grad_enabled() and z.requires_grad)
        self.method, self.search_shape, self.z = method, search_shape, z
        self._dtype = z.dtype
        self._run = PREPARE[method](z.float() if z.dtype in HALF else z, self._spec)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Correlate ``x`` (Tensor[B, C, H, W]) with the planned template; equals ``xcorr.xcorr``."""
        check_planned_search(x, self.search_shape)
        s = self._spec
        spec = check_xcorr(x, self.z, s.mode, s.padding, s.stride, s.dilation)
        if spec.batch == 0:
            return empty_result(x, self.z, spec.out_shape)
        if x.dtype in HALF:
            return self._run(x.float(), replace(spec, dtype=torch.float32)).to(x.dtype)
        return self._run(x, spec)

    def __repr__(self) -> str:
        s = self._spec
        extras = "".join(
            f", {name}={value}"
            for name, value, default in (("padding", s.padding, (0, 0)), ("stride", s.stride, (1, 1)),
                                         ("dilation", s.dilation, (1, 1)))
            if value != default
        )
        return (f"Plan(z={tuple(s.z_shape)}, search_shape={self.search_shape}, mode={s.mode!r}"
                f"{extras}, method={self.method!r})")


def plan(
    z: torch.Tensor,
    search_shape: tuple[int, int, int, int],
    mode: str = "naive",
    *,
    padding: int | tuple[int, int] = 0,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    method: str = "auto",
) -> Plan:
    r"""Prepare the correlation of a fixed template with searches of one shape.

    The right tool for tracking, where one template meets a new search region every frame: the
    template's spectrum or convolution weight and the choice of method are computed once.
    ``plan(z, x.shape, ...)(x)`` equals ``xcorr.xcorr(x, z, ...)``. The plan reads ``z``'s values
    now (change ``z`` in place and the plan does not see it); gradients still flow to ``z``.

    Args:
        z (Tensor[Bz, Cz, h, w]): templates, as in :func:`xcorr.xcorr`.
        search_shape (tuple[B, C, H, W]): shape of the searches the plan will see.
        mode, padding, stride, dilation, method: as in :func:`xcorr.xcorr`.

    Returns:
        Plan: call it with a search ``x`` (Tensor[B, C, H, W]) to get Tensor[B, K, H', W'].

    Example:
        >>> z = torch.ones(1, 3, 3, 3)
        >>> p = xcorr.plan(z, (2, 3, 8, 8))
        >>> p(torch.ones(2, 3, 8, 8)).shape
        torch.Size([2, 1, 6, 6])
    """
    return Plan(z, search_shape, mode, padding, stride, dilation, method)
