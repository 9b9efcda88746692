"""Drop-in for pysot's correlations and heads (SiamRPN, SiamRPN++, SiamMask; STVIR/pysot).

``from pysot.core.xcorr import xcorr_depthwise`` becomes
``from xcorr.compat.pysot import xcorr_depthwise``, and ``from pysot.models.head.rpn import
DepthwiseRPN`` becomes ``from xcorr.compat.pysot import DepthwiseRPN``; the rest of a tracker stays
as it is. The functions take pysot's ``(x, kernel)`` = (search, template); the modules take
pysot's constructor arguments and ``forward(z_f, x_f)`` = (template, search), the reverse of
:mod:`xcorr.nn`'s heads, and hold pysot's layers under pysot's names, so the head of a pysot
checkpoint loads with ``load_state_dict(..., strict=True)`` and gives pysot's outputs:

* :func:`xcorr_slow` and :func:`xcorr_fast` are ``"naive"`` and ``"upchannel"``
  :func:`xcorr.xcorr` (``xcorr_fast``'s output channel ``j`` uses ``kernel[:, j*C:(j+1)*C]``);
  :func:`xcorr_depthwise` is ``"depthwise"``;
* :class:`UPChannelRPN` is SiamRPN's head, :class:`DepthwiseXCorr` and :class:`DepthwiseRPN`
  SiamRPN++'s, :class:`MultiRPN` its average over backbone levels (``rpn2``, ``rpn3``, ...,
  weighted by softmaxed ``cls_weight`` and ``loc_weight`` with ``weighted=True``), and
  :class:`MaskCorr` SiamMask's mask branch.

As in pysot, search item ``i`` is correlated with template ``i``: both batches must be equal.
Unlike pysot, inputs need not be contiguous, an empty batch gives an empty output, and the
planner chooses the method (so a model exports to ONNX with a dynamic batch and without a
convolution by a run-time weight, see docs/deploy.md).
``DepthwiseXCorr``'s ``hidden_kernel_size`` is accepted and, as in pysot, not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_features, check_positive_int, check_tensor
from ..correlation.api import bound
from ..correlation.spec import check_head_inputs, check_xcorr
from ..nn import _non_default, conv_bn_relu, depthwise_mapping
from ..planning.engine import ENGINE, Bound, signature

__all__ = [
    "DepthwiseRPN",
    "DepthwiseXCorr",
    "MaskCorr",
    "MultiRPN",
    "UPChannelRPN",
    "xcorr_depthwise",
    "xcorr_fast",
    "xcorr_slow",
]


def check_same_batch(x: torch.Tensor, z: torch.Tensor, names: tuple[str, str], who: str) -> None:
    """pysot's pairing: search item ``i`` with template ``i``, so one batch for both."""
    a, b = names
    if x.shape[0] != z.shape[0]:
        raise ValueError(
            f"{a} and {b} must have the same batch ({who} correlates search item i with template i); "
            f"got {a} {tuple(x.shape)} and {b} {tuple(z.shape)}"
        )


def _bind(function: str, mode: str, x: Any, kernel: Any) -> Bound:
    """The checked call of pysot's ``function`` as :func:`xcorr.xcorr`'s bound call of ``mode``."""
    names = ("x", "kernel")
    check_tensor(x, "x", "B C H W")
    check_tensor(kernel, "kernel", "B Ck h w")
    check_same_batch(x, kernel, names, function)
    check_xcorr(x, kernel, mode, 0, 1, 1, names, f"{function} takes (x, kernel) = (search, template)")
    return bound(x, kernel, mode)


