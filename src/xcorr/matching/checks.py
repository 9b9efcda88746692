"""The checks of template matching and peak finding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import (
    _type_name,
    check_channels,
    check_choice,
    check_finite,
    check_positive_int,
    check_same_kind,
    check_tensor,
)

MATCH_METHODS = ("sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed")


_ARRAY_DTYPES = ("uint8", "float32", "float64")


_MASK_ARRAY_DTYPES = ("bool", "uint8", "float32", "float64")


def check_match(image: Any, template: Any, method: Any, mask: Any) -> bool:
    """Validate the arguments of :func:`xcorr.match_template`; return whether they are numpy arrays.

    numpy inputs follow ``cv2.matchTemplate``: image (H, W) or (H, W, C), template (h, w) or
    (h, w, C) of the same dtype. Tensors are batched: image (N, C, H, W), template (Nt, C, h, w).
    """
    check_choice(method, "method", MATCH_METHODS)
    arrays = isinstance(image, np.ndarray), isinstance(template, np.ndarray)
    tensors = isinstance(image, torch.Tensor), isinstance(template, torch.Tensor)
    if all(arrays):
        _check_match_arrays(image, template, mask)
        return True
    if all(tensors):
        _check_match_tensors(image, template, mask)
        return False
    raise TypeError(
        "image and template must both be numpy arrays (H, W[, C]) or both torch tensors (N, C, H, W); "
        f"got image {_type_name(image)} and template {_type_name(template)}"
    )


def check_match_template(template: Any, method: Any, mask: Any) -> bool:
    """Validate the arguments of :func:`xcorr.match_plan` by :func:`check_match`'s rules that
    need no image; return whether the template is a numpy array."""
    if isinstance(template, np.ndarray):
        if template.ndim not in (2, 3):
            raise ValueError(f"template must be 2-D (h, w) or 3-D (h, w, C), got shape {template.shape}")
        if template.ndim == 3:
            check_channels(template.shape, "template", dim=2)
    elif isinstance(template, torch.Tensor):
        check_tensor(template, "template", "Nt C h w")
        check_channels(template.shape, "template")
    else:
        raise TypeError(
            f"template must be a numpy array (h, w[, C]) or a torch tensor (Nt, C, h, w); got {_type_name(template)}"
        )
    # The template is an image it fits in: the remaining rules (dtype, channels, mask) are the same.
    return check_match(template, template, method, mask)


def _check_match_arrays(image: Any, template: Any, mask: Any) -> None:
    for name, a in (("image", image), ("template", template)):
        if a.ndim not in (2, 3):
            raise ValueError(f"{name} must be 2-D (H, W) or 3-D (H, W, C), got shape {a.shape}")
        if a.dtype.name not in _ARRAY_DTYPES:
            raise TypeError(f"{name} must have dtype {', '.join(_ARRAY_DTYPES)}; got {a.dtype.name}")
    if image.dtype != template.dtype:
        raise TypeError(
            f"image and template must have the same dtype, got image {image.dtype.name} and template {template.dtype.name}"
        )
    for name, a in (("image", image), ("template", template)):
        if a.ndim == 3:
            check_channels(a.shape, name, dim=2)
    channels = [a.shape[2] if a.ndim == 3 else 1 for a in (image, template)]
    if channels[0] != channels[1]:
        raise ValueError(
            f"image and template must have the same number of channels; got image {image.shape} "
            f"({_count(channels[0], 'channel')}) and template {template.shape} ({_count(channels[1], 'channel')})"
        )
    _check_fits(image.shape[:2], template.shape[:2], image.shape, template.shape)
    if mask is None:
        return
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array like the template, got {_type_name(mask)}")
    if mask.dtype.name not in _MASK_ARRAY_DTYPES:
        raise TypeError(f"mask must have dtype {', '.join(_MASK_ARRAY_DTYPES)}; got {mask.dtype.name}")
    mask_channels = mask.shape[2] if mask.ndim == 3 else 1
    if mask.ndim not in (2, 3) or mask.shape[:2] != template.shape[:2] or mask_channels not in (1, channels[1]):
        raise ValueError(
            f"mask must have the template's size with {_one_or(channels[1])} "
            f"{'channel, (h, w) or (h, w, 1)' if channels[1] == 1 else 'channels, (h, w) or (h, w, C)'}; "
            f"got mask {mask.shape} for template {template.shape}"
        )


def _check_match_tensors(image: torch.Tensor, template: torch.Tensor, mask: Any) -> None:
    check_tensor(image, "image", "N C H W")
    check_tensor(template, "template", "Nt C h w")
    check_same_kind(image, template, ("image", "template"))
    check_channels(image.shape, "image")
    check_channels(template.shape, "template")
    N, C, H, W = image.shape
    Nt, Ct, h, w = template.shape
    shapes = f"image {tuple(image.shape)} and template {tuple(template.shape)}"
    if C != Ct:
        raise ValueError(f"image and template must have the same number of channels; got {shapes}")
    if Nt == 0 or N % Nt:
        raise ValueError(
            f"image's batch N must be a multiple of the number of templates Nt >= 1 (template i serves "
            f"images i*k ... i*k+k-1); got {shapes}"
        )
    _check_fits((H, W), (h, w), tuple(image.shape), tuple(template.shape))
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor like the template, got {_type_name(mask)}")
    if not (mask.dtype.is_floating_point or mask.dtype in (torch.bool, torch.uint8)):
        raise TypeError(f"mask must be floating-point, bool or uint8, got {mask.dtype}")
    if mask.device != template.device:
        raise ValueError(f"mask must be on the template's device {template.device}, got {mask.device}")
    ok = 2 <= mask.dim() <= 4 and tuple(mask.shape[-2:]) == (h, w)
    if ok and mask.dim() >= 3:
        ok = mask.shape[-3] in (1, C) and (mask.dim() == 3 or mask.shape[0] in (1, Nt))
    if not ok:
        raise ValueError(
            f"mask must be (h, w), ({_one_or(C)}, h, w) or ({_one_or(Nt)}, {_one_or(C)}, h, w) with the "
            f"template's (h, w) = ({h}, {w}); "
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
    if template_hw[0] > image_hw[0] or template_hw[1] > image_hw[1]:
        raise ValueError(
            f"template ({template_hw[0]}x{template_hw[1]}) must not be larger than the image "
            f"({image_hw[0]}x{image_hw[1]}); got {shapes}"
        )


def check_mask_weights(mask: torch.Tensor, ccoeff: bool) -> None:
    """Masks weigh template pixels: non-negative, and not all zero (per channel for ``ccoeff``)."""
    if bool((mask < 0).any()):
        raise ValueError(f"mask must be non-negative, got a minimum of {mask.min().item():g}")
    totals = mask.sum((-2, -1))
    if bool((totals == 0).any() if ccoeff else (totals.sum(-1) == 0).any()):
        where = "in every channel " if ccoeff else ""
        raise ValueError(f"mask must have a non-zero weight {where}(all zero: nothing to match)")


def check_find_peaks(scores: Any, k: Any, min_distance: Any, largest: Any) -> None:
    """Validate the arguments of :func:`xcorr.find_peaks`."""
    if not isinstance(scores, (np.ndarray, torch.Tensor)):
        raise TypeError(f"scores must be a numpy array or torch tensor, got {_type_name(scores)}")
    shape = tuple(scores.shape)
    if not (len(shape) == 2 or (len(shape) == 4 and shape[1] == 1)):
        raise ValueError(f"scores must be 2-D (H', W') or 4-D (N, 1, H', W'), got shape {shape}")
    check_positive_int(k, "k")
    if min_distance is not None:
        check_positive_int(min_distance, "min_distance")
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {_type_name(largest)}")


def check_find_matches(
    image: Any, templates: Any, method: Any, threshold: Any, max_overlap: Any, scales: Any, mask: Any, k: Any
) -> bool:
    """Validate the arguments of :func:`xcorr.find_matches`; return whether they are numpy arrays.

    Each template (and its mask) follows :func:`check_match`'s rules against the image, except
    that it may be larger than the image at some scales (those are skipped), not at all of them.
    """
    check_choice(method, "method", MATCH_METHODS)
    check_finite(threshold, "threshold")
    overlap = check_finite(max_overlap, "max_overlap")
    if not 0 <= overlap <= 1:
        raise ValueError(f"max_overlap must be in [0, 1] (an intersection over union), got {max_overlap!r}")
    if k is not None:
        check_positive_int(k, "k")
    factors = _check_scales(scales)
    many = isinstance(templates, (list, tuple))
    items: list[Any] = list(templates) if many else [templates]
    if not items:
        raise ValueError("templates must hold at least one template, got an empty sequence")
    if mask is None:
        masks = [None] * len(items)
    elif many:
        if not isinstance(mask, (list, tuple)) or len(mask) != len(items):
            raise TypeError(
                f"mask must be a sequence of {len(items)} masks (or None), one per template, for "
                f"{len(items)} templates; got {_type_name(mask)}"
                + (f" of {len(mask)}" if isinstance(mask, (list, tuple)) else "")
            )
        masks = list(mask)
    else:
        masks = [mask]
    arrays = isinstance(image, np.ndarray)
    if not arrays:
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"image must be a numpy array (H, W[, C]) or a torch tensor (C, H, W) or (N, C, H, W); "
                f"got {_type_name(image)}"
            )
        if image.dim() not in (3, 4):
            raise ValueError(f"image must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(image.shape)}")
    x = image if arrays or image.dim() == 4 else image.unsqueeze(0)
    check_match(x, _corner(x, arrays), method, None)  # the image's own rules
    H, W = (x.shape[0], x.shape[1]) if arrays else (x.shape[2], x.shape[3])
    fits = False
    for i, (template, m) in enumerate(zip(items, masks)):
        name = f"templates[{i}]" if many else "templates"
        if arrays != isinstance(template, np.ndarray) or not isinstance(template, (np.ndarray, torch.Tensor)):
            kind = "a numpy array (h, w[, C]) like the image" if arrays else "a torch tensor (C, h, w) or (1, C, h, w)"
            raise TypeError(f"{name} must be {kind}, got {_type_name(template)}")
        t: Any = template
        if not arrays:
            if not (t.dim() == 3 or (t.dim() == 4 and t.shape[0] == 1)):
                raise ValueError(f"{name} must be 3-D (C, h, w) or 4-D (1, C, h, w), got shape {tuple(t.shape)}")
            t = t if t.dim() == 4 else t.unsqueeze(0)
        h, w = (t.shape[0], t.shape[1]) if arrays else (t.shape[2], t.shape[3])
        try:
            check_match(t, t, method, m)  # the template's own rules and its mask's
            # The pairing's rules (dtype, device, channels); the size is the scales' to decide.
            check_match(x, t if h <= H and w <= W else _corner(t, arrays), method, None)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name}: {error}") from None
        for s in factors:
            size = (round(h * s), round(w * s))
            if min(size) < 1:
                raise ValueError(f"scale {s!r} makes {name} ({h}x{w}) smaller than one pixel: {size[0]}x{size[1]}")
            fits = fits or (size[0] <= H and size[1] <= W)
    if not fits:
        raise ValueError(
            f"no template fits the image ({H}x{W}) at any scale of {factors}: every template is larger than the image"
        )
    return arrays


def _check_scales(scales: Any) -> list[float]:
    if scales is None:
        return [1.0]
    if not isinstance(scales, (list, tuple)):
        raise TypeError(
            f"scales must be a sequence of positive numbers such as (0.8, 1.0, 1.25), got {_type_name(scales)}"
        )
    if not scales:
        raise ValueError("scales must hold at least one scale, got an empty sequence")
    factors = [check_finite(s, f"scales[{i}]") for i, s in enumerate(scales)]
    for i, s in enumerate(factors):
        if s <= 0:
            raise ValueError(f"scales[{i}] must be positive, got {s!r}")
    return factors


def _corner(a: Any, arrays: bool) -> Any:
    """The top-left pixel of ``a`` (its dtype, channels and device; numpy (H, W[, C]) or a tensor
    (N, C, H, W)): an image's or a template's own rules, checked without a size's."""
    if arrays:
        return a[:1, :1]
    return a[:1, :, :1, :1] if a.shape[0] else a.new_zeros(1, a.shape[1], 1, 1)
