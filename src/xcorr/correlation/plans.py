"""Template plans: one template against a new search region every frame (tracking)."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_tensor
from .._compute import compute_dtype, compute_spec, computed, needs_grad
from .._tracing import tracing
from .api import resolve
from .family import CORRELATION
from .spec import check_planned_search, check_search_shape, check_xcorr


class Plan:
    """A correlation with a fixed template, validated and bound once: what depends on ``z`` alone
    (its spectrum for ``"fft"``, its convolution weight for ``"direct"``, the tap index for
    ``"gather"``) is computed when the plan is made. Build it with :func:`xcorr.plan`; call it with
    the search. A search of a new type, shape, dtype or device is validated on its first call only.

    Attributes:
        method (str): the method the plan runs (chosen once: later changes of the planning engine's state do not move it).
        search_shape (tuple): the planned ``(B, C, H, W)``; calls may change ``B`` (a multiple
            of the number of templates) but not ``(C, H, W)``.
    """

    def __init__(
        self,
        z: torch.Tensor,
        search_shape: tuple[int, int, int, int],
        mode: str = "naive",
        padding: int | tuple[int, int] = 0,
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        method: str = "auto",
    ) -> None:
        search_shape = check_search_shape(search_shape)
        check_tensor(z, "z", "Bz Cz h w")
        # A zero-stride view has the search's shape without its memory.
        self._spec = check_xcorr(z.new_empty(()).expand(search_shape), z, mode, padding, stride, dilation)
        self.method = resolve(self._spec, method, grad=needs_grad(z))
        self.search_shape, self.z = search_shape, z
        self._run = CORRELATION.backends[self.method].prepare(z.to(compute_dtype(z.dtype)), compute_spec(self._spec))
        self._shapes: dict[tuple, tuple[int, int, int, int]] = {}  # validated searches -> output shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Correlate ``x`` (Tensor[B, C, H, W]) with the planned template; equals ``xcorr.xcorr``."""
        seen = (type(x), x.shape, x.dtype, x.device) if isinstance(x, torch.Tensor) and not tracing() else None
        shape = self._shapes.get(seen) if seen is not None else None
        if shape is None:
            shape = self._check(x)
            if seen is not None:
                self._shapes[seen] = shape
        return computed(self._run, shape, x, attached=(self.z,))

    def _check(self, x: Any) -> tuple[int, int, int, int]:
        """The output shape for search ``x``, which must be as planned in (C, H, W)."""
        return check_planned_search(x, self.z, self._spec).out_shape

    def __repr__(self) -> str:
        s = self._spec
        extras = "".join(
            f", {name}={value}"
            for name, value, default in (
                ("padding", s.padding, (0, 0)),
                ("stride", s.stride, (1, 1)),
                ("dilation", s.dilation, (1, 1)),
            )
            if value != default
        )
        return (
            f"Plan(z={tuple(s.z_shape)}, search_shape={self.search_shape}, mode={s.mode!r}"
            f"{extras}, method={self.method!r})"
        )


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
