"""Thin ``nn.Module`` wrappers over :func:`xcorr.xcorr`, and the correlation heads of Siamese trackers.

Every module takes ``(x, z)`` = (search, template), in the order of ``F.conv2d(input, weight)``,
checks its settings when it is built, and shows the non-default ones in its ``repr``. The heads
build on ``method="auto"``, so a model that uses them exports to ONNX with a dynamic batch (see
:doc:`deploy`), compiles with ``torch.compile``, trains under ``DistributedDataParallel`` and
traces with ``torch.fx.symbolic_trace`` (where the correlation is one ``call_function`` node).

RAFT's and RAFT-Stereo's pyramids, :class:`~xcorr.CorrPyramid` and :class:`~xcorr.StereoCorrPyramid`,
are found here too, as they are: a network builds one from each pair of feature maps in its
``forward`` and looks it up at every iteration (``corr_fn = StereoCorrPyramid(fmap1, fmap2)``,
then ``corr_fn(coords1)``), so they hold no settings a module would keep.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_choice, check_features, check_finite, check_non_negative_int, check_pair, check_positive_int
from .correlation.api import xcorr
from .correlation.family import CORRELATION
from .correlation.spec import MODES, check_head_inputs
from .volumes.api import local_correlation, stereo_correlation
from .volumes.pyramid import CorrPyramid
from .volumes.spec import LAYOUTS, NORMALIZE
from .volumes.stereo_pyramid import StereoCorrPyramid

__all__ = [
    "CorrPyramid",
    "DepthwiseXCorrHead",
    "LocalCorrelation",
    "SiamFCHead",
    "StereoCorrPyramid",
    "StereoCorrelation",
    "UpChannelHead",
    "XCorr",
]

# Leaf functions of ``torch.fx.symbolic_trace`` (as torchvision's feature extraction runs it): a
# traced model keeps one call of each where the modules call it, instead of tracing into the
# checks and the planner, which branch on shapes that are only symbols while tracing.
torch.fx.wrap("xcorr")
torch.fx.wrap("check_features")
torch.fx.wrap("check_head_inputs")
torch.fx.wrap("local_correlation")
torch.fx.wrap("stereo_correlation")


def _non_default(settings: dict[str, tuple[object, object]]) -> str:
    """``"a=1, b=2"`` for the settings (value, default) whose value is not the default."""
    return ", ".join(f"{name}={value!r}" for name, (value, default) in settings.items() if value != default)


class XCorr(nn.Module):
    r"""Module form of :func:`xcorr.xcorr`; ``forward(x, z)`` correlates search ``x`` with template ``z``.

    Args:
        mode (str): ``"naive"``, ``"depthwise"`` or ``"upchannel"``, as in :func:`xcorr.xcorr`.
        padding (int or tuple[int, int]): zero padding of the search.
        stride (int or tuple[int, int]): step between output positions.
        dilation (int or tuple[int, int]): spacing between template taps.
        method (str): ``"auto"``, ``"direct"``, ``"fft"`` or ``"gather"``.

    Shape:
        x (Tensor[B, C, H, W]), z (Tensor[Bz, Cz, h, w]) -> Tensor[B, K, H', W'].

    Example:
        >>> corr = XCorr("depthwise", padding=1)
        >>> corr
        XCorr(mode='depthwise', padding=(1, 1))
        >>> corr(torch.ones(2, 4, 8, 8), torch.ones(2, 4, 3, 3)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        mode: str = "naive",
        padding: int | tuple[int, int] = 0,
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        method: str = "auto",
    ) -> None:
        super().__init__()
        self.mode = check_choice(mode, "mode", MODES)
        self.padding = check_pair(padding, "padding", 0)
        self.stride = check_pair(stride, "stride", 1)
        self.dilation = check_pair(dilation, "dilation", 1)
        self.method = check_choice(method, "method", CORRELATION.methods())

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return xcorr(
            x, z, self.mode, padding=self.padding, stride=self.stride, dilation=self.dilation, method=self.method
        )

    def extra_repr(self) -> str:
        return _non_default(
            {
                "mode": (self.mode, "naive"),
                "padding": (self.padding, (0, 0)),
                "stride": (self.stride, (1, 1)),
                "dilation": (self.dilation, (1, 1)),
                "method": (self.method, "auto"),
            }
        )


