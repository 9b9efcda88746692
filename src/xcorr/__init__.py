"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""
from . import nn
from .match import find_peaks, match_template
from .nn import DepthwiseXCorrHead, SiamFCHead, UpChannelHead, XCorr
from .ops import pixelwise, xcorr

__all__ = [
    "DepthwiseXCorrHead",
    "SiamFCHead",
    "UpChannelHead",
    "XCorr",
    "find_peaks",
    "match_template",
    "nn",
    "pixelwise",
    "xcorr",
]

__version__ = "0.1.0"
