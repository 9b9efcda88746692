"""The primitives every check is built of: tensors with named dimensions, ints, pairs, choices.

Every message names the argument, what it got and the rule it broke, so that a mistake is
reported in the caller's terms rather than as an error from deep inside PyTorch. Each API's own
checks, which build its validated problem, live beside it (``correlation/spec.py``,
``volumes/spec.py``, ``matching/checks.py``, ``compat/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

#: Two ints: (rows, columns).
Pair = tuple[int, int]


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


def check_channels(shape: Sequence[int], name: str, dim: int = 1) -> None:
    """At least one channel along ``dim`` of ``shape``: every correlation sums over the channels,
    and an empty sum has no method to compute it (nor a meaning worth returning as zeros)."""
    if shape[dim] == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(shape)}")


def check_same_kind(x: torch.Tensor, z: torch.Tensor, names: tuple[str, str] = ("x", "z")) -> None:
    """The two tensors share a dtype and a device; ``names`` are the arguments' names."""
    a, b = names
    if x.dtype != z.dtype:
        raise TypeError(f"{a} and {b} must have the same dtype, got {a} {x.dtype} and {b} {z.dtype}")
    if x.device != z.device:
        raise ValueError(f"{a} and {b} must be on the same device, got {a} on {x.device} and {b} on {z.device}")


def plain(value: Any) -> bool:
    """An int or a pair of ints, by exact type: ``True`` and ``1.0`` hash like ``1`` but are refused,
    so only plain values may key a cache of validated calls."""
    kind = type(value)
    return kind is int or (kind is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int)


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


def check_features(t: Any, name: str, channels: int, setting: str = "in_channels") -> torch.Tensor:
    """A (B, C, H, W) floating-point tensor with the ``channels`` a layer was built for (its
    setting ``setting``)."""
    check_tensor(t, name, "B C H W")
    if t.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels ({setting}), got shape {tuple(t.shape)}")
    return t


def check_feature_pair(f1: Any, f2: Any, names: tuple[str, str]) -> tuple[int, int, int, int]:
    """Two (B, C, H, W) feature maps of one shape, dtype and device, with at least one channel,
    row and column."""
    a, b = names
    check_tensor(f1, a, "B C H W")
    check_tensor(f2, b, "B C H W")
    check_same_kind(f1, f2, names)
    if f1.shape != f2.shape:
        raise ValueError(
            f"{a} and {b} must have the same shape (B, C, H, W); got {a} {tuple(f1.shape)} and {b} {tuple(f2.shape)}"
        )
    check_channels(f1.shape, f"{a} and {b}")
    if 0 in f1.shape[2:]:
        raise ValueError(f"{a} and {b} must have at least one row and column, got shape {tuple(f1.shape)}")
    B, C, H, W = f1.shape
    return B, C, H, W
