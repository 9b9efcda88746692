"""The one place that validates inputs and words the errors.

Every message names the argument, what it got and the rule it broke, so that a mistake is
reported in the caller's terms rather than as an error from deep inside PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._spec import Pair, Spec, VolumeSpec

MODES = ("naive", "depthwise", "upchannel")


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise, listing them."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {_listing(choices)}; got {_type_name(value)}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid values are {_listing(choices)}")
    return value


def _listing(choices: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in choices)


def check_pair(value: Any, name: str, minimum: int) -> Pair:
    """An int or a pair of ints, each at least ``minimum``, as a pair (like ``F.conv2d``)."""
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        rule = "non-negative" if minimum == 0 else f"at least {minimum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return int(items[0]), int(items[1])


def check_tensor(t: Any, name: str, dims: str) -> torch.Tensor:
    """A floating-point tensor with one dimension per name in ``dims`` (e.g. ``"B C H W"``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({', '.join(dims.split())}), got {_type_name(t)}")
    expected = dims.split()
    if t.dim() != len(expected):
        raise ValueError(f"{name} must be {len(expected)}-D ({', '.join(expected)}), got shape {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def check_same_kind(x: torch.Tensor, z: torch.Tensor, names: tuple[str, str] = ("x", "z")) -> None:
    """The two tensors share a dtype and a device; ``names`` are the arguments' names."""
    a, b = names
    if x.dtype != z.dtype:
        raise TypeError(f"{a} and {b} must have the same dtype, got {a} {x.dtype} and {b} {z.dtype}")
    if x.device != z.device:
        raise ValueError(f"{a} and {b} must be on the same device, got {a} on {x.device} and {b} on {z.device}")


def _check_templates(xs: tuple[int, ...], zs: tuple[int, ...]) -> None:
    """Template i serves search items i*k ... i*k+k-1, and templates are not empty."""
    B, Bz, (h, w) = xs[0], zs[0], zs[-2:]
    if Bz == 0 and B != 0:
        raise ValueError(f"z has no templates (shape {zs}) but x has {B} search items")
    if Bz and B % Bz:
        raise ValueError(
            f"x's batch must be a multiple of z's batch (template i serves search items i*k ... i*k+k-1); "
            f"got x {xs} (B={B}) and z {zs} (Bz={Bz})"
        )
    if h == 0 or w == 0:
        raise ValueError(f"z must have a non-empty template, got shape {zs}")


def plain(value: Any) -> bool:
    """An int or a pair of ints, by exact type: ``True`` and ``1.0`` hash like ``1`` but are refused,
    so only plain values may key a cache of validated calls."""
    kind = type(value)
    return kind is int or (kind is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int)


def check_xcorr(x: Any, z: Any, mode: Any, padding: Any, stride: Any, dilation: Any) -> Spec:
    check_tensor(x, "x", "B C H W")
    check_tensor(z, "z", "Bz Cz h w")
    check_same_kind(x, z)
    mode = check_choice(mode, "mode", MODES)
    spec = Spec(
        mode=mode,
        x_shape=tuple(x.shape),
        z_shape=tuple(z.shape),
        padding=check_pair(padding, "padding", 0),
        stride=check_pair(stride, "stride", 1),
        dilation=check_pair(dilation, "dilation", 1),
        dtype=x.dtype,
        device=x.device,
    )
    xs, zs = spec.x_shape, spec.z_shape
    C, Cz = xs[1], zs[1]
    if mode == "upchannel":
        if C == 0 or Cz % C or Cz == 0:
            raise ValueError(
                f"mode 'upchannel' needs z's channels to be a positive multiple K*C of x's channels C; "
                f"got x {xs} (C={C}) and z {zs} (Cz={Cz})"
            )
    elif Cz != C:
        raise ValueError(
            f"mode {mode!r} needs z to have as many channels as x; got x {xs} (C={C}) and z {zs} (Cz={Cz})"
        )
    _check_templates(xs, zs)
    (Hp, Wp), (hd, wd) = spec.padded_search, spec.dilated_template
    if hd > Hp or wd > Wp:
        raise ValueError(
            f"the template must fit in the padded search: z {zs} with dilation {spec.dilation} spans "
            f"{hd}x{wd}, but x {xs} with padding {spec.padding} is {Hp}x{Wp}"
        )
    return spec


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
    channels = [a.shape[2] if a.ndim == 3 else 1 for a in (image, template)]
    if channels[0] != channels[1] or channels[0] == 0:
        raise ValueError(
            f"image and template must have the same (non-zero) number of channels; got image {image.shape} "
            f"({channels[0]} channels) and template {template.shape} ({channels[1]} channels)"
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
            f"mask must have the template's size with 1 or {channels[1]} channels, (h, w) or (h, w, C); "
            f"got mask {mask.shape} for template {template.shape}"
        )


def _check_match_tensors(image: torch.Tensor, template: torch.Tensor, mask: Any) -> None:
    check_tensor(image, "image", "N C H W")
    check_tensor(template, "template", "Nt C h w")
    check_same_kind(image, template, ("image", "template"))
    N, C, H, W = image.shape
    Nt, Ct, h, w = template.shape
    shapes = f"image {tuple(image.shape)} and template {tuple(template.shape)}"
    if C != Ct or C == 0:
        raise ValueError(f"image and template must have the same (non-zero) number of channels; got {shapes}")
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
            f"mask must be (h, w), (1 or C, h, w) or (1 or Nt, 1 or C, h, w) with the template's h, w; "
            f"got mask {tuple(mask.shape)} for template {tuple(template.shape)}"
        )


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
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {_type_name(k)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if min_distance is not None:
        if isinstance(min_distance, bool) or not isinstance(min_distance, int):
            raise TypeError(f"min_distance must be an int or None, got {_type_name(min_distance)}")
        if min_distance < 1:
            raise ValueError(f"min_distance must be at least 1, got {min_distance}")
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {_type_name(largest)}")


def check_pixelwise(x: Any, z: Any) -> None:
    """Validate the arguments of :func:`xcorr.pixelwise`."""
    check_tensor(x, "x", "B C H W")
    check_tensor(z, "z", "Bz C h w")
    check_same_kind(x, z)
    xs, zs = tuple(x.shape), tuple(z.shape)
    C, Cz = xs[1], zs[1]
    if Cz != C:
        raise ValueError(f"pixelwise needs z to have as many channels as x; got x {xs} (C={C}) and z {zs} (Cz={Cz})")
    _check_templates(xs, zs)


def check_positive_int(value: Any, name: str) -> int:
    """A positive int (not a bool), such as a layer's channel count."""
    return _check_int(value, name, 1)


def check_non_negative_int(value: Any, name: str) -> int:
    """A non-negative int (not a bool), such as a maximum displacement."""
    return _check_int(value, name, 0)


def _check_int(value: Any, name: str, minimum: int) -> int:
    kind = "a positive int" if minimum == 1 else "a non-negative int"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be {kind}, got {_type_name(value)} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {kind}, got {value}")
    return value


def check_finite(value: Any, name: str) -> float:
    """A finite real number (not a bool), such as a scale factor."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_features(t: Any, name: str, channels: int) -> torch.Tensor:
    """A (B, C, H, W) floating-point tensor with the ``channels`` a layer was built for."""
    check_tensor(t, name, "B C H W")
    if t.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (in_channels), got shape {tuple(t.shape)}")
    return t


def check_search_shape(value: Any) -> tuple[int, int, int, int]:
    """A search shape ``(B, C, H, W)`` of non-negative ints, as planned for by :func:`xcorr.plan`."""
    items = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else None
    if (
        items is None
        or len(items) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items)
    ):
        raise TypeError(f"search_shape must be 4 non-negative ints (B, C, H, W), got {value!r}")
    return items[0], items[1], items[2], items[3]


def check_planned_search(x: Any, search_shape: tuple[int, int, int, int]) -> None:
    """``x`` must match the planned search shape in channels and size (its batch may differ)."""
    check_tensor(x, "x", "B C H W")
    if tuple(x.shape[1:]) != tuple(search_shape[1:]):
        raise ValueError(f"x must have the planned (C, H, W) = {tuple(search_shape[1:])}, got shape {tuple(x.shape)}")


NORMALIZE = ("none", "mean", "sqrt")
LAYOUTS = ("flat", "grid")


def _check_feature_pair(f1: Any, f2: Any, names: tuple[str, str]) -> tuple[int, int, int, int]:
    """Two (B, C, H, W) feature maps of one shape, dtype and device, with at least one channel."""
    a, b = names
    check_tensor(f1, a, "B C H W")
    check_tensor(f2, b, "B C H W")
    check_same_kind(f1, f2, names)
    if f1.shape != f2.shape:
        raise ValueError(
            f"{a} and {b} must have the same shape (B, C, H, W); got {a} {tuple(f1.shape)} and {b} {tuple(f2.shape)}"
        )
    if 0 in f1.shape[1:]:
        raise ValueError(f"{a} and {b} must have at least one channel, row and column, got shape {tuple(f1.shape)}")
    B, C, H, W = f1.shape
    return B, C, H, W


def _scale(normalize: str, channels: int, taps: int) -> float:
    """The factor of each output: 1, ``1 / (taps * channels)`` or ``1 / sqrt(channels)``."""
    if normalize == "mean":
        return 1.0 / (taps * channels)
    if normalize == "sqrt":
        return 1.0 / math.sqrt(channels)
    return 1.0


def check_local_correlation(
    f1: Any,
    f2: Any,
    max_displacement: Any,
    displacement_stride: Any,
    stride: Any,
    kernel_size: Any,
    normalize: Any,
    layout: Any,
) -> VolumeSpec:
    """Validate the arguments of :func:`xcorr.local_correlation`; return its problem."""
    B, C, H, W = _check_feature_pair(f1, f2, ("f1", "f2"))
    d = check_non_negative_int(max_displacement, "max_displacement")
    ds = check_positive_int(displacement_stride, "displacement_stride")
    s = check_positive_int(stride, "stride")
    k = check_positive_int(kernel_size, "kernel_size")
    normalize = check_choice(normalize, "normalize", NORMALIZE)
    check_choice(layout, "layout", LAYOUTS)
    R, kr = d // ds, (k - 1) // 2
    P = 2 * R + 1
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(k, k),
        kernel_dilation=(1, 1),
        origin=(-kr, -kr),
        stride=(s, s),
        out_size=(-(-H // s), -(-W // s)),
        dy=(-R * ds, ds, P),
        dx=(-R * ds, ds, P),
        scale=_scale(normalize, C, k * k),
        dtype=f1.dtype,
        device=f1.device,
    )


def check_groups(groups: Any, channels: int) -> int:
    """``None`` (one group) or a positive int that divides ``channels``."""
    if groups is None:
        return 1
    G = check_positive_int(groups, "groups")
    if channels % G:
        raise ValueError(
            f"groups must divide the channels (each group averages C/groups channels); got groups={G} for C={channels}"
        )
    return G


def check_stereo_correlation(left: Any, right: Any, max_disparity: Any, groups: Any, normalize: Any) -> VolumeSpec:
    """Validate the arguments of :func:`xcorr.stereo_correlation`; return its problem."""
    B, C, H, W = _check_feature_pair(left, right, ("left", "right"))
    D = check_positive_int(max_disparity, "max_disparity")
    G = check_groups(groups, C)
    normalize = check_choice(normalize, "normalize", NORMALIZE)
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=G,
        kernel=(1, 1),
        kernel_dilation=(1, 1),
        origin=(0, 0),
        stride=(1, 1),
        out_size=(H, W),
        dy=(0, 1, 1),
        dx=(0, -1, D),
        scale=_scale(normalize, C // G, 1),
        dtype=left.dtype,
        device=left.device,
    )


#: kernel_size, patch_size, stride, padding, dilation, dilation_patch of spatial-correlation-sampler.
SamplerSettings = tuple[Pair, Pair, Pair, Pair, Pair, Pair]


def check_sampler_settings(
    kernel_size: Any, patch_size: Any, stride: Any, padding: Any, dilation: Any, dilation_patch: Any
) -> SamplerSettings:
    """The settings of ``spatial_correlation_sample`` as pairs (each an int or a pair of ints)."""
    return (
        check_pair(kernel_size, "kernel_size", 1),
        check_pair(patch_size, "patch_size", 1),
        check_pair(stride, "stride", 1),
        check_pair(padding, "padding", 0),
        check_pair(dilation, "dilation", 1),
        check_pair(dilation_patch, "dilation_patch", 1),
    )


def check_spatial_correlation_sample(input1: Any, input2: Any, settings: SamplerSettings) -> VolumeSpec:
    """Validate the inputs of ``spatial_correlation_sample``; return its problem.

    The package's output size, ``(H + 2*padding - dilated kernel) // stride + 1``, and the
    patch offsets of its CPU code, ``(p - (patch_size - 1) // 2) * dilation_patch`` for ``p <
    patch_size``.
    """
    B, C, H, W = _check_feature_pair(input1, input2, ("input1", "input2"))
    (kh, kw), (ph, pw), (sh, sw), (padh, padw), (dh, dw), (dph, dpw) = settings
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if span_h > H + 2 * padh or span_w > W + 2 * padw:
        raise ValueError(
            f"the kernel must fit in the padded input: kernel_size {(kh, kw)} with dilation {(dh, dw)} spans "
            f"{span_h}x{span_w}, but input1 {(B, C, H, W)} with padding {(padh, padw)} is "
            f"{H + 2 * padh}x{W + 2 * padw}"
        )
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(kh, kw),
        kernel_dilation=(dh, dw),
        origin=(-padh, -padw),
        stride=(sh, sw),
        out_size=((H + 2 * padh - span_h) // sh + 1, (W + 2 * padw - span_w) // sw + 1),
        dy=(-((ph - 1) // 2) * dph, dph, ph),
        dx=(-((pw - 1) // 2) * dpw, dpw, pw),
        scale=1.0,
        dtype=input1.dtype,
        device=input1.device,
    )


#: pad_size, kernel_size, max_displacement, stride1, stride2 of flownet2-pytorch's Correlation.
Flownet2Settings = tuple[int, int, int, int, int]


def check_flownet2_settings(
    pad_size: Any, kernel_size: Any, max_displacement: Any, stride1: Any, stride2: Any, corr_multiply: Any
) -> Flownet2Settings:
    """The settings of flownet2-pytorch's ``Correlation`` (ints, as its CUDA extension takes them)."""
    check_finite(corr_multiply, "corr_multiply")
    return (
        check_non_negative_int(pad_size, "pad_size"),
        check_positive_int(kernel_size, "kernel_size"),
        check_non_negative_int(max_displacement, "max_displacement"),
        check_positive_int(stride1, "stride1"),
        check_positive_int(stride2, "stride2"),
    )


def check_flownet2_correlation(input1: Any, input2: Any, settings: Flownet2Settings) -> VolumeSpec:
    """Validate the inputs of flownet2-pytorch's ``Correlation``; return its problem.

    Its geometry, in the zero-padded input: output ``(y, x)`` compares the window of radius
    ``kr = (kernel_size - 1) // 2`` centred at ``(y*stride1 + max_displacement, x*stride1 +
    max_displacement)`` with the windows displaced by ``(i - R, j - R) * stride2``, ``R =
    max_displacement // stride2``; the output is ``ceil((H + 2*pad_size - 2*(kr +
    max_displacement)) / stride1)`` high, and every sum is divided by ``kernel_size**2 * C``.
    """
    B, C, H, W = _check_feature_pair(input1, input2, ("input1", "input2"))
    pad, k, md, s1, s2 = settings
    kr = (k - 1) // 2
    border = 2 * (kr + md)
    if H + 2 * pad <= border or W + 2 * pad <= border:
        raise ValueError(
            f"the padded input must be larger than 2 * (kernel radius + max_displacement) = {border} in both "
            f"dimensions (kernel_size {k}, max_displacement {md}); got input1 {(B, C, H, W)} with pad_size {pad}, "
            f"{H + 2 * pad}x{W + 2 * pad}"
        )
    R = md // s2
    start = md - pad - kr
    return VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(2 * kr + 1, 2 * kr + 1),
        kernel_dilation=(1, 1),
        origin=(start, start),
        stride=(s1, s1),
        out_size=(-(-(H + 2 * pad - border) // s1), -(-(W + 2 * pad - border) // s1)),
        dy=(-R * s2, s2, 2 * R + 1),
        dx=(-R * s2, s2, 2 * R + 1),
        scale=1.0 / (k * k * C),
        dtype=input1.dtype,
        device=input1.device,
    )


PYRAMID_METHODS = ("auto", "all_pairs", "on_demand")


def check_corr_pyramid(f1: Any, f2: Any, num_levels: Any, radius: Any, method: Any) -> str:
    """Validate the arguments of :class:`xcorr.CorrPyramid`; return the method.

    ``f1`` and ``f2`` are (B, C, H, W) of one shape, dtype and device with at least one channel
    (the volume is divided by sqrt(C)); every level halves (rounding down) the size of the one
    before, and the coarsest, ``2**(num_levels - 1)`` times smaller, must keep a pixel.
    """
    check_tensor(f1, "f1", "B C H W")
    check_tensor(f2, "f2", "B C H W")
    check_same_kind(f1, f2, ("f1", "f2"))
    if f1.shape != f2.shape:
        raise ValueError(
            f"f1 and f2 must have the same shape (B, C, H, W), got f1 {tuple(f1.shape)} and f2 {tuple(f2.shape)}"
        )
    check_positive_int(num_levels, "num_levels")
    check_positive_int(radius, "radius")
    method = check_choice(method, "method", PYRAMID_METHODS)
    _, C, H, W = f1.shape
    if C == 0:
        raise ValueError(
            f"f1 and f2 must have at least one channel (the correlation is divided by sqrt(C)), got shape "
            f"{tuple(f1.shape)}"
        )
    smallest = 2 ** (num_levels - 1)
    if H < smallest or W < smallest:
        raise ValueError(
            f"num_levels={num_levels} needs f1 and f2 of at least {smallest}x{smallest} pixels (each level halves "
            f"the one before and the coarsest must keep a pixel); got shape {tuple(f1.shape)}"
        )
    return method


def check_corr_coords(coords: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``coords`` (B, 2, H, W) for features of ``shape`` (B, C, H, W), floating-point, on ``device``."""
    check_tensor(coords, "coords", "B 2 H W")
    B, _, H, W = shape
    if tuple(coords.shape) != (B, 2, H, W):
        raise ValueError(
            f"coords must have shape (B, 2, H, W) = {(B, 2, H, W)}: an (x, y) position in f2 for every pixel "
            f"of f1; got {tuple(coords.shape)}"
        )
    if coords.device != device:
        raise ValueError(f"coords must be on the features' device {device}, got {coords.device}")
    return coords
