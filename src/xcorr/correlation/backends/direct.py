"""Direct correlation with PyTorch's convolution kernels (``F.conv2d`` applies no kernel flip).

The batch of templates is folded into convolution groups: the ``k`` search items that share a
template become the convolution's batch, and the ``Bz`` templates its groups.

Formulations, chosen because they are the fastest on CPU and GPU alike:

* ``"depthwise"``: one depthwise convolution (``groups = Bz*C``).
* ``"naive"``: the same depthwise convolution followed by a sum over channels. A dense
  convolution with one output channel (or ``groups=B``) is 5-50x slower on CPU, since those
  kernels are tuned for many output channels.
* ``"upchannel"``: one dense grouped convolution (``groups = Bz``, ``K`` outputs per group).
  (Channels-last layout runs it about 2x faster on CPU, but its float32 error grows to 3e-6 of
  the largest output, against 4e-7 here.)

PyTorch's own backward of depthwise convolutions is 10-20x slower than their forward on CPU,
so their backward here is written as forward correlations: the gradient with respect to the
template correlates the search with the output gradient, and the gradient with respect to the
search is a full convolution of the output gradient with the template. A training step then
costs about three forward passes. Dense grouped convolutions (``"upchannel"``) keep PyTorch's
backward, whose dense kernels measured faster than the same correlations written out.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input

from ..._compute import compute_dtype, needs_grad
from ...planning.cost import Terms
from ..adjoint import crop_to_search, spread
from ..spec import Pair, Spec, Spec3d
from ._base import Backend

#: Beyond this many template taps, padding is applied by hand: conv2d's own padding then takes a
#: CPU path up to 10x slower than padding a copy (measured for depthwise kernels of 8x8 and up).
PAD_BY_HAND_TAPS = 49
#: From this many taps, padding wider than half the kernel (the search gradient's full padding)
#: is applied by hand too: 7x7 depthwise kernels padded by 6 take a path 3x slower than padding
#: a copy (the SiamRPN++ search gradient), 6x6 ones padded by 5 15x slower.
WIDE_PAD_TAPS = 36


def _pads_by_hand(w: torch.Tensor, padding: Pair) -> bool:
    kh, kw = w.shape[-2:]
    taps = kh * kw
    wide = padding[0] > (kh - 1) // 2 or padding[1] > (kw - 1) // 2
    return padding != (0, 0) and (taps > PAD_BY_HAND_TAPS or (taps >= WIDE_PAD_TAPS and wide))


def _conv(x: torch.Tensor, w: torch.Tensor, stride: Pair, padding: Pair, dilation: Pair, groups: int) -> torch.Tensor:
    if _pads_by_hand(w, padding):
        x, padding = F.pad(x, (padding[1], padding[1], padding[0], padding[0])), (0, 0)
    return F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _grad_search(g: torch.Tensor, w: torch.Tensor, groups: int, spec: Spec) -> torch.Tensor:
    """Gradient of ``conv2d(x, w, groups)`` wrt ``x``: the convolution's own input gradient for
    one convolution item or a stride (it handles the stride without spreading ``g``: 0.4-0.9x the
    time of the full convolution for such shapes, SiamRPN++'s 7x7 kernels on 8192 channels
    0.7x), else a forward convolution (full, flipped), which measured faster for several items
    (1.4x for SiamFC's three items per template)."""
    if g.shape[0] == 1 or spec.stride != (1, 1):
        Hp, Wp = spec.padded_search
        (ph, pw) = spec.padding
        shape = (g.shape[0], w.shape[1] * groups, Hp, Wp)
        gx = conv2d_input(shape, w, g, stride=spec.stride, dilation=spec.dilation, groups=groups)
        return gx[..., ph : Hp - ph, pw : Wp - pw]
    (_, _, h, wd_), (dh, dw) = w.shape, spec.dilation
    cin = w.shape[1] * groups
    # conv2d's weight is (groups*out, in, h, w); the adjoint swaps in and out inside each group.
    wt = w.flip(-2, -1).unflatten(0, (groups, -1)).transpose(1, 2).reshape(cin, -1, h, wd_)
    full = _conv(spread(g, spec.stride), wt, (1, 1), (dh * (h - 1), dw * (wd_ - 1)), spec.dilation, groups)
    return crop_to_search(full, spec.padded_search, spec.padding)


def _grad_template_depthwise(x: torch.Tensor, g: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Gradient of the depthwise forward wrt its weight, summed over the batch of the convolution.

    ``x`` is (n, M, H, W), ``g`` is (n, M, Ho, Wo); returns (M, h, w). The output gradient is the
    template here: dilated by the stride, stepped by the dilation.
    """
    n, M = g.shape[:2]
    h, w = spec.z_shape[-2:]
    xp = F.pad(x, (spec.padding[1], spec.padding[1], spec.padding[0], spec.padding[0]))
    gw = F.conv2d(
        xp.reshape(1, n * M, *xp.shape[-2:]),
        g.reshape(n * M, 1, *g.shape[-2:]),
        stride=spec.dilation,
        dilation=spec.stride,
        groups=n * M,
    )
    return gw.reshape(n, M, *gw.shape[-2:])[..., :h, :w].sum(0)


def _depthwise(x: torch.Tensor, w: torch.Tensor, spec: Spec, reduce: bool) -> torch.Tensor:
    out = _conv(x, w, spec.stride, spec.padding, spec.dilation, x.shape[1])
    return out.unflatten(1, (-1, spec.channels)).sum(2) if reduce else out


class _Depthwise(torch.autograd.Function):
    """``conv2d(x, w, groups=M)`` for ``x`` (n, M, H, W) and ``w`` (M, 1, h, w), optionally summed
    over consecutive runs of ``C`` channels (the ``"naive"`` channel reduction)."""

    @staticmethod
    def forward(ctx, x, w, spec, reduce):
        ctx.save_for_backward(x, w)
        ctx.spec, ctx.reduce = spec, reduce
        return _depthwise(x, w, spec, reduce)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        spec = ctx.spec
        if ctx.reduce:
            g = g.unsqueeze(2).expand(-1, -1, spec.channels, -1, -1).reshape(g.shape[0], -1, *g.shape[-2:])
        g = g.contiguous()
        gx = _grad_search(g, w, x.shape[1], spec) if ctx.needs_input_grad[0] else None
        gw = _grad_template_depthwise(x, g, spec).unsqueeze(1) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None


def _items_as_batch(x: torch.Tensor, spec: Spec | Spec3d) -> torch.Tensor:
    """(B, C, *S) -> (k, Bz*C, *S): item i*k + j becomes batch j, channel group i. (With one
    template, x is that already; a tracker's small call feels every extra reshape.)"""
    B, C, *S = spec.x_shape
    Bz, k = spec.templates, spec.k
    if Bz == 1:
        return x
    if k == 1:
        return x.reshape(1, Bz * C, *S)
    return x.reshape(Bz, k, C, *S).transpose(0, 1).reshape(k, Bz * C, *S)


def _batch_as_items(out: torch.Tensor, spec: Spec | Spec3d) -> torch.Tensor:
    """The inverse of :func:`_items_as_batch` on the output: (k, Bz*K, *S') -> (B, K, *S')."""
    Bz, k, K = spec.templates, spec.k, spec.out_channels
    if Bz == 1:
        return out
    S = spec.out_size
    if k == 1:
        return out.reshape(spec.batch, K, *S)
    return out.reshape(k, Bz, K, *S).transpose(0, 1).reshape(spec.batch, K, *S)


def _weight(z: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The template as a convolution weight: (Bz*K, C, h, w) dense, or (Bz*C, 1, h, w) depthwise."""
    Bz, _, h, w = spec.z_shape
    if spec.mode == "upchannel":
        return z.reshape(Bz * spec.out_channels, spec.channels, h, w)
    return z.reshape(Bz * spec.channels, 1, h, w)


def _run(x: torch.Tensor, weight: torch.Tensor, spec: Spec, grad: bool) -> torch.Tensor:
    xk = _items_as_batch(x, spec)
    if spec.mode == "upchannel":
        out = _conv(xk, weight, spec.stride, spec.padding, spec.dilation, spec.templates)
    elif grad:
        out = _Depthwise.apply(xk, weight, spec, spec.mode == "naive")
    else:
        # Without a backward pass, skip the autograd.Function's bookkeeping (~30 us a call).
        out = _depthwise(xk, weight, spec, spec.mode == "naive")
    return _batch_as_items(out, spec)


def correlate(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The correlation of ``spec`` by PyTorch's convolution kernels."""
    return _run(x, _weight(z, spec), spec, needs_grad(x, z))


def prepare(z: torch.Tensor, spec: Spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """Template plans: the template is reshaped into a convolution weight once."""
    weight = _weight(z, spec)
    return lambda x: _run(x, weight, spec.with_batch(x.shape[0]), needs_grad(x, weight))


def bind(spec: Spec, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eager calls of one signature. With one depthwise template (a tracker's every frame) and no
    backward pass, that is the one depthwise convolution, without reshapes or branches."""
    if spec.mode == "depthwise" and spec.templates == 1 and not grad:
        C, (h, w) = spec.channels, spec.z_shape[-2:]
        stride, padding, dilation = spec.stride, spec.padding, spec.dilation
        return lambda x, z: _conv(x, z.reshape(C, 1, h, w), stride, padding, dilation, C)
    return lambda x, z: _run(x, _weight(z, spec), spec, grad)


#: float32 direct convolution accumulates each output channel's taps in one running sum; from
#: about this many template taps its error exceeds 2e-6 of the largest output in every mode
#: (measured on uniform random data: ~5e-8 per tap side; naive C=1 96x96: 4.0e-6, up-channel
#: with one template, C=2 64x64: 3.3e-6), while FFT's stays near 3e-7.
MAX_TAPS_FLOAT32 = 32 * 32

#: Channels a convolution kernel computes at once: a dense kernel's output channels, a depthwise
#: kernel's channels (16 float32 lanes; also on AVX2, where the kernels run two 8-lane vectors).
#: Fewer leave lanes idle: a one-channel depthwise 16x16 correlation of a 512x512 image takes
#: 19 ms, what 16 channels would (the model without this said 1.5 ms).
LANES = 16


def _lanes(n: int) -> int:
    """``n`` channels rounded up to whole kernels' worth of :data:`LANES`."""
    return -(-n // LANES) * LANES


def exact(spec: Spec | Spec3d) -> bool:
    """Whether float32 direct convolution keeps the promised precision: every mode sums a
    template's taps in one running sum per channel (naive then adds the channels; a single
    up-channel template's dense kernel sums its taps the same way); a volume's taps likewise."""
    return compute_dtype(spec.dtype) != torch.float32 or math.prod(spec.z_shape[2:]) <= MAX_TAPS_FLOAT32


def terms(spec: Spec) -> Terms:
    """The cost model's counts. Dense kernels (up-channel) vectorise over a group's output
    channels; depthwise kernels over the convolution's ``Bz*C`` channels (the ``k`` items that
    share a template are its batch), and oneDNN reorders the search and the per-channel output
    to and from its blocked layout, which costs more than the arithmetic once they leave cache."""
    B, C = spec.x_shape[:2]
    Bz, _, h, w = spec.z_shape
    (Ho, Wo), (Hp, Wp) = spec.out_size, spec.padded_search
    if spec.mode == "upchannel":
        dense = B * Ho * Wo * _lanes(spec.out_channels) * C * h * w
        return Terms({"direct_call": 1.0, "dense_mac": dense}, "dense_backward", wide="float64_dense")
    channels = spec.k * _lanes(Bz * C)
    return Terms(
        {
            "direct_call": 1.0,
            "depthwise_mac": Ho * Wo * channels * h * w,
            "direct_element": B * C * (Hp * Wp + Ho * Wo),
        },
        "direct_backward",
        {"direct_backward_mac": channels * Hp * Wp * h * w},
        wide="float64_depthwise",
    )


#: Built-in constants per CPU capability (``python -m xcorr fit`` on a 2-core x86 CPU of each
#: kind, torch 2.13, 2 threads). The float64 ratios are not fitted (the fit's problems are
#: float32): medians of 5 to 8 problems each, measured side by side.
CONSTANTS = {
    "AVX512": {
        "direct_call": 149000.0,
        "depthwise_mac": 0.0182,
        "direct_element": 0.321,
        "dense_mac": 0.0144,
        "direct_backward": 3.23,
        "direct_backward_mac": 0.0158,
        "dense_backward": 3.95,
        "float64_depthwise": 16.0,
        "float64_dense": 2.1,
    },
    "AVX2": {
        "direct_call": 148000.0,
        "depthwise_mac": 0.0295,
        "direct_element": 0.36,
        "dense_mac": 0.022,
        "direct_backward": 3.2,
        "direct_backward_mac": 0.0253,
        "dense_backward": 6.08,
        "float64_depthwise": 16.0,
        "float64_dense": 2.1,
    },
}


BACKEND = Backend("direct", run=correlate, prepare=prepare, bind=bind, exact=exact, terms=terms, constants=CONSTANTS)


# Volumes (5-D searches and templates): the same folding of templates into groups, by
# ``F.conv3d``, whose own backward serves (its depthwise kernels run at about the 2-D kernels'
# cost per multiply-add and lane, so the cost model reuses their constants).


def _volume_weight(z: torch.Tensor, spec: Spec3d) -> torch.Tensor:
    """The templates as a depthwise convolution weight (Bz*C, 1, d, h, w)."""
    return z.reshape(spec.templates * spec.channels, 1, *spec.z_shape[2:])


def _run_volumes(x: torch.Tensor, weight: torch.Tensor, spec: Spec3d) -> torch.Tensor:
    out = F.conv3d(_items_as_batch(x, spec), weight, groups=weight.shape[0])
    if spec.mode == "naive" and spec.channels > 1:
        out = out.unflatten(1, (-1, spec.channels)).sum(2)
    return _batch_as_items(out, spec)


def correlate_volumes(x: torch.Tensor, z: torch.Tensor, spec: Spec3d) -> torch.Tensor:
    """The volume correlation of ``spec`` by ``F.conv3d``."""
    return _run_volumes(x, _volume_weight(z, spec), spec)


def prepare_volumes(z: torch.Tensor, spec: Spec3d) -> Callable[[torch.Tensor], torch.Tensor]:
    """The template reshaped into a convolution weight once."""
    weight = _volume_weight(z, spec)
    return lambda x: _run_volumes(x, weight, spec.with_batch(x.shape[0]))


def bind_volumes(spec: Spec3d, grad: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eager calls of one signature (nothing depends on the shapes alone)."""
    return lambda x, z: correlate_volumes(x, z, spec)


def terms_volumes(spec: Spec3d) -> Terms:
    """The cost model's counts of :func:`terms`' depthwise form over three axes; the backward is
    ``F.conv3d``'s own (its ratio its own constant)."""
    B, C = spec.x_shape[:2]
    out, taps = math.prod(spec.out_size), math.prod(spec.z_shape[2:])
    channels = spec.k * _lanes(spec.templates * C)
    return Terms(
        {
            "direct_call": 1.0,
            "depthwise_mac": out * channels * taps,
            "direct_element": B * C * (math.prod(spec.x_shape[2:]) + out),
        },
        "direct3d_backward",
        wide="float64_depthwise",
    )


#: The volume record's constants: the 2-D ones, and the ratio of ``F.conv3d``'s backward.
CONSTANTS_3D = {kind: {**values, "direct3d_backward": 3.0} for kind, values in CONSTANTS.items()}

#: Volumes (:class:`~xcorr.correlation.spec.Spec3d`).
BACKEND_3D: Backend[Spec3d] = Backend(
    "direct",
    run=correlate_volumes,
    prepare=prepare_volumes,
    bind=bind_volumes,
    modes=("naive", "depthwise"),
    exact=exact,
    terms=terms_volumes,
    constants=CONSTANTS_3D,
)
