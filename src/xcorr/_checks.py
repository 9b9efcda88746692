"""The one place that validates inputs and words the errors.

Every message names the argument, what it got and the rule it broke, so that a mistake is
reported in the caller's terms rather than as an error from deep inside PyTorch.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ._spec import Pair, Spec

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
        raise ValueError(
            f"{name} must be {len(expected)}-D ({', '.join(expected)}), got shape {tuple(t.shape)}"
        )
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def check_same_kind(x: torch.Tensor, z: torch.Tensor) -> None:
    if x.dtype != z.dtype:
        raise TypeError(f"x and z must have the same dtype, got x {x.dtype} and z {z.dtype}")
    if x.device != z.device:
        raise ValueError(f"x and z must be on the same device, got x on {x.device} and z on {z.device}")


def check_xcorr(
    x: Any, z: Any, mode: Any, padding: Any, stride: Any, dilation: Any
) -> Spec:
    """Validate the arguments of :func:`xcorr.xcorr` and describe the problem."""
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
    B, C, _, _ = spec.x_shape
    Bz, Cz, h, w = spec.z_shape
    xs, zs = tuple(spec.x_shape), tuple(spec.z_shape)
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
    if Bz == 0 and B != 0:
        raise ValueError(f"z has no templates (shape {zs}) but x has {B} search items")
    if Bz and B % Bz:
        raise ValueError(
            f"x's batch must be a multiple of z's batch (template i serves search items i*k ... i*k+k-1); "
            f"got x {xs} (B={B}) and z {zs} (Bz={Bz})"
        )
    if h == 0 or w == 0:
        raise ValueError(f"z must have a non-empty template, got shape {zs}")
    (Hp, Wp), (hd, wd) = spec.padded_search, spec.dilated_template
    if hd > Hp or wd > Wp:
        raise ValueError(
            f"the template must fit in the padded search: z {zs} with dilation {spec.dilation} spans "
            f"{hd}x{wd}, but x {xs} with padding {spec.padding} is {Hp}x{Wp}"
        )
    return spec


def check_search_shape(value: Any) -> tuple[int, int, int, int]:
    """A search shape ``(B, C, H, W)`` of non-negative ints, as planned for by :func:`xcorr.plan`."""
    items = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else None
    if items is None or len(items) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
        raise TypeError(f"search_shape must be 4 non-negative ints (B, C, H, W), got {value!r}")
    return items  # type: ignore[return-value]


def check_planned_search(x: Any, search_shape: tuple[int, int, int, int]) -> None:
    """``x`` must match the planned search shape in channels and size (its batch may differ)."""
    check_tensor(x, "x", "B C H W")
    if tuple(x.shape[1:]) != tuple(search_shape[1:]):
        raise ValueError(
            f"x must have the planned (C, H, W) = {tuple(search_shape[1:])}, got shape {tuple(x.shape)}"
        )
