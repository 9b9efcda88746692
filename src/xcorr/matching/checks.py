"""The checks of template matching and peak finding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .._checks import (
    _type_name,
    check_channels,
    check_choice,
    check_positive_int,
    check_same_kind,
    check_tensor,
)

MATCH_METHODS = ("sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed")


_ARRAY_DTYPES = ("uint8", "float32", "float64")


_MASK_ARRAY_DTYPES = ("bool", "uint8", "float32", "float64")


class Layout(NamedTuple):
    """How a numpy array is read (:func:`array_layout`): its spatial axes' sizes ((H, W) or
    (D, H, W)), and its channel axis (None: grey, one channel)."""

    spatial: tuple[int, ...]
    axis: int | None

    def channels(self, shape: Sequence[int]) -> int:
        return 1 if self.axis is None else int(shape[self.axis])


def check_channel_axis(channel_axis: Any) -> int | None:
    """``channel_axis`` is an int (not a bool) or None."""
    if channel_axis is not None and (not isinstance(channel_axis, int) or isinstance(channel_axis, bool)):
        raise TypeError(f"channel_axis must be an int or None, got {_type_name(channel_axis)} {channel_axis!r}")
    return channel_axis


def array_layout(a: np.ndarray, name: str, channel_axis: int | None) -> Layout:
    """The reading of a numpy image, template or mask ``a`` under ``channel_axis``.

    ``-1`` (the default) is OpenCV's: 2-D grey (H, W), 3-D colour (H, W, C), 4-D a colour volume
    (D, H, W, C). ``None``: no channel axis, 2-D grey (H, W) or 3-D a grey volume (D, H, W), as
    scikit-image reads them. Another int: the channels at that axis of a 3-D image or a 4-D volume.
    """
    if channel_axis is None:
        if a.ndim not in (2, 3):
            raise ValueError(f"with channel_axis=None, {name} must be 2-D (H, W) or 3-D (D, H, W), got shape {a.shape}")
        return Layout(tuple(a.shape), None)
    if a.ndim == 2 and channel_axis == -1:
        return Layout(tuple(a.shape), None)
    if a.ndim not in (3, 4):
        if channel_axis == -1:
            raise ValueError(
                f"{name} must be 2-D (H, W), 3-D (H, W, C) or 4-D (D, H, W, C) (or pass channel_axis), "
                f"got shape {a.shape}"
            )
        raise ValueError(
            f"with channel_axis={channel_axis}, {name} must be 3-D (an image) or 4-D (a volume) with its channels "
            f"at that axis, got shape {a.shape}"
        )
    if not -a.ndim <= channel_axis < a.ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for {name} of shape {a.shape}")
    axis = channel_axis % a.ndim
    check_channels(a.shape, name, dim=axis)
    return Layout(tuple(n for i, n in enumerate(a.shape) if i != axis), axis)


def check_match(image: Any, template: Any, method: Any, mask: Any, channel_axis: Any = -1) -> bool:
    """Validate the arguments of :func:`xcorr.match_template`; return whether they are numpy arrays.

    numpy inputs follow ``cv2.matchTemplate``: image (H, W) or (H, W, C), template (h, w) or
    (h, w, C) of the same dtype; volumes under ``channel_axis`` (:func:`array_layout`). Tensors are
    batched: image (N, C, H, W), template (Nt, C, h, w), or (N, C, D, H, W) and (Nt, C, d, h, w).
    """
    check_choice(method, "method", MATCH_METHODS)
    channel_axis = check_channel_axis(channel_axis)
    arrays = isinstance(image, np.ndarray), isinstance(template, np.ndarray)
    tensors = isinstance(image, torch.Tensor), isinstance(template, torch.Tensor)
    if all(arrays):
        _check_match_arrays(image, template, mask, channel_axis)
        return True
    if all(tensors):
        if channel_axis != -1:
            raise ValueError(
                "channel_axis applies to numpy arrays only: tensors are (N, C, H, W) or (N, C, D, H, W), "
                f"channels at axis 1; leave channel_axis at -1, got channel_axis={channel_axis!r}"
            )
        _check_match_tensors(image, template, mask)
        return False
    raise TypeError(
        "image and template must both be numpy arrays (H, W[, C]) or both torch tensors (N, C, H, W); "
        f"got image {_type_name(image)} and template {_type_name(template)}"
    )


def check_match_template(template: Any, method: Any, mask: Any, channel_axis: Any = -1) -> bool:
    """Validate the arguments of :func:`xcorr.match_plan` by :func:`check_match`'s rules that
    need no image; return whether the template is a numpy array."""
    if isinstance(template, np.ndarray):
        if template.ndim not in (2, 3) and channel_axis == -1 and template.ndim != 4:
            raise ValueError(
                f"template must be 2-D (h, w) or 3-D (h, w, C) (4-D (d, h, w, C) for volumes), got shape {template.shape}"
            )
        array_layout(template, "template", check_channel_axis(channel_axis))
    elif isinstance(template, torch.Tensor):
        check_tensor(template, "template", "Nt C d h w" if template.dim() == 5 else "Nt C h w")
        check_channels(template.shape, "template")
    else:
        raise TypeError(
            f"template must be a numpy array (h, w[, C]) or a torch tensor (Nt, C, h, w); got {_type_name(template)}"
        )
    # The template is an image it fits in: the remaining rules (dtype, channels, mask) are the same.
    return check_match(template, template, method, mask, channel_axis)


def mask_layout(mask: np.ndarray, template: Layout, channel_axis: int | None) -> Layout:
    """The reading of a numpy mask for a template of ``template``'s layout: the template's
    spatial size, without a channel axis or with one where ``channel_axis`` puts it (1 or C)."""
    if mask.ndim == len(template.spatial):
        return Layout(tuple(mask.shape), None)
    if channel_axis is None or mask.ndim != len(template.spatial) + 1:
        return Layout((), None)  # fits no template
    axis = channel_axis % mask.ndim
    return Layout(tuple(n for i, n in enumerate(mask.shape) if i != axis), axis)


def _check_match_arrays(image: Any, template: Any, mask: Any, channel_axis: int | None) -> None:
    layouts = []
    for name, a in (("image", image), ("template", template)):
        layouts.append(array_layout(a, name, channel_axis))
        if a.dtype.name not in _ARRAY_DTYPES:
            raise TypeError(f"{name} must have dtype {', '.join(_ARRAY_DTYPES)}; got {a.dtype.name}")
    if image.dtype != template.dtype:
        raise TypeError(
            f"image and template must have the same dtype, got image {image.dtype.name} and template {template.dtype.name}"
        )
    (li, lt) = layouts
    if len(li.spatial) != len(lt.spatial):
        kinds = ["a volume" if len(layout.spatial) == 3 else "an image" for layout in layouts]
        raise ValueError(
            f"image and template must both be images or both volumes; under channel_axis={channel_axis!r} "
            f"image {image.shape} is {kinds[0]} and template {template.shape} {kinds[1]}"
        )
    channels = [li.channels(image.shape), lt.channels(template.shape)]
    if channels[0] != channels[1]:
        raise ValueError(
            f"image and template must have the same number of channels; got image {image.shape} "
            f"({_count(channels[0], 'channel')}) and template {template.shape} ({_count(channels[1], 'channel')})"
        )
    _check_fits(li.spatial, lt.spatial, image.shape, template.shape)
    if mask is None:
        return
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array like the template, got {_type_name(mask)}")
    if mask.dtype.name not in _MASK_ARRAY_DTYPES:
        raise TypeError(f"mask must have dtype {', '.join(_MASK_ARRAY_DTYPES)}; got {mask.dtype.name}")
    lm = mask_layout(mask, lt, channel_axis)
    if lm.spatial != lt.spatial or lm.channels(mask.shape) not in (1, channels[1]):
        names = "d, h, w" if len(lt.spatial) == 3 else "h, w"
        at = "C" if channel_axis == -1 else f"C at axis {channel_axis}"
        forms = f"({names})" if channel_axis is None else f"({names}) or ({names}, {at if channels[1] > 1 else 1})"
        if channel_axis not in (None, -1):
            forms = f"({names}) or with {'1 or C channels' if channels[1] > 1 else '1 channel'} at axis {channel_axis}"
        raise ValueError(
            f"mask must have the template's size with {_one_or(channels[1])} "
            f"{'channel' if channels[1] == 1 else 'channels'}, {forms}; "
            f"got mask {mask.shape} for template {template.shape}"
        )


def _check_match_tensors(image: torch.Tensor, template: torch.Tensor, mask: Any) -> None:
    volume = isinstance(image, torch.Tensor) and image.dim() == 5
    check_tensor(image, "image", "N C D H W" if volume else "N C H W")
    check_tensor(template, "template", "Nt C d h w" if volume else "Nt C h w")
    check_same_kind(image, template, ("image", "template"))
    check_channels(image.shape, "image")
    check_channels(template.shape, "template")
    N, C, *spatial = image.shape
    Nt, Ct, *size = template.shape
    shapes = f"image {tuple(image.shape)} and template {tuple(template.shape)}"
    if C != Ct:
        raise ValueError(f"image and template must have the same number of channels; got {shapes}")
    if Nt == 0 or N % Nt:
        raise ValueError(
            f"image's batch N must be a multiple of the number of templates Nt >= 1 (template i serves "
            f"images i*k ... i*k+k-1); got {shapes}"
        )
    _check_fits(spatial, size, tuple(image.shape), tuple(template.shape))
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor like the template, got {_type_name(mask)}")
    if not (mask.dtype.is_floating_point or mask.dtype in (torch.bool, torch.uint8)):
        raise TypeError(f"mask must be floating-point, bool or uint8, got {mask.dtype}")
    if mask.device != template.device:
        raise ValueError(f"mask must be on the template's device {template.device}, got {mask.device}")
    nd = len(size)
    ok = nd <= mask.dim() <= nd + 2 and list(mask.shape[-nd:]) == size
    if ok and mask.dim() > nd:
        ok = mask.shape[-nd - 1] in (1, C) and (mask.dim() == nd + 1 or mask.shape[0] in (1, Nt))
    if not ok:
        names = "d, h, w" if volume else "h, w"
        raise ValueError(
            f"mask must be ({names}), ({_one_or(C)}, {names}) or ({_one_or(Nt)}, {_one_or(C)}, {names}) with the "
            f"template's ({names}) = ({', '.join(map(str, size))}); "
            f"got mask {tuple(mask.shape)} for template {tuple(template.shape)}"
        )


def _one_or(n: int) -> str:
    """The sizes a mask's dimension may have where the template's has ``n``: 1 (broadcast) or ``n``."""
    return "1" if n == 1 else f"1 or {n}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_fits(image_hw: Sequence[int], template_hw: Sequence[int], image_shape: Any, template_shape: Any) -> None:
    shapes = f"image {tuple(image_shape)}, template {tuple(template_shape)}"
    if min(template_hw) == 0:
        raise ValueError(f"template must not be empty; got {shapes}")
    if any(t > n for t, n in zip(template_hw, image_hw)):
        raise ValueError(
            f"template ({'x'.join(map(str, template_hw))}) must not be larger than the image "
            f"({'x'.join(map(str, image_hw))}); got {shapes}"
        )


def check_mask_weights(mask: torch.Tensor, ccoeff: bool) -> None:
    """Masks weigh template pixels: non-negative, and not all zero (per channel for ``ccoeff``)."""
    if bool((mask < 0).any()):
        raise ValueError(f"mask must be non-negative, got a minimum of {mask.min().item():g}")
    totals = mask.flatten(2).sum(-1)
    if bool((totals == 0).any() if ccoeff else (totals.sum(-1) == 0).any()):
        where = "in every channel " if ccoeff else ""
        raise ValueError(f"mask must have a non-zero weight {where}(all zero: nothing to match)")


def check_find_peaks(scores: Any, k: Any, min_distance: Any, largest: Any) -> None:
    """Validate the arguments of :func:`xcorr.find_peaks`."""
    if not isinstance(scores, (np.ndarray, torch.Tensor)):
        raise TypeError(f"scores must be a numpy array or torch tensor, got {_type_name(scores)}")
    shape = tuple(scores.shape)
    if not (len(shape) in (2, 3) or (len(shape) in (4, 5) and shape[1] == 1)):
        raise ValueError(
            f"scores must be 2-D (H', W') or 4-D (N, 1, H', W'), or for volumes 3-D (D', H', W') or "
            f"5-D (N, 1, D', H', W'), got shape {shape}"
        )
    check_positive_int(k, "k")
    if min_distance is not None:
        check_positive_int(min_distance, "min_distance")
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {_type_name(largest)}")
