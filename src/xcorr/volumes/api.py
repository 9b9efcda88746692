"""Cost volumes for optical flow and stereo: two feature maps correlated over a window of displacements.

Every cost volume (local correlation, the stereo volumes, the drop-ins of other packages) is one
validated :class:`~xcorr.volumes.VolumeSpec` and one call of :func:`correlate`, so the planner
chooses the method for all of them (:func:`xcorr.volumes.family.select_volume`), and each
validated call is kept per call signature, as :func:`xcorr.xcorr` keeps its own:

* ``"shifted"``: one shifted product of the maps per displacement. Memory-light, and what
  ``"auto"`` picks while a graph is exported.
* ``"banded"``: tiles of ``f1`` against their haloed ``f2`` tiles as one batched matrix product,
  keeping the band of displacements. Matrix-product speed, the fast method for windows of more
  than a few displacements.
* ``"fused"``: compiled loops over the volume's rows (numba, an optional dependency: ``pip
  install 'xcorr[fast]'``), each product once; eager CPU calls only.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .._checks import check_choice
from .._compute import needs_grad
from ..planning.engine import ENGINE, Bound, signature
from .family import VOLUMES
from .spec import VolumeSpec, check_local_correlation, check_stereo_correlation, check_volume_inputs

__all__ = ["correlate", "local_correlation", "stereo_correlation"]


def correlate(f1: torch.Tensor, f2: torch.Tensor, spec: VolumeSpec, method: str = "auto") -> torch.Tensor:
    r"""The cost volume of ``spec`` (see :class:`~xcorr.volumes.VolumeSpec` for its definition):
    any window of displacements, kernel, stride and grouping, planned like the cost volumes above.

    Args:
        f1 (Tensor[B, C, H, W]): first features, of ``spec``'s shape, dtype and device.
        f2 (Tensor[B, C, H, W]): second features, of ``f1``'s shape, dtype and device.
        spec (VolumeSpec): the problem.
        method (str): ``"auto"`` (the planner decides), ``"shifted"``, ``"banded"`` or
            ``"fused"`` (see above), or the name of a backend registered since.

    Returns:
        Tensor[B, G, Py*Px, Ho, Wo] of ``f1``'s dtype; differentiable in ``f1`` and ``f2``. Half
        precision is computed in float32.

    Example:
        The 3x3 displacements around every pixel, unscaled: ``local_correlation(f, f, 1)``.

        >>> from xcorr.volumes import VolumeSpec
        >>> f = torch.ones(1, 2, 3, 3)
        >>> spec = VolumeSpec(
        ...     shape=(1, 2, 3, 3), groups=1, kernel=(1, 1), kernel_dilation=(1, 1), origin=(0, 0),
        ...     stride=(1, 1), out_size=(3, 3), dy=(-1, 1, 3), dx=(-1, 1, 3), scale=1.0,
        ...     dtype=f.dtype, device=f.device,
        ... )
        >>> out = xcorr.volumes.correlate(f, f, spec)
        >>> out[0, 0, :, 1, 1]
        tensor([2., 2., 2., 2., 2., 2., 2., 2., 2.])
        >>> torch.equal(out[:, 0], xcorr.local_correlation(f, f, 1))
        True
    """
    check_volume_inputs(f1, f2, spec)
    method = check_choice(method, "method", VOLUMES.methods())
    return ENGINE.bind(spec, needs_grad(f1, f2), method)(f1, f2)


def bound(name: str, f1: Any, f2: Any, settings: tuple, check: Callable[[], VolumeSpec]) -> Bound:
    """The bound call of the cost volume ``name`` of ``f1`` and ``f2`` with ``settings``,
    validated by ``check`` once per call signature (see :func:`~xcorr.planning.engine.signature`):
    what every cost-volume API runs."""
    return ENGINE.cached(signature(name, (f1, f2), settings), lambda: ENGINE.bind(check(), needs_grad(f1, f2)))


def local_correlation(
    f1: torch.Tensor,
    f2: torch.Tensor,
    max_displacement: int,
    *,
    displacement_stride: int = 1,
    stride: int = 1,
    kernel_size: int = 1,
    normalize: str = "none",
    layout: str = "flat",
) -> torch.Tensor:
    r"""Correlation of ``f1`` with ``f2`` over a square window of displacements (FlowNetC, PWC-Net, RAFT).

    With ``R = max_displacement // displacement_stride``, ``P = 2R + 1``, ``ds =
    displacement_stride``, ``kr = (k-1) // 2`` and output centres ``Y = y*stride``,
    ``X = x*stride``::

        out[b, i*P + j, y, x] = scale * sum_c sum_{u,v < k} f1[b, c, Y+u-kr, X+v-kr]
                                        * f2[b, c, Y+u-kr + (i-R)*ds, X+v-kr + (j-R)*ds]

    with both maps extended by zeros. Channels are dy-major (row displacement ``i`` is the
    major index), the order of NVIDIA's correlation package and of spatial-correlation-sampler.

    Args:
        f1 (Tensor[B, C, H, W]): first features (the reference frame).
        f2 (Tensor[B, C, H, W]): second features, of ``f1``'s shape.
        max_displacement (int): largest displacement, in pixels, in each direction.
        displacement_stride (int): pixels between displacements.
        stride (int): pixels between output positions: ``H' = ceil(H / stride)``.
        kernel_size (int): side ``k`` of the patches compared at each position.
        normalize (str): ``"none"`` (spatial-correlation-sampler, mmcv), ``"mean"`` (divide by
            ``k*k*C``: FlowNetC, PWC-Net) or ``"sqrt"`` (divide by ``sqrt(C)``: RAFT).
        layout (str): ``"flat"`` (displacements in the channels, ``(B, P*P, H', W')``) or
            ``"grid"`` (``(B, P, P, H', W')``).

    Returns:
        Tensor[B, P*P, H', W'] or Tensor[B, P, P, H', W'] of ``f1``'s dtype; differentiable in
        ``f1`` and ``f2``. float16 and bfloat16 are accumulated in float32.

    Example:
        >>> f1 = torch.zeros(1, 1, 4, 4)
        >>> f1[0, 0, 1, 1] = 1.0
        >>> f2 = torch.zeros(1, 1, 4, 4)
        >>> f2[0, 0, 2, 1] = 1.0  # f1's feature, one row down
        >>> out = xcorr.local_correlation(f1, f2, 1, layout="grid")
        >>> out.shape
        torch.Size([1, 3, 3, 4, 4])
        >>> out[0, :, :, 1, 1]  # at (1, 1): displacement (dy, dx) = (+1, 0)
        tensor([[0., 0., 0.],
                [0., 0., 0.],
                [0., 1., 0.]])
    """
    settings = (max_displacement, displacement_stride, stride, kernel_size, normalize, layout)
    run = bound("local_correlation", f1, f2, settings, lambda: check_local_correlation(f1, f2, *settings))
    out = run(f1, f2).squeeze(1)
    if layout == "grid":
        P = run.spec.dy[2]
        return out.unflatten(1, (P, P))
    return out


def stereo_correlation(
    left: torch.Tensor,
    right: torch.Tensor,
    max_disparity: int,
    *,
    groups: int | None = None,
    normalize: str = "mean",
) -> torch.Tensor:
    r"""The stereo cost volume of a rectified pair: ``left`` against ``right`` shifted by each disparity.

    ``vol[b, d, y, x] = mean_c left[b, c, y, x] * right[b, c, y, x - d]`` for ``d < D``, zero
    where ``x < d`` (DispNetC's correlation layer). With ``groups=G``, the channels are split
    into ``G`` groups of ``C/G`` and each group gives its own volume,
    ``vol[b, g, d, y, x]`` (GwcNet's group-wise correlation).

    Args:
        left (Tensor[B, C, H, W]): left-image features.
        right (Tensor[B, C, H, W]): right-image features, of ``left``'s shape.
        max_disparity (int): number ``D`` of disparities, ``0 ... D-1``.
        groups (int or None): ``None`` for one volume over all channels, or ``G`` (which must
            divide ``C``) for a volume per channel group.
        normalize (str): ``"mean"`` (divide by the channels summed: ``C`` or ``C/G``),
            ``"sqrt"`` (by their square root) or ``"none"``.

    Returns:
        Tensor[B, D, H, W] (``groups=None``) or Tensor[B, G, D, H, W] of ``left``'s dtype;
        differentiable in ``left`` and ``right``.

    Example:
        >>> left = torch.arange(1.0, 5.0).reshape(1, 1, 1, 4)
        >>> right = torch.ones(1, 1, 1, 4)
        >>> xcorr.stereo_correlation(left, right, 3)[0, :, 0]
        tensor([[1., 2., 3., 4.],
                [0., 2., 3., 4.],
                [0., 0., 3., 4.]])
        >>> xcorr.stereo_correlation(torch.ones(2, 8, 5, 6), torch.ones(2, 8, 5, 6), 4, groups=2).shape
        torch.Size([2, 2, 4, 5, 6])
    """
    settings = (max_disparity, groups, normalize)
    out = bound("stereo_correlation", left, right, settings, lambda: check_stereo_correlation(left, right, *settings))(
        left, right
    )
    return out if groups is not None else out.squeeze(1)