class SiamFCHead(nn.Module):
    r"""SiamFC's response map: naive correlation of search and template features, times ``out_scale``.

    The scale keeps the initial responses (sums over ``C·h·w`` products) in the range where a
    logistic loss trains well; SiamFC uses 0.001 for 256-channel AlexNet features.

    Args:
        out_scale (float): factor applied to the correlation.

    Shape:
        x (Tensor[B, C, H, W]), z (Tensor[Bz, C, h, w]) -> Tensor[B, 1, H-h+1, W-w+1];
        SiamFC's 22x22 search and 6x6 template features give a 17x17 response.

    Example:
        >>> head = SiamFCHead()
        >>> head(torch.ones(8, 256, 22, 22), torch.ones(8, 256, 6, 6)).shape
        torch.Size([8, 1, 17, 17])
    """

    def __init__(self, out_scale: float = 0.001) -> None:
        super().__init__()
        self.out_scale = check_finite(out_scale, "out_scale")

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_head_inputs(x, z)
        return xcorr(x, z) * self.out_scale

    def extra_repr(self) -> str:
        return _non_default({"out_scale": (self.out_scale, 0.001)})


class UpChannelHead(nn.Module):
    r"""SiamRPN's region-proposal head with up-channel correlation.

    3x3 convolutions lift the template to ``C·2A`` (classification) and ``C·4A`` (box) channels
    and map the search; ``"upchannel"`` correlation then gives ``2A`` and ``4A`` maps, and a 1x1
    convolution adjusts the box branch.

    Args:
        in_channels (int): channels ``C`` of the search and template features.
        anchors (int): anchors ``A`` per position.

    Shape:
        x (Tensor[B, C, H, W]), z (Tensor[Bz, C, h, w]) ->
        (cls Tensor[B, 2A, H-h+1, W-w+1], loc Tensor[B, 4A, H-h+1, W-w+1]);
        SiamRPN's 22x22 search and 6x6 template features give 17x17 maps.

    Example:
        >>> head = UpChannelHead(in_channels=16, anchors=5)
        >>> cls, loc = head(torch.ones(2, 16, 22, 22), torch.ones(2, 16, 6, 6))
        >>> cls.shape, loc.shape
        (torch.Size([2, 10, 17, 17]), torch.Size([2, 20, 17, 17]))
    """

    def __init__(self, in_channels: int = 256, anchors: int = 5) -> None:
        super().__init__()
        self.in_channels = C = check_positive_int(in_channels, "in_channels")
        self.anchors = A = check_positive_int(anchors, "anchors")
        self.template_cls = nn.Conv2d(C, C * 2 * A, kernel_size=3)
        self.template_loc = nn.Conv2d(C, C * 4 * A, kernel_size=3)
        self.search_cls = nn.Conv2d(C, C, kernel_size=3)
        self.search_loc = nn.Conv2d(C, C, kernel_size=3)
        self.loc_adjust = nn.Conv2d(4 * A, 4 * A, kernel_size=1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_features(x, "x", self.in_channels)
        check_features(z, "z", self.in_channels)
        check_head_inputs(x, z, 3)
        cls = xcorr(self.search_cls(x), self.template_cls(z), "upchannel")
        loc = self.loc_adjust(xcorr(self.search_loc(x), self.template_loc(z), "upchannel"))
        return cls, loc

    def extra_repr(self) -> str:
        return _non_default({"in_channels": (self.in_channels, 256), "anchors": (self.anchors, 5)})


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A branch of SiamRPN++'s depthwise head: convolution (no bias), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def depthwise_mapping(hidden: int, out_channels: int) -> nn.Sequential:
    """The 1x1 mapping after SiamRPN++'s depthwise correlation: conv-BN-ReLU, then a conv with bias."""
    return nn.Sequential(
        nn.Conv2d(hidden, hidden, kernel_size=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, kernel_size=1),
    )


class DepthwiseXCorrHead(nn.Module):
    r"""SiamRPN++'s head: depthwise correlation between two adjusted branches, then a 1x1 mapping.

    Search and template each pass a conv-BN-ReLU to ``hidden`` channels, are correlated channel
    by channel (``"depthwise"``), and a 1x1 conv-BN-ReLU-1x1 maps the result to ``out_channels``
    (``2A`` for classification, ``4A`` for boxes, 1 for a mask score...).

    Args:
        in_channels (int): channels of the search and template features.
        hidden (int): channels of the correlated features.
        out_channels (int): channels of the output.
        kernel_size (int): kernel of the two branch convolutions.

    Shape:
        x (Tensor[B, in_channels, H, W]), z (Tensor[Bz, in_channels, h, w]) ->
        Tensor[B, out_channels, H-h+1, W-w+1]; SiamRPN++'s 31x31 search and 7x7 template
        features give 25x25 maps.

    Example:
        >>> head = DepthwiseXCorrHead(16, 16, 10)
        >>> head
        DepthwiseXCorrHead(
          in_channels=16, hidden=16, out_channels=10
          ...
        >>> head(torch.ones(2, 16, 31, 31), torch.ones(2, 16, 7, 7)).shape
        torch.Size([2, 10, 25, 25])
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.hidden = check_positive_int(hidden, "hidden")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.template = conv_bn_relu(in_channels, hidden, kernel_size)
        self.search = conv_bn_relu(in_channels, hidden, kernel_size)
        self.head = depthwise_mapping(hidden, out_channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_features(x, "x", self.in_channels)
        check_features(z, "z", self.in_channels)
        check_head_inputs(x, z, self.kernel_size)
        return self.head(xcorr(self.search(x), self.template(z), "depthwise"))

    def extra_repr(self) -> str:
        required = f"in_channels={self.in_channels}, hidden={self.hidden}, out_channels={self.out_channels}"
        optional = _non_default({"kernel_size": (self.kernel_size, 3)})
        return ", ".join(filter(None, (required, optional)))


class LocalCorrelation(nn.Module):
    r"""Module form of :func:`xcorr.local_correlation`; ``forward(f1, f2)`` is the cost volume of two feature maps.

    Args:
        max_displacement (int): largest displacement, in pixels, in each direction.
        displacement_stride (int): pixels between displacements.
        stride (int): pixels between output positions.
        kernel_size (int): side of the patches compared.
        normalize (str): ``"none"``, ``"mean"`` (FlowNetC, PWC-Net) or ``"sqrt"`` (RAFT).
        layout (str): ``"flat"`` or ``"grid"``.

    Shape:
        f1, f2 (Tensor[B, C, H, W]) -> Tensor[B, P*P, H', W'] (``"flat"``) or
        Tensor[B, P, P, H', W'] (``"grid"``), ``P = 2 * (max_displacement // displacement_stride) + 1``.

    Example:
        >>> corr = LocalCorrelation(4, normalize="mean")  # PWC-Net's
        >>> corr
        LocalCorrelation(max_displacement=4, normalize='mean')
        >>> corr(torch.ones(2, 8, 12, 16), torch.ones(2, 8, 12, 16)).shape
        torch.Size([2, 81, 12, 16])
    """

    def __init__(
        self,
        max_displacement: int,
        displacement_stride: int = 1,
        stride: int = 1,
        kernel_size: int = 1,
        normalize: str = "none",
        layout: str = "flat",
    ) -> None:
        super().__init__()
        self.max_displacement = check_non_negative_int(max_displacement, "max_displacement")
        self.displacement_stride = check_positive_int(displacement_stride, "displacement_stride")
        self.stride = check_positive_int(stride, "stride")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.normalize = check_choice(normalize, "normalize", NORMALIZE)
        self.layout = check_choice(layout, "layout", LAYOUTS)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        return local_correlation(
            f1,
            f2,
            self.max_displacement,
            displacement_stride=self.displacement_stride,
            stride=self.stride,
            kernel_size=self.kernel_size,
            normalize=self.normalize,
            layout=self.layout,
        )

    def extra_repr(self) -> str:
        required = f"max_displacement={self.max_displacement}"
        optional = _non_default(
            {
                "displacement_stride": (self.displacement_stride, 1),
                "stride": (self.stride, 1),
                "kernel_size": (self.kernel_size, 1),
                "normalize": (self.normalize, "none"),
                "layout": (self.layout, "flat"),
            }
        )
        return ", ".join(filter(None, (required, optional)))


class StereoCorrelation(nn.Module):
    r"""Module form of :func:`xcorr.stereo_correlation`; ``forward(left, right)`` is the stereo cost volume.

    Args:
        max_disparity (int): number ``D`` of disparities ``0 ... D-1``.
        groups (int or None): ``None`` for DispNetC's volume over all channels, ``G`` for
            GwcNet's group-wise one (``G`` must divide the features' channels).
        normalize (str): ``"mean"``, ``"sqrt"`` or ``"none"``.

    Shape:
        left, right (Tensor[B, C, H, W]) -> Tensor[B, D, H, W], or Tensor[B, G, D, H, W] with groups.

    Example:
        >>> gwc = StereoCorrelation(12, groups=4)
        >>> gwc
        StereoCorrelation(max_disparity=12, groups=4)
        >>> gwc(torch.ones(1, 16, 8, 20), torch.ones(1, 16, 8, 20)).shape
        torch.Size([1, 4, 12, 8, 20])
    """

    def __init__(self, max_disparity: int, groups: int | None = None, normalize: str = "mean") -> None:
        super().__init__()
        self.max_disparity = check_positive_int(max_disparity, "max_disparity")
        self.groups = None if groups is None else check_positive_int(groups, "groups")
        self.normalize = check_choice(normalize, "normalize", NORMALIZE)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return stereo_correlation(left, right, self.max_disparity, groups=self.groups, normalize=self.normalize)

    def extra_repr(self) -> str:
        required = f"max_disparity={self.max_disparity}"
        optional = _non_default({"groups": (self.groups, None), "normalize": (self.normalize, "mean")})
        return ", ".join(filter(None, (required, optional)))
