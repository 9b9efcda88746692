"""The gradients of a correlation, written as correlations themselves.

For ``out = xcorr(x, z, mode, padding=p, stride=s, dilation=d)`` with output gradient ``g``:

* the **search gradient** is a full correlation of ``g`` (spread by the stride) with the flipped
  template: one more :func:`xcorr.xcorr` problem (:func:`search_problem`), whose output is cut to
  the padded search and stripped of the padding (:func:`crop_to_search`);
* the **template gradient** correlates the search with ``g`` as the template, ``g``'s taps spaced
  by the stride and its outputs stepped by the dilation (:func:`template_problem`), the search
  items that share a template summed as channels.

Each is a problem of its own shapes, for which another method may be the fastest: a depthwise
template gradient has a template the size of the output and an output the size of the template,
where convolution kernels are slow on some CPUs and FFT is not. The planner chooses a method for
each pass (:mod:`xcorr.correlation.passes`); the direct backend computes its backward from the same rules.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .spec import Pair, Spec


def spread(t: torch.Tensor, factor: Pair) -> torch.Tensor:
    """``t``'s last two dims spread by ``factor``, zeros between: a template dilated, or an output
    gradient spread by the stride (the adjoint of striding)."""
    fh, fw = factor
    if fh == fw == 1:
        return t
    *lead, h, w = t.shape
    out = t.new_zeros(*lead, (h - 1) * fh + 1, (w - 1) * fw + 1)
    out[..., ::fh, ::fw] = t
    return out


def crop_to_search(t: torch.Tensor, size: Pair, padding: Pair) -> torch.Tensor:
    """Zero-extend ``t`` (the gradient of the padded search) to ``size``, then drop the padding."""
    (Hp, Wp), (ph, pw) = size, padding
    t = F.pad(t, (0, Wp - t.shape[-1], 0, Hp - t.shape[-2]))
    return t[..., ph : Hp - ph, pw : Wp - pw]


def search_problem(spec: Spec) -> Spec:
    """The problem whose correlation is the search gradient (before :func:`crop_to_search`).

    Search: the output gradient spread by the stride, ``K`` channels; template: the flipped
    template (:func:`flipped_template`). Naive and up-channel become up-channel problems (each
    search channel's gradient sums the output channels), depthwise stays depthwise.
    """
    B, C = spec.x_shape[:2]
    Bz, _, h, w = spec.z_shape
    K = spec.out_channels
    (Ho, Wo), (sh, sw), (dh, dw) = spec.out_size, spec.stride, spec.dilation
    mode = "depthwise" if spec.mode == "depthwise" else "upchannel"
    return replace(
        spec,
        mode=mode,
        x_shape=(B, K, (Ho - 1) * sh + 1, (Wo - 1) * sw + 1),
        z_shape=(Bz, C if mode == "depthwise" else C * K, h, w),
        padding=(dh * (h - 1), dw * (w - 1)),
        stride=(1, 1),
    )


def flipped_template(z: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The template of :func:`search_problem`: output channel ``c`` of the up-channel form takes
    the ``K`` taps of channel ``c`` (one per forward output channel), flipped."""
    if spec.mode == "upchannel":
        Bz, _, h, w = spec.z_shape
        K, C = spec.out_channels, spec.channels
        z = z.reshape(Bz, K, C, h, w).transpose(1, 2).reshape(Bz, C * K, h, w)
    return z.flip(-2, -1)


def template_problem(spec: Spec) -> Spec:
    """The problem whose correlation is the template gradient (before :func:`template_gradient`).

    Its search items are the (template, channel) pairs, with the ``k`` search items that share a
    template as channels, so that the mode's channel sum is the sum over those items; its
    templates are the output gradients.
    """
    B, C, H, W = spec.x_shape
    Bz = spec.templates
    k, K = spec.k, spec.out_channels
    Ho, Wo = spec.out_size
    mode = "upchannel" if spec.mode == "upchannel" else "naive"
    templates = Bz * C if spec.mode == "depthwise" else Bz
    return replace(
        spec,
        mode=mode,
        x_shape=(Bz * C, k, H, W),
        z_shape=(templates, k * (K if mode == "upchannel" else 1), Ho, Wo),
        stride=spec.dilation,
        dilation=spec.stride,
    )


def items_as_channels(x: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The search of :func:`template_problem`: (B, C, H, W) -> (Bz*C, k, H, W)."""
    B, C, H, W = spec.x_shape
    Bz, k = spec.templates, spec.k
    if k == 1:
        return x.reshape(Bz * C, 1, H, W)
    return x.reshape(Bz, k, C, H, W).transpose(1, 2).reshape(Bz * C, k, H, W)


def gradient_template(g: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The template of :func:`template_problem`: the output gradient (B, K, H', W')."""
    Bz, k, K = spec.templates, spec.k, spec.out_channels
    Ho, Wo = spec.out_size
    if spec.mode == "naive":
        return g.reshape(Bz, k, Ho, Wo)
    # depthwise: (Bz*C, k, H', W'); upchannel: (Bz, K*k, H', W'), output channel j's k maps together.
    return g.reshape(Bz, k, K, Ho, Wo).transpose(1, 2).reshape(-1, k * (1 if spec.mode == "depthwise" else K), Ho, Wo)


def template_gradient(t: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The output of :func:`template_problem`, cut to the template and laid out as it: (Bz, Cz, h, w)."""
    Bz, Cz, h, w = spec.z_shape
    t = t[..., :h, :w]
    if spec.mode == "upchannel":
        K, C = spec.out_channels, spec.channels
        return t.reshape(Bz, C, K, h, w).transpose(1, 2).reshape(Bz, Cz, h, w)
    return t.reshape(Bz, Cz, h, w)
