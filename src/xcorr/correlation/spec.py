"""The validated description of one correlation problem, shared by the planner and the backends."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .._checks import (
    Pair,
    check_channels,
    check_choice,
    check_non_negative_int,
    check_pair,
    check_same_kind,
    check_tensor,
)


class _Batched:
    """The batch rule of every correlation problem: template ``i`` serves search items
    ``i*k ... i*k+k-1``."""

    x_shape: tuple[int, ...]
    z_shape: tuple[int, ...]

    @property
    def batch(self) -> int:
        return self.x_shape[0]

    @property
    def channels(self) -> int:
        return self.x_shape[1]

    @property
    def templates(self) -> int:
        return self.z_shape[0]

    @property
    def k(self) -> int:
        """Search items per template."""
        return self.batch // self.templates if self.templates else 0


@dataclass(frozen=True)
class Spec(_Batched):
    """Shapes and geometry of ``xcorr(x, z, ...)`` after validation.

    ``k`` search items share each template (``B == Bz * k``); ``out_channels`` is 1 for
    ``"naive"``, ``C`` for ``"depthwise"`` and ``K = Cz // C`` for ``"upchannel"``.
    """

    mode: str
    x_shape: tuple[int, int, int, int]
    z_shape: tuple[int, int, int, int]
    padding: Pair
    stride: Pair
    dilation: Pair
    dtype: torch.dtype
    device: torch.device

    @property
    def out_channels(self) -> int:
        if self.mode == "naive":
            return 1
        if self.mode == "depthwise":
            return self.channels
        return self.z_shape[1] // self.channels

    @property
    def padded_search(self) -> Pair:
        (_, _, H, W), (ph, pw) = self.x_shape, self.padding
        return H + 2 * ph, W + 2 * pw

    @property
    def dilated_template(self) -> Pair:
        (_, _, h, w), (dh, dw) = self.z_shape, self.dilation
        return dh * (h - 1) + 1, dw * (w - 1) + 1

    @property
    def out_size(self) -> Pair:
        (Hp, Wp), (hd, wd), (sh, sw) = self.padded_search, self.dilated_template, self.stride
        return (Hp - hd) // sh + 1, (Wp - wd) // sw + 1

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, *self.out_size)

    def with_batch(self, batch: int, templates: int | None = None) -> Spec:
        """This problem with ``batch`` search items (a template plan meets searches of any such
        batch) and, if given, ``templates`` templates (a chunk of the batch)."""
        (B, C, H, W), (Bz, Cz, h, w) = self.x_shape, self.z_shape
        templates = Bz if templates is None else templates
        if batch == B and templates == Bz:
            return self
        return replace(self, x_shape=(batch, C, H, W), z_shape=(templates, Cz, h, w))


MODES = ("naive", "depthwise", "upchannel")

#: Three ints: (depth, rows, columns).
Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Spec3d(_Batched):
    """Shapes of a volume correlation ``xcorr(x, z, mode)`` of 5-D tensors after validation:
    searches (B, C, D, H, W) and templates (Bz, C, d, h, w), valid positions, ``k`` search items
    per template (``B == Bz * k``); ``out_channels`` is 1 for ``"naive"``, ``C`` for
    ``"depthwise"``. Padding, stride and dilation are those of the valid, dense correlation."""

    mode: str
    x_shape: tuple[int, int, int, int, int]
    z_shape: tuple[int, int, int, int, int]
    dtype: torch.dtype
    device: torch.device

    @property
    def out_channels(self) -> int:
        return 1 if self.mode == "naive" else self.channels

    @property
    def out_size(self) -> Triple:
        (D, H, W), (d, h, w) = self.x_shape[2:], self.z_shape[2:]
        return D - d + 1, H - h + 1, W - w + 1

    @property
    def out_shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.out_channels, *self.out_size)

    def with_batch(self, batch: int, templates: int | None = None) -> Spec3d:
        """This problem with ``batch`` search items and, if given, ``templates`` templates."""
        templates = self.templates if templates is None else templates
        if batch == self.batch and templates == self.templates:
            return self
        return replace(self, x_shape=(batch, *self.x_shape[1:]), z_shape=(templates, *self.z_shape[1:]))


#: The modes of volume correlations (:class:`Spec3d`).
MODES_3D = ("naive", "depthwise")


#: The order of :func:`xcorr.xcorr`'s arguments, as its messages say it.
XCORR_TAKES = "xcorr takes (x, z) = (search, template)"

#: The order of the arguments of the heads of :mod:`xcorr.nn`, as their messages say it.
HEAD_TAKES = "the head takes forward(x, z) = (search, template)"


def swapped_note(xs: tuple[int, ...], zs: tuple[int, ...], names: tuple[str, str], takes: str) -> str:
    """The note for a template that does not fit in its search where the search would fit in
    the template (at least as large in both dimensions, larger in one): the caller may have
    swapped the arguments; ``takes`` says which order the call takes. ``""`` otherwise."""
    a, b = names
    (H, W), (h, w) = xs[-2:], zs[-2:]
    if h < H or w < W or (h, w) == (H, W):
        return ""
    return f"{b} (template) is larger than {a} (search): {takes}; the arguments may be swapped"


def _check_templates(xs: tuple[int, ...], zs: tuple[int, ...], names: tuple[str, str] = ("x", "z")) -> None:
    """Template i serves search items i*k ... i*k+k-1, and templates are not empty."""
    a, b = names
    B, Bz, (h, w) = xs[0], zs[0], zs[-2:]
    if Bz == 0 and B != 0:
        raise ValueError(f"{b} has no templates (shape {zs}) but {a} has {B} search items")
    if Bz and B % Bz:
        raise ValueError(
            f"{a}'s batch must be a multiple of {b}'s batch (template i serves search items i*k ... i*k+k-1); "
            f"got {a} {xs} (B={B}) and {b} {zs} (Bz={Bz})"
        )
    if h == 0 or w == 0:
        raise ValueError(f"{b} must have a non-empty template, got shape {zs}")


def check_xcorr(
    x: Any,
    z: Any,
    mode: Any,
    padding: Any,
    stride: Any,
    dilation: Any,
    names: tuple[str, str] = ("x", "z"),
    takes: str = XCORR_TAKES,
) -> Spec:
    """Validate the arguments of :func:`xcorr.xcorr`; return its problem. ``names`` are the
    search's and the template's argument names in the messages, ``takes`` the caller's order
    of them (for the note on swapped arguments), for the drop-ins that call them otherwise."""
    a, b = names
    check_tensor(x, a, "B C H W")
    check_tensor(z, b, "Bz Cz h w")
    check_same_kind(x, z, names)
    check_channels(x.shape, a)
    check_channels(z.shape, b)
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
        if Cz % C:
            raise ValueError(
                f"mode 'upchannel' needs {b}'s channels to be a positive multiple K*C of {a}'s channels C; "
                f"got {a} {xs} (C={C}) and {b} {zs} (Cz={Cz})"
            )
    elif Cz != C:
        raise ValueError(
            f"mode {mode!r} needs {b} to have as many channels as {a}; got {a} {xs} (C={C}) and {b} {zs} (Cz={Cz})"
        )
    _check_templates(xs, zs, names)
    (Hp, Wp), (hd, wd) = spec.padded_search, spec.dilated_template
    if hd > Hp or wd > Wp:
        note = swapped_note(xs, zs, names, takes)
        raise ValueError(
            f"the template must fit in the padded search: {b} {zs} with dilation {spec.dilation} spans "
            f"{hd}x{wd}, but {a} {xs} with padding {spec.padding} is {Hp}x{Wp}" + (f"; {note}" if note else "")
        )
    return spec


def check_xcorr3d(
    x: Any, z: Any, mode: Any, padding: Any, stride: Any, dilation: Any, names: tuple[str, str] = ("x", "z")
) -> Spec3d:
    """Validate the arguments of :func:`xcorr.xcorr` on volumes (5-D ``x``); return its problem.
    Volumes are correlated at the valid positions: padding 0, stride 1 and dilation 1 only."""
    a, b = names
    check_tensor(x, a, "B C D H W")
    check_tensor(z, b, "Bz C d h w")
    check_same_kind(x, z, names)
    check_channels(x.shape, a)
    check_channels(z.shape, b)
    mode = check_choice(mode, "mode", MODES_3D)
    for name, value, default in (("padding", padding, 0), ("stride", stride, 1), ("dilation", dilation, 1)):
        if check_pair(value, name, default) != (default, default):
            raise ValueError(
                f"{name} must be {default} for volumes (5-D x: the valid, dense correlation), got {value!r}"
            )
    spec = Spec3d(mode=mode, x_shape=tuple(x.shape), z_shape=tuple(z.shape), dtype=x.dtype, device=x.device)
    xs, zs = spec.x_shape, spec.z_shape
    if zs[1] != xs[1]:
        raise ValueError(
            f"mode {mode!r} needs {b} to have as many channels as {a}; got {a} {xs} (C={xs[1]}) and {b} {zs} (Cz={zs[1]})"
        )
    _check_templates(xs, zs, names)
    if 0 in zs[2:]:
        raise ValueError(f"{b} must have a non-empty template, got shape {zs}")
    if any(t > s for t, s in zip(zs[2:], xs[2:])):
        raise ValueError(
            f"the template must fit in the search: {b} {zs} spans {'x'.join(map(str, zs[2:]))}, "
            f"but {a} {xs} is {'x'.join(map(str, xs[2:]))}"
        )
    return spec


def check_head_inputs(
    x: Any, z: Any, kernel_size: int = 1, names: tuple[str, str] = ("x", "z"), takes: str = HEAD_TAKES
) -> None:
    """Validate the search ``x`` and template ``z`` of a tracker head before its layers see them:
    (B, C, H, W) tensors of one dtype and device, the template no larger than the search (the head's branches shrink both
    alike) and at least ``kernel_size`` square (its branch convolutions). ``names`` are the head's
    argument names for the search and the template, ``takes`` its order of them; the channels the
    head was built for are its own check (:func:`~xcorr._checks.check_features`)."""
    a, b = names
    check_tensor(x, a, "B C H W")
    check_tensor(z, b, "B C H W")
    check_same_kind(x, z, names)
    xs, zs = tuple(x.shape), tuple(z.shape)
    (H, W), (h, w) = xs[-2:], zs[-2:]
    if h > H or w > W:
        note = swapped_note(xs, zs, names, takes) or f"the template must not be larger than the search ({takes})"
        raise ValueError(f"{b} {zs} does not fit in {a} {xs}; {note}")
    if h < kernel_size or w < kernel_size:
        raise ValueError(
            f"{b} must be at least {kernel_size}x{kernel_size}, the kernel of the head's branch convolutions; "
            f"got shape {zs}"
        )


def check_pixelwise(x: Any, z: Any) -> None:
    """Validate the arguments of :func:`xcorr.pixelwise`."""
    check_tensor(x, "x", "B C H W")
    check_tensor(z, "z", "Bz C h w")
    check_same_kind(x, z)
    check_channels(x.shape, "x")
    check_channels(z.shape, "z")
    xs, zs = tuple(x.shape), tuple(z.shape)
    C, Cz = xs[1], zs[1]
    if Cz != C:
        raise ValueError(f"pixelwise needs z to have as many channels as x; got x {xs} (C={C}) and z {zs} (Cz={Cz})")
    _check_templates(xs, zs)


def check_search_shape(value: Any) -> tuple[int, int, int, int]:
    """A search shape ``(B, C, H, W)`` of non-negative ints, as planned for by :func:`xcorr.plan`."""
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) != 4:
        raise TypeError(f"search_shape must be 4 non-negative ints (B, C, H, W), got {value!r}")
    B, C, H, W = (check_non_negative_int(v, f"search_shape[{i}] ({d})") for i, (v, d) in enumerate(zip(value, "BCHW")))
    check_channels((B, C, H, W), "search_shape")
    return B, C, H, W


def check_planned_search(x: Any, z: torch.Tensor, spec: Spec) -> Spec:
    """A search for a template plan of ``spec``: ``x`` as planned in (C, H, W) (its batch may
    differ, a multiple of the templates'), of ``z``'s dtype and device; returns its problem."""
    check_tensor(x, "x", "B C H W")
    if tuple(x.shape[1:]) != tuple(spec.x_shape[1:]):
        raise ValueError(f"x must have the planned (C, H, W) = {tuple(spec.x_shape[1:])}, got shape {tuple(x.shape)}")
    check_same_kind(x, z)
    _check_templates(tuple(x.shape), spec.z_shape)
    return spec.with_batch(x.shape[0])
