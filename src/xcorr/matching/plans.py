"""Match plans: one template matched against many images (a video's frames, a dataset)."""

from __future__ import annotations

from typing import Optional, Union, cast

import numpy as np
import torch

from .._compute import HALF
from ..correlation.plans import Plan
from .api import _array_tensor, _from_arrays, _mask_tensor
from .checks import array_layout, check_match, check_match_template
from .dense import _Template
from .scores import _scores

Array = Union[np.ndarray, torch.Tensor]


class MatchPlan:
    """Template matching with a fixed template, prepared once: the template's conversion, its
    centring and norms, OpenCV's flat-template rule, and per image size the method of the
    correlation and the template's spectrum or weight (an :func:`xcorr.plan`). Build it with
    :func:`xcorr.match_plan`; call it with an image.

    ``match_plan(template, method, mask=mask)(image)`` equals ``match_template(image, template,
    method, mask=mask)``. The plan reads the template's values now. Its scores are differentiable
    in the image, not in the template (call :func:`xcorr.match_template` for that). With a mask,
    the plan saves the validation and conversion only.

    Attributes:
        method (str): the score, as in :func:`xcorr.match_template`.
        arrays (bool): whether the plan takes numpy images (a numpy template) or tensors.
    """

    def __init__(self, template: Array, method: str, mask: Array | None, channel_axis: int | None = -1) -> None:
        self.arrays = check_match_template(template, method, mask, channel_axis)
        self.method, self.template, self.mask, self.channel_axis = method, template, mask, channel_axis
        if self.arrays:
            _, z, m = _from_arrays(*(cast(np.ndarray, template),) * 2, cast(Optional[np.ndarray], mask), channel_axis)
        else:
            z = cast(torch.Tensor, template).detach()
            m = None if mask is None else _mask_tensor(cast(torch.Tensor, mask), z.dtype, z.dim())
        self._z, self._m = z, m
        self._part = None if m is not None or z.dtype in HALF else _Template.of(z, method)
        self._plans: dict[tuple, Plan] = {}  # (C, H, W, dtype, device) of the images -> numerator plan

    def __call__(self, image: Array) -> Array:
        """The scores of ``image`` (numpy (H, W[, C]) or Tensor[N, C, H, W], as the template; volumes
        likewise)."""
        check_match(image, self.template, self.method, self.mask, self.channel_axis)
        if self.arrays:
            axis = array_layout(cast(np.ndarray, image), "image", self.channel_axis).axis
            x = _array_tensor(cast(np.ndarray, image), self._z.dtype, axis)
            return self._scores(x)[0, 0].to(torch.float32).numpy()
        return self._scores(cast(torch.Tensor, image))

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        if self._part is None or x.dtype != self._z.dtype:
            return _scores(x, self._z, self.method, self._m)
        if x.dim() == 5:  # volumes: the template's part is kept; the numerator is xcorr's bound call
            return _scores(x, self._z, self.method, None, self._part)
        key = (*x.shape[1:], x.dtype, x.device)
        plan = self._plans.get(key)
        if plan is None:
            B, C, H, W = x.shape
            plan = self._plans[key] = Plan(self._part.zs, (B, C, H, W))
        return _scores(x, self._z, self.method, None, self._part, lambda xs: (plan(xs), plan.method))

    def __repr__(self) -> str:
        shape = self.template.shape
        return f"MatchPlan(template {tuple(shape)}, method={self.method!r}, mask={self.mask is not None})"


def match_plan(
    template: Array, method: str = "ccoeff_normed", *, mask: Array | None = None, channel_axis: int | None = -1
) -> MatchPlan:
    """Prepare the matching of one template against many images.

    For a template met by image after image (the frames of a video, the pictures of a dataset):
    what depends on the template alone is done once, and per image size, the correlation's method
    and the template's spectrum. ``match_plan(template, method, mask=mask)(image)`` equals
    :func:`xcorr.match_template` ``(image, template, method, mask=mask)``.

    Args:
        template, method, mask, channel_axis: as in :func:`xcorr.match_template`; a numpy
            template takes numpy images of its dtype, channels and layout, a tensor template tensors.

    Returns:
        MatchPlan: call it with an image to get its scores.

    Example:
        >>> frames = np.random.default_rng(0).random((3, 48, 64), dtype=np.float32)
        >>> plan = xcorr.match_plan(frames[0, 10:26, 20:36].copy())
        >>> [xcorr.find_peaks(plan(frame))[0][:2] for frame in frames][0]
        (20, 10)
    """
    return MatchPlan(template, method, mask, channel_axis)