def _correlate(function: str, mode: str, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # Checked once per call signature, like xcorr.xcorr itself: a tracker's every frame is one lookup.
    run = ENGINE.cached(signature(f"pysot.{function}", (x, kernel), ()), lambda: _bind(function, mode, x, kernel))
    return run(x, kernel)


def xcorr_slow(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    r"""pysot's ``xcorr_slow``: each search item against its own template, channels summed.

    Args:
        x (Tensor[B, C, H, W]): search features.
        kernel (Tensor[B, C, h, w]): templates, one per search item.

    Returns:
        Tensor[B, 1, H-h+1, W-w+1]; differentiable in ``x`` and ``kernel``.

    Example:
        >>> from xcorr.compat.pysot import xcorr_slow
        >>> xcorr_slow(torch.ones(2, 3, 8, 8), torch.ones(2, 3, 3, 3))[:, :, 0, 0]
        tensor([[27.],
                [27.]])
    """
    return _correlate("xcorr_slow", "naive", x, kernel)


def xcorr_fast(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    r"""pysot's ``xcorr_fast`` (SiamRPN's up-channel correlation): ``kernel`` holds ``K`` templates of
    ``C`` channels per item, and output channel ``j`` correlates ``x`` with ``kernel[:, j*C:(j+1)*C]``.

    Args:
        x (Tensor[B, C, H, W]): search features.
        kernel (Tensor[B, K*C, h, w]): templates, one group of ``K`` per search item.

    Returns:
        Tensor[B, K, H-h+1, W-w+1]; differentiable in ``x`` and ``kernel``.

    Example:
        >>> from xcorr.compat.pysot import xcorr_fast
        >>> xcorr_fast(torch.ones(1, 4, 22, 22), torch.ones(1, 4 * 10, 4, 4)).shape  # SiamRPN's 2A = 10 maps
        torch.Size([1, 10, 19, 19])
    """
    return _correlate("xcorr_fast", "upchannel", x, kernel)


def xcorr_depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    r"""pysot's ``xcorr_depthwise`` (SiamRPN++): channel ``c`` of ``x`` against channel ``c`` of its template.

    Args:
        x (Tensor[B, C, H, W]): search features.
        kernel (Tensor[B, C, h, w]): templates, one per search item.

    Returns:
        Tensor[B, C, H-h+1, W-w+1]; differentiable in ``x`` and ``kernel``.

    Example:
        >>> from xcorr.compat.pysot import xcorr_depthwise
        >>> xcorr_depthwise(torch.ones(2, 4, 29, 29), torch.ones(2, 4, 5, 5)).shape
        torch.Size([2, 4, 25, 25])
    """
    return _correlate("xcorr_depthwise", "depthwise", x, kernel)


def check_pysot_inputs(
    who: str,
    call: str,
    z: Any,
    x: Any,
    names: tuple[str, str],
    channels: int,
    setting: str,
    kernel_size: int = 3,
) -> None:
    """The template ``z`` and search ``x`` of a pysot head (``names`` in that order, ``call`` its
    ``forward`` as the messages show it) before its layers see them."""
    template, search = names
    check_features(x, search, channels, setting)
    check_features(z, template, channels, setting)
    check_head_inputs(x, z, kernel_size, (search, template), f"{who} takes {call} = (template, search)")
    check_same_batch(x, z, (search, template), who)


# Leaf functions of torch.fx.symbolic_trace: a traced tracker keeps one call of each.
torch.fx.wrap("xcorr_slow")
torch.fx.wrap("xcorr_fast")
torch.fx.wrap("xcorr_depthwise")
torch.fx.wrap("check_pysot_inputs")


class DepthwiseXCorr(nn.Module):
    r"""pysot's ``DepthwiseXCorr`` (SiamRPN++): conv-BN-ReLU branches, depthwise correlation, a 1x1 mapping.

    The layers of :class:`xcorr.DepthwiseXCorrHead` under pysot's names: ``conv_kernel`` (the
    template's branch), ``conv_search`` and ``head``.

    Args:
        in_channels (int): channels of the template and search features.
        hidden (int): channels of the correlated features.
        out_channels (int): channels of the output.
        kernel_size (int): kernel of the two branch convolutions.
        hidden_kernel_size (int): accepted for compatibility; unused, as in pysot.

    Shape:
        kernel (Tensor[B, in_channels, h, w]), search (Tensor[B, in_channels, H, W]) ->
        Tensor[B, out_channels, H-h+1, W-w+1].

    Example:
        >>> from xcorr.compat.pysot import DepthwiseXCorr
        >>> head = DepthwiseXCorr(16, 16, 10).eval()
        >>> head(torch.ones(1, 16, 7, 7), torch.ones(1, 16, 31, 31)).shape  # forward(kernel, search)
        torch.Size([1, 10, 25, 25])
    """

    def __init__(
        self, in_channels: int, hidden: int, out_channels: int, kernel_size: int = 3, hidden_kernel_size: int = 5
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.hidden = check_positive_int(hidden, "hidden")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.hidden_kernel_size = check_positive_int(hidden_kernel_size, "hidden_kernel_size")
        self.conv_kernel = conv_bn_relu(in_channels, hidden, kernel_size)
        self.conv_search = conv_bn_relu(in_channels, hidden, kernel_size)
        self.head = depthwise_mapping(hidden, out_channels)

    def _correlated(self, kernel: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        """The depthwise correlation of the two branches (the input of ``head``)."""
        names = ("kernel", "search")
        who, C = type(self).__name__, self.in_channels
        check_pysot_inputs(who, "forward(kernel, search)", kernel, search, names, C, "in_channels", self.kernel_size)
        return xcorr_depthwise(self.conv_search(search), self.conv_kernel(kernel))

    def forward(self, kernel: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        return self.head(self._correlated(kernel, search))

    def extra_repr(self) -> str:
        required = f"in_channels={self.in_channels}, hidden={self.hidden}, out_channels={self.out_channels}"
        optional = _non_default(
            {"kernel_size": (self.kernel_size, 3), "hidden_kernel_size": (self.hidden_kernel_size, 5)}
        )
        return ", ".join(filter(None, (required, optional)))


class MaskCorr(DepthwiseXCorr):
    r"""pysot's ``MaskCorr`` (SiamMask's mask branch): :class:`DepthwiseXCorr` that also returns
    the correlated features, which SiamMask's refinement reads.

    Shape:
        kernel (Tensor[B, in_channels, h, w]), search (Tensor[B, in_channels, H, W]) ->
        (out Tensor[B, out_channels, H', W'], feature Tensor[B, hidden, H', W']),
        ``H' = H - h + 1``.

    Example:
        >>> from xcorr.compat.pysot import MaskCorr
        >>> mask, feature = MaskCorr(8, 8, 63 * 63).eval()(torch.ones(1, 8, 7, 7), torch.ones(1, 8, 31, 31))
        >>> mask.shape, feature.shape
        (torch.Size([1, 3969, 25, 25]), torch.Size([1, 8, 25, 25]))
    """

    def forward(self, kernel: torch.Tensor, search: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        feature = self._correlated(kernel, search)
        return self.head(feature), feature


class DepthwiseRPN(nn.Module):
    r"""pysot's ``DepthwiseRPN`` (SiamRPN++'s head at one level): two :class:`DepthwiseXCorr`,
    ``cls`` with ``2A`` and ``loc`` with ``4A`` output channels.

    Args:
        anchor_num (int): anchors ``A`` per position.
        in_channels (int): channels of the template and search features.
        out_channels (int): channels of the correlated features (each branch's ``hidden``).

    Shape:
        z_f (Tensor[B, in_channels, h, w]), x_f (Tensor[B, in_channels, H, W]) ->
        (cls Tensor[B, 2A, H-h+1, W-w+1], loc Tensor[B, 4A, H-h+1, W-w+1]).

    Example:
        >>> from xcorr.compat.pysot import DepthwiseRPN
        >>> rpn = DepthwiseRPN(anchor_num=5, in_channels=16, out_channels=16).eval()
        >>> cls, loc = rpn(torch.ones(1, 16, 7, 7), torch.ones(1, 16, 31, 31))  # forward(z_f, x_f)
        >>> cls.shape, loc.shape
        (torch.Size([1, 10, 25, 25]), torch.Size([1, 20, 25, 25]))
    """

    def __init__(self, anchor_num: int = 5, in_channels: int = 256, out_channels: int = 256) -> None:
        super().__init__()
        self.anchor_num = check_positive_int(anchor_num, "anchor_num")
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.cls = DepthwiseXCorr(in_channels, out_channels, 2 * anchor_num)
        self.loc = DepthwiseXCorr(in_channels, out_channels, 4 * anchor_num)

    def forward(self, z_f: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_pysot_inputs(
            "DepthwiseRPN", "forward(z_f, x_f)", z_f, x_f, ("z_f", "x_f"), self.in_channels, "in_channels"
        )
        return self.cls(z_f, x_f), self.loc(z_f, x_f)

    def extra_repr(self) -> str:
        return _non_default(
            {
                "anchor_num": (self.anchor_num, 5),
                "in_channels": (self.in_channels, 256),
                "out_channels": (self.out_channels, 256),
            }
        )


class UPChannelRPN(nn.Module):
    r"""pysot's ``UPChannelRPN`` (SiamRPN's head): up-channel correlation (:func:`xcorr_fast`).

    ``template_cls_conv`` and ``template_loc_conv`` (3x3) lift the template to ``C·2A`` and
    ``C·4A`` channels, ``search_cls_conv`` and ``search_loc_conv`` (3x3) map the search, and the
    1x1 ``loc_adjust`` adjusts the box maps; :class:`xcorr.UpChannelHead` is the same head.

    Args:
        anchor_num (int): anchors ``A`` per position.
        feature_in (int): channels ``C`` of the template and search features.

    Shape:
        z_f (Tensor[B, C, h, w]), x_f (Tensor[B, C, H, W]) ->
        (cls Tensor[B, 2A, H-h+1, W-w+1], loc Tensor[B, 4A, H-h+1, W-w+1]).

    Example:
        >>> from xcorr.compat.pysot import UPChannelRPN
        >>> cls, loc = UPChannelRPN(anchor_num=5, feature_in=8)(torch.ones(1, 8, 6, 6), torch.ones(1, 8, 22, 22))
        >>> cls.shape, loc.shape
        (torch.Size([1, 10, 17, 17]), torch.Size([1, 20, 17, 17]))
    """

    def __init__(self, anchor_num: int = 5, feature_in: int = 256) -> None:
        super().__init__()
        self.anchor_num = A = check_positive_int(anchor_num, "anchor_num")
        self.feature_in = C = check_positive_int(feature_in, "feature_in")
        self.template_cls_conv = nn.Conv2d(C, C * 2 * A, kernel_size=3)
        self.template_loc_conv = nn.Conv2d(C, C * 4 * A, kernel_size=3)
        self.search_cls_conv = nn.Conv2d(C, C, kernel_size=3)
        self.search_loc_conv = nn.Conv2d(C, C, kernel_size=3)
        self.loc_adjust = nn.Conv2d(4 * A, 4 * A, kernel_size=1)

    def forward(self, z_f: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_pysot_inputs("UPChannelRPN", "forward(z_f, x_f)", z_f, x_f, ("z_f", "x_f"), self.feature_in, "feature_in")
        cls = xcorr_fast(self.search_cls_conv(x_f), self.template_cls_conv(z_f))
        loc = self.loc_adjust(xcorr_fast(self.search_loc_conv(x_f), self.template_loc_conv(z_f)))
        return cls, loc

    def extra_repr(self) -> str:
        return _non_default({"anchor_num": (self.anchor_num, 5), "feature_in": (self.feature_in, 256)})


def check_levels(value: Any, name: str, levels: int) -> list[Any]:
    """One item per level: a list or tuple of ``levels`` items."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{name} must be a list or tuple of {levels} feature maps (one per level), got {type(value).__name__}"
        )
    if len(value) != levels:
        raise ValueError(f"{name} must hold {levels} feature maps (one per level of in_channels), got {len(value)}")
    return list(value)


def _average(maps: Sequence[torch.Tensor], weight: torch.Tensor | None) -> torch.Tensor:
    """pysot's average over the levels, in its order of operations: the plain mean, or the sum
    of the maps times their weights."""
    if weight is None:
        total = maps[0]
        for m in maps[1:]:
            total = total + m
        return total / len(maps)
    total = maps[0] * weight[0]
    for i in range(1, len(maps)):
        total = total + maps[i] * weight[i]
    return total


class MultiRPN(nn.Module):
    r"""pysot's ``MultiRPN`` (SiamRPN++ on several backbone levels): one :class:`DepthwiseRPN` per
    level, ``rpn2``, ``rpn3``, ... (numbered from 2, as in pysot), averaged.

    With ``weighted=True`` the average is weighted by ``softmax(cls_weight)`` and
    ``softmax(loc_weight)`` (parameters of one weight per level, initially equal).

    Args:
        anchor_num (int): anchors ``A`` per position.
        in_channels (list of int): channels of each level (each level's ``DepthwiseRPN`` keeps them).
        weighted (bool): learn the weights of the levels.

    Shape:
        z_fs (list of Tensor[B, in_channels[i], h, w]), x_fs (list of Tensor[B, in_channels[i], H, W]) ->
        (cls Tensor[B, 2A, H-h+1, W-w+1], loc Tensor[B, 4A, H-h+1, W-w+1]).

    Example:
        >>> from xcorr.compat.pysot import MultiRPN
        >>> rpn = MultiRPN(5, [8, 8, 8], weighted=True).eval()
        >>> zs, xs = [torch.ones(1, 8, 7, 7)] * 3, [torch.ones(1, 8, 31, 31)] * 3
        >>> [t.shape for t in rpn(zs, xs)]
        [torch.Size([1, 10, 25, 25]), torch.Size([1, 20, 25, 25])]
    """

    def __init__(self, anchor_num: int, in_channels: Sequence[int], weighted: bool = False) -> None:
        super().__init__()
        self.anchor_num = check_positive_int(anchor_num, "anchor_num")
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise TypeError(
                f"in_channels must be a non-empty list or tuple of ints (one per level), got {in_channels!r}"
            )
        self.in_channels = [check_positive_int(c, f"in_channels[{i}]") for i, c in enumerate(in_channels)]
        if not isinstance(weighted, bool):
            raise TypeError(f"weighted must be a bool, got {weighted!r}")
        self.weighted = weighted
        for level, c in enumerate(self.in_channels, start=2):
            self.add_module(f"rpn{level}", DepthwiseRPN(anchor_num, c, c))
        if weighted:
            self.cls_weight = nn.Parameter(torch.ones(len(self.in_channels)))
            self.loc_weight = nn.Parameter(torch.ones(len(self.in_channels)))

    def forward(self, z_fs: Sequence[torch.Tensor], x_fs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        levels = len(self.in_channels)
        zs, xs = check_levels(z_fs, "z_fs", levels), check_levels(x_fs, "x_fs", levels)
        cls, loc = [], []
        for i, (z_f, x_f, c) in enumerate(zip(zs, xs, self.in_channels)):
            check_pysot_inputs(
                "MultiRPN", "forward(z_fs, x_fs)", z_f, x_f, (f"z_fs[{i}]", f"x_fs[{i}]"), c, f"in_channels[{i}]"
            )
            c_i, l_i = getattr(self, f"rpn{i + 2}")(z_f, x_f)
            cls.append(c_i)
            loc.append(l_i)
        if not self.weighted:
            return _average(cls, None), _average(loc, None)
        return _average(cls, F.softmax(self.cls_weight, 0)), _average(loc, F.softmax(self.loc_weight, 0))

    def extra_repr(self) -> str:
        shown = f"anchor_num={self.anchor_num}, in_channels={self.in_channels}"
        return f"{shown}, weighted=True" if self.weighted else shown
