"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""
from . import nn
from .match import find_peaks, match_template
from .nn import DepthwiseXCorrHead, SiamFCHead, UpChannelHead, XCorr
from .ops import choose_method, pixelwise, xcorr
from .planner import set_autotune
from .plans import Plan, plan

__all__ = [
    "DepthwiseXCorrHead",
    "Plan",
    "SiamFCHead",
    "UpChannelHead",
    "XCorr",
    "choose_method",
    "find_peaks",
    "match_template",
    "nn",
    "pixelwise",
    "plan",
    "set_autotune",
    "xcorr",
]

__version__ = "0.1.0"
